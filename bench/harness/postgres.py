"""A throwaway PostgreSQL cluster for the benches, from the project's own scripts/test-postgres.sh (initdb as an
unprivileged user in a temporary directory, a free port on 127.0.0.1, fsync off), with one fresh database per
scenario so no bench sees another's tasks."""

from __future__ import annotations

import re
import subprocess
import urllib.parse
from pathlib import Path

from harness.core import REPO, BenchError, say

SCRIPT = REPO / "scripts" / "test-postgres.sh"


class PostgresCluster:
    def __init__(self) -> None:
        proc = subprocess.run([str(SCRIPT), "start"], cwd=REPO, capture_output=True, text=True, timeout=600,
                              check=False)  # fmt: skip
        exports = dict(re.findall(r"^export (\w+)='([^']*)'$", proc.stdout, re.MULTILINE))
        if proc.returncode != 0 or "I2V_TEST_DATABASE_URL" not in exports:
            raise BenchError(f"scripts/test-postgres.sh start failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        self.url = exports["I2V_TEST_DATABASE_URL"]
        self.directory = Path(exports["I2V_TEST_POSTGRES_DIR"])
        self.version = next(iter(re.findall(r"PostgreSQL (\S+)", proc.stderr)), "?")
        self.databases = 0
        say(f"PostgreSQL {self.version} started, data in {self.directory}")

    def new_database(self, name: str) -> str:
        """A fresh, empty database; its URL."""
        self.databases += 1
        database = f"bench_{re.sub(r'[^a-z0-9_]', '_', name.lower())}_{self.databases}"
        self.psql(f'CREATE DATABASE "{database}"')
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))

    def psql(self, sql: str, url: str | None = None) -> str:
        psql = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))
        if not psql:
            raise BenchError("no psql under /usr/lib/postgresql/*/bin")
        libpq_url = (url or self.url).replace("postgres://", "postgresql://", 1)
        proc = subprocess.run([str(psql[-1]), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", libpq_url,
                               "-c", sql], capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        if proc.returncode != 0:
            raise BenchError(f"psql failed: {proc.stderr.strip()[-300:]}")
        return proc.stdout.strip()

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "stop", str(self.directory)], cwd=REPO, capture_output=True, timeout=120,
                       check=False)  # fmt: skip
