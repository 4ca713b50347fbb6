"""Child processes: free ports, stopping a process group, CPU time of a group, reading lines with a deadline."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from harness.core import HOST, BenchError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any] | None, grace_s: float = 20.0) -> None:
    """Stops a process started with start_new_session=True: SIGTERM to it (so a server can stop its own children
    in order), SIGKILL after `grace_s`, then SIGKILL to whatever is left in its process group."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group's id is the process's id (start_new_session)


def group_cpu_seconds(pgid: int) -> tuple[float, float]:
    """CPU seconds (user + system, with reaped children) of every live process in process group `pgid`, and of
    the group's leader alone (user + system): (whole group, leader)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = leader = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ..., utime (11), stime, cutime, cstime
            total += sum(int(v) for v in fields[11:15])
            if int(entry) == pgid:
                leader = int(fields[11]) + int(fields[12])
    return total / ticks, leader / ticks


class LineReader:
    """Reads whole lines from a pipe with a deadline (no blocking readline on a pipe that may stay silent)."""

    def __init__(self, stream: Any) -> None:
        self.fd: int = stream.fileno()
        self.buffer = b""

    def readline(self, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:  # EOF
                if self.buffer:
                    line, self.buffer = self.buffer, b""
                    return line.decode("utf-8", "replace")
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def read_json(self, timeout_s: float, want: str) -> dict[str, Any]:
        """The next line that is a JSON object with key `want`; other lines (stray library output) are skipped."""
        deadline = time.monotonic() + timeout_s
        for _ in range(10_000):
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise BenchError(f"no answer with {want!r} within {timeout_s:.0f} s")
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if isinstance(data, dict) and want in data:
                    return data
        raise BenchError(f"no answer with {want!r}")
