"""The processes the suites talk to: `i2v-server` nodes (serve, api, worker) and the loopback image server."""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

from harness.core import BENCH, HOST, KEY, READY_TIMEOUT_S, REPO, BenchError, Context
from harness.procs import LineReader, free_port, stop_process

# Servers with the stub worker holding its jobs forever: stopping them need not wait for the held task.
STUB_SETTINGS = {"I2V_MAX_CONCURRENT": "1", "I2V_SHUTDOWN_GRACE_SECONDS": "1", "I2V_CANCEL_GRACE_SECONDS": "1"}


class ImageServer:
    """bench/imageserver.py: the files of one directory, from memory, on 127.0.0.1."""

    def __init__(self, ctx: Context, directory: Path) -> None:
        self.proc = subprocess.Popen(
            [ctx.settings.python, str(BENCH / "imageserver.py"), "--dir", str(directory)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, cwd=REPO,
        )  # fmt: skip
        try:
            answer = LineReader(self.proc.stdout).read_json(60, "port")
        except BenchError:
            self.stop()
            raise
        self.port = int(answer["port"])

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.port}/{urllib.parse.quote(name)}"

    def stop(self) -> None:
        stop_process(self.proc, 5)


class Server:
    """One `i2v-server <role>` (serve, api or worker) with its own port and log file, and a data directory of its
    own unless `data` is given (nodes of one cluster share theirs). `model` is the checkpoint (`I2V_MODEL_PATH`);
    None leaves the choice to `I2V_MODEL` in `extra`: a `-demo` id is built by the server into
    `<data>/models/<id>` on start (`demo_checkpoint`)."""

    def __init__(
        self,
        ctx: Context,
        name: str,
        *,
        model: Path | None,
        python: str,
        log_level: str = "warning",
        role: str = "serve",
        extra: dict[str, str] | None = None,
        data: Path | None = None,
    ) -> None:
        self.name = name
        self.role = role
        self.port = free_port()
        self.data = data or ctx.tmp / f"data-{name}"
        self.log_path = ctx.tmp / f"server-{name}.log"
        ctx.logs.append(self.log_path)
        env = {k: v for k, v in os.environ.items() if not k.startswith("I2V_")}
        env.update({
            "I2V_API_KEYS": KEY,
            "I2V_DATA_DIR": str(self.data),
            "I2V_PORT": str(self.port),
            "I2V_HOST": HOST,
            "I2V_ALLOW_PRIVATE_IMAGE_HOSTS": "true",
            "I2V_PUBLIC_URL": f"http://{HOST}:{self.port}",
            "I2V_PYTHON": python,
            "I2V_DEVICE": "cpu",
            "I2V_SUBMITS_PER_MINUTE": "0",
            "I2V_MAX_QUEUED": "1000000",
            "I2V_LOG_LEVEL": log_level,
        })  # fmt: skip
        if model is not None:  # else the server serves I2V_MODEL (in `extra`), building a demo in its data dir
            env["I2V_MODEL_PATH"] = str(model)
        env.update(extra or {})
        self.env = {k: v for k, v in env.items() if k.startswith("I2V_") and k != "I2V_DATABASE_URL"}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [str(ctx.settings.server), role], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Seconds until `/ready` answers 200 (`/health` for an API node, which has no workers)."""
        path = "/health" if self.role == "api" else "/ready"
        started = time.monotonic()
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"server {self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                try:
                    conn.request("GET", path)
                    if conn.getresponse().status == 200:
                        return time.monotonic() - started
                finally:
                    conn.close()
            time.sleep(0.1)
        raise BenchError(f"server {self.name} not ready within {timeout_s:.0f} s: {self.log_tail()}")

    def demo_checkpoint(self, model: str) -> Path:
        """Where the server builds the demo checkpoint of `model` when it serves it without I2V_MODEL_PATH."""
        return self.data / "models" / model

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log_path.read_text("utf-8", "replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        stop_process(self.proc, 40)
        self._log.close()


def start_server(ctx: Context, name: str, **kwargs: Any) -> Server:
    """A Server that is stopped at the end of the run whatever happens (stopping twice is harmless)."""
    server = Server(ctx, name, **kwargs)
    ctx.cleanups.callback(server.stop)
    return server


def stub_python(ctx: Context) -> str:
    """An executable the server can start as `$I2V_PYTHON -m i2v_worker` that runs bench/stub_worker.py."""
    path = ctx.tmp / "stub-worker.sh"
    if not path.exists():
        path.write_text(f'#!/bin/sh\nexec "{ctx.settings.python}" "{BENCH / "stub_worker.py"}" "$@"\n')
        path.chmod(0o755)
    return str(path)


def role_available(ctx: Context, role: str) -> str | None:
    """None when the binary runs `role` (`api`, `worker`), else why not (it says "not built yet", …). Probed without
    a database URL, where a role that exists refuses SQLite and exits."""
    env = {"PATH": os.environ.get("PATH", ""), "I2V_DATA_DIR": str(ctx.tmp / "probe"), "I2V_API_KEYS": KEY,
           "I2V_HOST": HOST, "I2V_PORT": str(free_port())}  # fmt: skip
    try:
        proc = subprocess.run([str(ctx.settings.server), role], cwd=REPO, capture_output=True, text=True, timeout=20,
                              check=False, env=env)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None  # it started up: the role exists
    text = (proc.stderr + proc.stdout).strip()
    if "not built yet" in text:
        return f"`i2v-server {role}` is not built yet in this binary"
    if "unknown command" in text:
        return f"this binary has no `i2v-server {role}`"
    return None
