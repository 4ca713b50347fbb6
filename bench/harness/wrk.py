"""wrk runs with the Lua scripts in bench/wrk/, which print their exact percentiles (and the request ids a submit run
made) as machine-readable lines from wrk's done() hook."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from harness.core import BENCH, KEY, REPO, BenchError, msec

MISSING = "skipped: wrk not installed (scripts/install-system-deps.sh bench)"


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    script: str,
    url: str,
    connections: int,
    seconds: int,
    env: dict[str, str],
    submit_limit: int = 0,
    done: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """One wrk run of `seconds`. With `submit_limit` (submit.lua) its threads stop once that many submits were
    accepted; wrk itself only ends at `seconds` or on SIGINT, so `done` (asked every half second) says when to
    interrupt it: its summary then covers the time it really ran."""
    threads = max(1, min(connections, os.cpu_count() or 1, 4))
    if submit_limit > 0:
        env = {**env, "I2V_BENCH_SUBMIT_LIMITS": ",".join(str(len(part)) for part in split(submit_limit, threads))}
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency",
               "-s", str(BENCH / "wrk" / script), url]  # fmt: skip
    full_env = dict(os.environ, I2V_BENCH_KEY=KEY, I2V_BENCH_LUA_DIR=str(BENCH / "wrk"), **env)
    with subprocess.Popen(command, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as wrk:  # fmt: skip
        try:
            stdout, stderr = finish(wrk, seconds + 120, done)
        finally:
            if wrk.poll() is None:
                wrk.kill()
    proc = subprocess.CompletedProcess(command, wrk.returncode, stdout, stderr)
    found = re.search(r"^WRK_JSON (\{.*\})$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or found is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-500:]} {proc.stdout.strip()[-500:]}")
    data: dict[str, Any] = json.loads(found.group(1))
    duration_s = data["duration_us"] / 1e6
    data["rps"] = data["requests"] / duration_s if duration_s > 0 else 0.0
    data["socket_errors"] = sum(data[f"errors_{k}"] for k in ("connect", "read", "write", "timeout"))
    data["non_2xx"] = data["errors_status"]
    data["connections"] = connections
    data["threads"] = threads
    data["seconds"] = seconds
    data["command"] = " ".join(command)
    ids = re.search(r"^WRK_IDS (.*)$", proc.stdout, re.MULTILINE)
    data["ids"] = re.findall(r"[0-9a-f]{32}", ids.group(1)) if ids else []
    data["output"] = re.sub(r"^WRK_IDS .*$", "WRK_IDS …", proc.stdout, flags=re.MULTILINE)
    return data


def finish(wrk: subprocess.Popen[str], timeout_s: float, done: Callable[[], bool] | None) -> tuple[str, str]:
    deadline = time.monotonic() + timeout_s
    if done is not None:
        while wrk.poll() is None and time.monotonic() < deadline:
            if done():
                wrk.send_signal(signal.SIGINT)
                break
            time.sleep(0.5)
    return wrk.communicate(timeout=max(1.0, deadline - time.monotonic()))


def split(total: int, parts: int) -> list[range]:
    """`total` items in `parts` nearly equal runs."""
    size, extra = divmod(total, parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


def submit_env(image_url: str, keep_ids: bool = False) -> dict[str, str]:
    """submit.lua's settings: the image, and whether the accepted ids are printed (`result["ids"]`)."""
    return {"I2V_BENCH_IMAGE_URL": image_url, "I2V_BENCH_KEEP_IDS": "1" if keep_ids else "0"}


def spread(ids: list[str], count: int) -> list[str]:
    """`count` of `ids` evenly spaced (the first and the last among them)."""
    if len(ids) <= count:
        return list(ids)
    return [ids[round(i * (len(ids) - 1) / (count - 1))] for i in range(count)]


def wrk_notes(result: dict[str, Any]) -> str:
    return (
        f"p50 {msec(result['p50_us'] / 1000)} · p99 {msec(result['p99_us'] / 1000)} · "
        f"non-2xx {result['non_2xx']} · socket errors {result['socket_errors']} · {result['requests']} requests"
    )
