"""The i2v-server benchmarks: B1 service overhead, B2 status and submit throughput, B3 image intake, B4 GPU step.

    .venv/bin/python bench/run.py --server .build-release/release/i2v-server            # ~5 min on 2 cores
    .venv/bin/python bench/run.py --server .build-release/release/i2v-server --quick    # smoke run, ~2 min

Prints a markdown table (every row measured, or "skipped: <why>") and writes the figures and the raw data as JSON
into bench/results/ (git-ignored). Everything listens on and talks to 127.0.0.1 only; every process it starts is
stopped when it ends. What each row measures: bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
CACHE = RESULTS / "cache"
DEFAULT_SERVER = REPO / ".build-release" / "release" / "i2v-server"
HOST = "127.0.0.1"  # the only address anything here binds to or connects to
KEY = "benchkey"

PROMPT = "a cat dancing in the style of a painting"
# Wan's recommended negative prompt (the server's default); sent explicitly so both B1 sides use the same one.
NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall "
    "gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, "
    "poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy background, three "
    "legs, many people in the background, walking backwards"
)
# B1 job: the demo model's auto size for a 5:3 image (160x96 = its whole native area), 81 frames, 30 steps.
B1_SOURCE = (800, 480)
B1_SIZE = (160, 96)
B1_FRAMES = 81
B1_STEPS = 30
B1_GUIDANCE = 3.0
B1_SEED = 42
# B1 status polling: every 10 ms while queued and once the last denoising step is reported (VAE decode, MP4 encode:
# the end of a job is seen within 10 ms), every 100 ms while denoising (so polling takes little CPU time from the job).
POLL_FAST_S = 0.01
POLL_SLOW_S = 0.1
JOB_TIMEOUT_S = 600.0
READY_TIMEOUT_S = 600.0
IMAGEIO_PINS = ("imageio==2.38.1", "imageio-ffmpeg==0.6.0")
IMAGES_VERSION = "v1"  # bump when the generated images change
# Servers with the stub worker: one task "runs" forever, so stopping them need not wait for it.
STUB_SETTINGS = {"I2V_MAX_CONCURRENT": "1", "I2V_SHUTDOWN_GRACE_SECONDS": "1", "I2V_CANCEL_GRACE_SECONDS": "1"}


class BenchError(RuntimeError):
    pass


@dataclass
class Row:
    bench: str
    metric: str
    value: str
    notes: str = ""


@dataclass
class Settings:
    server: Path
    python: str
    quick: bool
    only: set[str]
    jobs: int
    wrk_seconds: int
    submit_seconds: int
    intake_submits: int
    gpu_steps: int
    gpu_smoke_cpu: bool
    keep: bool


@dataclass
class Context:
    settings: Settings
    tmp: Path
    logs: list[Path] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def row(self, bench: str, metric: str, value: str, notes: str = "") -> None:
        self.rows.append(Row(bench, metric, value, notes))


# --- small helpers --------------------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    if not values:
        raise BenchError("no values")
    return float(statistics.median(values))


def secs(value: float) -> str:
    if value >= 100:
        return f"{value:.0f} s"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1000:.1f} ms"


def msec(value_ms: float) -> str:
    return f"{value_ms:.2f} ms" if value_ms < 10 else f"{value_ms:.1f} ms"


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


class Client:
    """Keep-alive HTTP/1.1 client for 127.0.0.1:port."""

    def __init__(self, port: int, timeout_s: float = 120.0) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self.conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)

    def close(self) -> None:
        self.conn.close()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                return response.status, response.read()
            except (
                http.client.RemoteDisconnected,
                ConnectionResetError,
                BrokenPipeError,
                http.client.CannotSendRequest,
            ):
                self.conn.close()
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout_s)
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def post_json(self, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, data = self.request(
            "POST", path, json.dumps(payload).encode(),
            {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            parsed = {"raw": data[:300].decode("utf-8", "replace")}
        return status, parsed if isinstance(parsed, dict) else {"raw": parsed}


# --- processes: image server, the service, the reference script --------------------------------------------------


class ImageServer:
    def __init__(self, ctx: Context, directory: Path) -> None:
        self.proc = subprocess.Popen(
            [ctx.settings.python, str(BENCH / "imageserver.py"), "--dir", str(directory)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, cwd=REPO,
        )  # fmt: skip
        answer = LineReader(self.proc.stdout).read_json(60, "port")
        self.port = int(answer["port"])

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.port}/{urllib.parse.quote(name)}"

    def stop(self) -> None:
        stop_process(self.proc, 5)


class Server:
    """One `i2v-server serve` with its own data directory, port and log file."""

    def __init__(
        self, ctx: Context, name: str, model: Path, python: str, log_level: str, extra: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.port = free_port()
        self.data = ctx.tmp / f"data-{name}"
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
            "I2V_MODEL_PATH": str(model),
            "I2V_DEVICE": "cpu",
            "I2V_SUBMITS_PER_MINUTE": "0",
            "I2V_MAX_QUEUED": "1000000",
            "I2V_LOG_LEVEL": log_level,
        })  # fmt: skip
        env.update(extra or {})
        self.env = {k: v for k, v in env.items() if k.startswith("I2V_")}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [str(ctx.settings.server), "serve"], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    @property
    def database(self) -> Path:
        return self.data / "tasks.sqlite"

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        started = time.monotonic()
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"server {self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                try:
                    conn.request("GET", "/ready")
                    if conn.getresponse().status == 200:
                        return time.monotonic() - started
                finally:
                    conn.close()
            time.sleep(0.2)
        raise BenchError(f"server {self.name} not ready within {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log_path.read_text("utf-8", "replace").splitlines()[-lines:])
        return ""

    def log_lines(self) -> list[str]:
        self._log.flush()
        return self.log_path.read_text("utf-8", "replace").splitlines()

    def stop(self) -> None:
        stop_process(self.proc, 40)
        self._log.close()


class Reference:
    """bench/reference_job.py --serve: the model loaded once, then one job per stdin line."""

    def __init__(self, ctx: Context, model: Path, pythonpath: Path | None) -> None:
        env = dict(os.environ)
        if pythonpath is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH", "")]))
        log_path = ctx.tmp / "reference.log"
        ctx.logs.append(log_path)
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [ctx.settings.python, str(BENCH / "reference_job.py"), "--model", str(model), "--serve", "--threads", "1"],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, start_new_session=True,
        )  # fmt: skip
        self.reader = LineReader(self.proc.stdout)
        self.info: dict[str, Any] = {}

    def wait_ready(self) -> dict[str, Any]:
        self.info = self.reader.read_json(READY_TIMEOUT_S, "ready")
        return self.info

    def job(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        cpu_before = group_cpu_seconds(self.proc.pid)
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()
        answer = self.reader.read_json(JOB_TIMEOUT_S, "ok")
        if not answer.get("ok"):
            raise BenchError(f"reference job failed: {answer.get('error')}")
        answer["cpu_s"] = group_cpu_seconds(self.proc.pid)[0] - cpu_before[0]
        return answer

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        stop_process(self.proc, 10)
        self._log.close()


# --- preparation: demo checkpoint, imageio, images -------------------------------------------------------------------


def demo_model(python: str) -> Path:
    """The demo checkpoint, built once per version of the worker's demo builder and kept in bench/results/cache."""
    sources = [REPO / "worker" / "i2v_worker" / "demo.py", REPO / "worker" / "i2v_worker" / "metadata.py"]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    path = CACHE / f"demo-{key}" / "wan2.1-i2v-demo"
    if (path / "i2v_model.json").is_file() and (path / "model_index.json").is_file():
        return path
    say(f"building the demo checkpoint into {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-m", "i2v_worker.demo", "--output", str(path)], cwd=REPO, check=True, timeout=900,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return path


def imageio_path(python: str) -> tuple[Path | None, str]:
    """Where `export_to_video`'s imageio + imageio-ffmpeg come from: the venv, bench/results/cache/pydeps, or nowhere."""
    probe = [python, "-c", "import imageio, imageio_ffmpeg; imageio_ffmpeg.get_ffmpeg_exe()"]
    if subprocess.run(probe, capture_output=True, timeout=120, check=False).returncode == 0:
        return None, "export_to_video (imageio from the venv)"
    target = CACHE / "pydeps"
    env = dict(os.environ, PYTHONPATH=str(target))
    if subprocess.run(probe, capture_output=True, timeout=120, env=env, check=False).returncode == 0:
        return target, "export_to_video (imageio from bench/results/cache/pydeps)"
    say(f"installing {' '.join(IMAGEIO_PINS)} into {target} for diffusers' export_to_video")
    install = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--target",
               str(target), *IMAGEIO_PINS]  # fmt: skip
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(install, capture_output=True, timeout=300, check=False)
    if subprocess.run(probe, capture_output=True, timeout=120, env=env, check=False).returncode == 0:
        return target, "export_to_video (imageio installed into bench/results/cache/pydeps)"
    return None, "ffmpeg CLI with imageio's arguments (imageio not installable here)"


def photo_like(width: int, height: int, seed: int, fine_noise: float) -> Any:
    """An RGB test picture that does not compress trivially: gradients, low-frequency blotches and fine noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    picture = np.stack([200 * x + 30 * y, 180 * y + 40 * (1 - x), 120 * (x * y) + 60 * (1 - y)], axis=-1)
    low = rng.normal(128, 40, (max(2, height // 64), max(2, width // 64), 3))
    blotches = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    picture += np.asarray(blotches, dtype=np.float32) - 128
    picture += rng.normal(0, fine_noise, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))


def images() -> Path:
    """The benchmark images, generated once (fixed seeds) into bench/results/cache/images-<version>."""
    directory = CACHE / f"images-{IMAGES_VERSION}"
    specs: list[tuple[str, int, int, float]] = [
        ("b1-800x480.jpg", *B1_SOURCE, 8.0),
        ("small-320x192.png", 320, 192, 0.0),
        ("photo-4000x3000.jpg", 4000, 3000, 10.0),
        ("photo-3840x2160.png", 3840, 2160, 3.0),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    for index, (name, width, height, noise) in enumerate(specs):
        path = directory / name
        if path.is_file():
            continue
        say(f"generating {name}")
        picture = photo_like(width, height, 1000 + index, noise)
        tmp = path.with_name(f".{name}.tmp")
        if name.endswith(".jpg"):
            picture.save(tmp, "JPEG", quality=90)
        else:
            picture.save(tmp, "PNG")
        tmp.rename(path)
    return directory


# --- B1: service overhead ---------------------------------------------------------------------------------------------


def service_job(client: Client, image_url: str, pgid: int | None = None) -> dict[str, Any]:
    body = {
        "image_url": image_url, "prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "image_size": "auto",
        "num_frames": B1_FRAMES, "infer_steps": B1_STEPS, "guidance_scale": B1_GUIDANCE, "seed": B1_SEED,
    }  # fmt: skip
    cpu_before = group_cpu_seconds(pgid) if pgid is not None else (0.0, 0.0)
    started = time.perf_counter()
    status, answer = client.post_json("/video/submit", body)
    submitted = time.perf_counter()
    if status != 202:
        raise BenchError(f"submit answered {status}: {answer}")
    request_id = str(answer["requestId"])
    polls = 0
    state: dict[str, Any] = {}
    for polls in range(1, int(JOB_TIMEOUT_S / POLL_FAST_S) + 1):
        status, state = client.post_json("/video/status", {"requestId": request_id})
        if status != 200:
            raise BenchError(f"status answered {status}: {state}")
        if state.get("status") == "Succeed":
            break
        if state.get("status") in ("Failed", "Cancelled"):
            raise BenchError(f"service job {state.get('status')}: {state.get('reason')}")
        if time.perf_counter() - started > JOB_TIMEOUT_S:
            raise BenchError(f"service job not done within {JOB_TIMEOUT_S:.0f} s")
        progress = state.get("progress") or {}
        denoising = state.get("status") == "InProgress" and progress.get("step", 0) < progress.get("total_steps", 1)
        time.sleep(POLL_SLOW_S if denoising else POLL_FAST_S)
    else:
        raise BenchError(f"service job not done within {JOB_TIMEOUT_S:.0f} s")
    succeeded = time.perf_counter()
    results = state["results"]
    url = urllib.parse.urlsplit(results["videos"][0]["url"])
    if url.hostname != HOST:
        raise BenchError(f"video URL is not on {HOST}: {url.geturl()}")
    status, video = client.request("GET", url.path)
    finished = time.perf_counter()
    cpu_after = group_cpu_seconds(pgid) if pgid is not None else (0.0, 0.0)
    if status != 200 or video[4:8] != b"ftyp":
        raise BenchError(f"video download answered {status} with {len(video)} bytes")
    return {
        "id": request_id,
        "seconds": finished - started,
        "submit_s": submitted - started,
        "until_succeed_s": succeeded - started,
        "download_s": finished - succeeded,
        "polls": polls,
        "inference_s": float(results["timings"]["inference"]),
        "width": results["width"],
        "height": results["height"],
        "num_frames": results["num_frames"],
        "bytes": len(video),
        "cpu_s": cpu_after[0] - cpu_before[0],  # server + worker + ffmpeg
        "server_cpu_s": cpu_after[1] - cpu_before[1],  # the Swift process alone
    }


def task_rows(database: Path, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The service's own record of each task (read-only): intake timings, queue/run timestamps, worker timings."""
    if not ids:
        return {}
    con = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        con.row_factory = sqlite3.Row
        marks = ",".join("?" * len(ids))
        rows = con.execute(f"SELECT * FROM tasks WHERE id IN ({marks})", list(ids)).fetchall()
        return {str(row["id"]): dict(row) for row in rows}
    finally:
        con.close()


PHASES = (
    ("fetch", "image fetch"),
    ("decode", "image decode + resize"),
    ("png", "PNG encode (input for the worker)"),
    ("queue", "queue wait"),
    ("inference", "inference (pipeline call)"),
    ("encode", "MP4 encode"),
    ("other", "store/other (HTTP, SQLite, worker hand-off, polling, download)"),
)


def service_phases(job: dict[str, Any], task: dict[str, Any] | None) -> dict[str, float]:
    """Splits one service job's client-side time into phases, from the task's row in the service's SQLite store."""
    if task is None:
        return {"inference": job["inference_s"], "other": job["seconds"] - job["inference_s"]}
    split = {
        "fetch": float(task["fetch_seconds"]),
        "decode": float(task["decode_seconds"]),
        "png": float(task["png_seconds"]),
        "queue": float(task["started_at"]) - float(task["created_at"]),
        "inference": float(task["inference_seconds"]),
        "encode": float(task["encode_seconds"] or 0.0),
    }
    split["other"] = job["seconds"] - sum(split.values())
    return split


def bench_b1(ctx: Context, server: Server, reference: Reference, image_url: str, export_note: str) -> list[str]:
    n = ctx.settings.jobs
    client = Client(server.port)
    width, height = B1_SIZE

    def script_job(index: int) -> dict[str, Any]:
        return reference.job({
            "image_url": image_url, "prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "width": width,
            "height": height, "num_frames": B1_FRAMES, "infer_steps": B1_STEPS, "guidance_scale": B1_GUIDANCE,
            "seed": B1_SEED, "output": str(ctx.tmp / f"reference-{index}.mp4"),
        })  # fmt: skip

    try:
        say("B1: warm-up job on each side (not timed)")
        warm = service_job(client, image_url, server.proc.pid)
        script_job(-1)
        if (warm["width"], warm["height"], warm["num_frames"]) != (width, height, B1_FRAMES):
            raise BenchError(
                f"the service made {warm['width']}x{warm['height']}x{warm['num_frames']}, expected {width}x{height}x{B1_FRAMES}"
            )
        service: list[dict[str, Any]] = []
        script: list[dict[str, Any]] = []
        for index in range(n):
            say(f"B1: pair {index + 1}/{n}: service, then script")
            service.append(service_job(client, image_url, server.proc.pid))
            script.append(script_job(index))
    finally:
        client.close()

    tasks: dict[str, dict[str, Any]] = {}
    phase_source = "the service's SQLite task rows (read-only) + client clock"
    try:
        tasks = task_rows(server.database, [job["id"] for job in service])
    except sqlite3.Error as exc:
        phase_source = f"API only (SQLite not readable: {exc})"
    splits = [service_phases(job, tasks.get(job["id"])) for job in service]
    service_s = median([job["seconds"] for job in service])
    script_s = median([job["seconds"] for job in script])
    ratio = service_s / script_s
    pair_ratios = [a["seconds"] / b["seconds"] for a, b in zip(service, script, strict=True)]
    size = f"{width}x{height}, {B1_FRAMES} frames, {B1_STEPS} steps, seed {B1_SEED}"
    ctx.row("B1", f"service job, submit → Succeed → MP4 downloaded (median of {n})", secs(service_s),
            f"{size}; runs " + ", ".join(f"{job['seconds']:.2f}" for job in service) + " s")  # fmt: skip
    ctx.row("B1", f"plain script job, reference_job.py (median of {n})", secs(script_s),
            f"{export_note}; runs " + ", ".join(f"{job['seconds']:.2f}" for job in script) + " s")  # fmt: skip
    verdict = "meets" if ratio <= 1.0 else "misses"
    ctx.row("B1", "ratio service / script (medians)", f"{ratio:.3f}",
            f"{verdict} target ≤ 1.00; per-pair ratios " + ", ".join(f"{r:.3f}" for r in pair_ratios) + "; A B A B order")  # fmt: skip
    service_cpu = median([job["cpu_s"] for job in service])
    script_cpu = median([job["cpu_s"] for job in script])
    ctx.row("B1", "CPU seconds per job: service / script (medians)", f"{service_cpu / script_cpu:.3f}",
            f"service {service_cpu:.2f} s (of which the Swift server {median([j['server_cpu_s'] for j in service]):.2f} s"
            f", the rest worker + ffmpeg) vs script {script_cpu:.2f} s (process + ffmpeg); less sensitive to other "
            "load on the machine than wall time")  # fmt: skip
    inference_ratio = median([j["inference_s"] for j in service]) / median([j["inference_s"] for j in script])
    ctx.row("B1", "inference only: worker / script pipeline call (medians)", f"{inference_ratio:.3f}",
            f"worker {secs(median([j['inference_s'] for j in service]))} vs script "
            f"{secs(median([j['inference_s'] for j in script]))}")  # fmt: skip
    for key, label in PHASES:
        values = [split[key] for split in splits if key in split]
        if values:
            ctx.row("B1", f"service phase: {label} (median)", secs(median(values)), f"from {phase_source}")
        else:
            ctx.row("B1", f"service phase: {label}", "skipped: not available", phase_source)
    script_phases = {"fetch_s": "fetch", "prepare_s": "decode + resize (PIL)", "inference_s": "inference (pipeline call)",
                     "export_s": "export_to_video"}  # fmt: skip
    ctx.row("B1", "script phases (medians)",
            " · ".join(f"{label} {secs(median([j[key] for j in script]))}" for key, label in script_phases.items()),
            "timed inside reference_job.py")  # fmt: skip
    ctx.raw["B1"] = {
        "job": {"size": f"{width}x{height}", "source_image": f"{B1_SOURCE[0]}x{B1_SOURCE[1]} JPEG", "frames": B1_FRAMES,
                "steps": B1_STEPS, "guidance_scale": B1_GUIDANCE, "seed": B1_SEED, "poll_s": [POLL_FAST_S, POLL_SLOW_S]},
        "service": service, "script": script, "service_phases": splits, "phase_source": phase_source,
        "service_median_s": service_s, "script_median_s": script_s, "ratio": ratio, "pair_ratios": pair_ratios,
        "reference": reference.info, "export": export_note, "warm_up_service_id": warm["id"],
    }  # fmt: skip
    return [warm["id"], *[job["id"] for job in service]]


# --- B2: status and submit throughput with wrk -----------------------------------------------------------------------


def run_wrk(ctx: Context, script: str, url: str, connections: int, seconds: int, env: dict[str, str]) -> dict[str, Any]:
    threads = max(1, min(connections, os.cpu_count() or 1, 4))
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency",
               "-s", str(BENCH / "wrk" / script), url]  # fmt: skip
    full_env = dict(os.environ, I2V_BENCH_KEY=KEY, I2V_BENCH_LUA_DIR=str(BENCH / "wrk"), **env)
    proc = subprocess.run(
        command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=seconds + 120, check=False
    )
    found = re.search(r"^WRK_JSON (\{.*\})$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or found is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-500:]} {proc.stdout.strip()[-500:]}")
    data: dict[str, Any] = json.loads(found.group(1))
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    data["socket_errors"] = sum(data[f"errors_{k}"] for k in ("connect", "read", "write", "timeout"))
    data["non_2xx"] = data["errors_status"]
    data["connections"] = connections
    data["threads"] = threads
    data["seconds"] = seconds
    data["command"] = " ".join(command)
    data["output"] = proc.stdout
    return data


def wrk_notes(result: dict[str, Any]) -> str:
    return (
        f"p50 {msec(result['p50_us'] / 1000)} · p99 {msec(result['p99_us'] / 1000)} · "
        f"non-2xx {result['non_2xx']} · socket errors {result['socket_errors']} · {result['requests']} requests"
    )


def finished_ids(ctx: Context, server: Server, image_url: str) -> list[str]:
    """Tasks for the status benchmark when B1 did not run: a few short demo jobs, run to the end."""
    client = Client(server.port)
    ids: list[str] = []
    try:
        for _ in range(3):
            body = {"image_url": image_url, "prompt": PROMPT, "num_frames": 24, "infer_steps": 20, "seed": B1_SEED}
            status, answer = client.post_json("/video/submit", body)
            if status != 202:
                raise BenchError(f"submit answered {status}: {answer}")
            ids.append(str(answer["requestId"]))
        for request_id in ids:
            for _ in range(int(JOB_TIMEOUT_S / 0.1)):
                status, state = client.post_json("/video/status", {"requestId": request_id})
                if state.get("status") in ("Succeed", "Failed", "Cancelled"):
                    break
                time.sleep(0.1)
    finally:
        client.close()
    return ids


def bench_b2_status(ctx: Context, server: Server, ids: list[str]) -> None:
    if shutil.which("wrk") is None:
        ctx.row("B2", "status throughput", "skipped: wrk not installed (scripts/install-system-deps.sh bench)")
        return
    url = f"http://{HOST}:{server.port}/video/status"
    env = {"I2V_BENCH_IDS": ",".join(ids)}
    seconds = ctx.settings.wrk_seconds
    run_wrk(ctx, "status.lua", url, 64, 2, env)  # warm-up, not recorded
    results: dict[str, Any] = {}
    for connections in (64, 256):
        say(f"B2: wrk status, {connections} connections, {seconds} s")
        result = run_wrk(ctx, "status.lua", url, connections, seconds, env)
        results[str(connections)] = result
        ctx.row("B2", f"/video/status, {connections} connections, {seconds} s (Succeed tasks, worker idle)",
                f"{result['rps']:,.0f} req/s", wrk_notes(result))  # fmt: skip
    health_seconds = max(2, seconds // 4)
    say(f"B2: wrk GET /health, 256 connections, {health_seconds} s (reference: no key, no database)")
    health = run_wrk(ctx, "get.lua", f"http://{HOST}:{server.port}/health", 256, health_seconds, {})
    results["health_256"] = health
    ctx.row("B2", f"reference: GET /health, 256 connections, {health_seconds} s (no key, no database, no body)",
            f"{health['rps']:,.0f} req/s", wrk_notes(health))  # fmt: skip
    at256 = results["256"]
    ok = at256["p99_us"] < 5000 and at256["non_2xx"] == 0 and at256["socket_errors"] == 0
    ctx.row("B2", "target: p99 < 5 ms at 256 connections, zero errors", "meets" if ok else "misses",
            f"p99 {msec(at256['p99_us'] / 1000)}, non-2xx {at256['non_2xx']}, socket errors {at256['socket_errors']}; "
            "wrk is a closed loop: mean latency = 256 / throughput, so p99 < 5 ms needs > 51,200 req/s")  # fmt: skip
    ctx.raw["B2_status"] = {"ids": ids, "runs": results}


def bench_b2_submit(ctx: Context, server: Server, image_url: str) -> None:
    if shutil.which("wrk") is None:
        ctx.row("B2", "submit rate", "skipped: wrk not installed (scripts/install-system-deps.sh bench)")
        return
    url = f"http://{HOST}:{server.port}/video/submit"
    seconds = ctx.settings.submit_seconds
    connections = 16
    say(f"B2: wrk submit, {connections} connections, {seconds} s (stub worker)")
    result = run_wrk(ctx, "submit.lua", url, connections, seconds, {"I2V_BENCH_IMAGE_URL": image_url})
    ctx.row("B2", f"/video/submit, {connections} connections, {seconds} s (320x192 PNG from loopback; stub worker)",
            f"{result['rps']:,.0f} req/s", wrk_notes(result))  # fmt: skip
    raw: dict[str, Any] = {"submit": result}
    # Status of queued tasks: each answer also computes the task's queue position.
    queued: list[str] = []
    total = 0
    with contextlib.suppress(sqlite3.Error):
        con = sqlite3.connect(f"file:{server.database}?mode=ro", uri=True, timeout=10)
        try:
            total = int(con.execute("SELECT COUNT(*) FROM tasks WHERE status = 'InQueue'").fetchone()[0])
            step = max(1, total // 50)
            queued = [
                str(r[0]) for r in con.execute("SELECT id FROM tasks WHERE status = 'InQueue' ORDER BY seq").fetchall()
            ][::step]
        finally:
            con.close()
    if not queued:
        ctx.row("B2", "/video/status on queued tasks", "skipped: no queued task ids (SQLite store not readable)")
    else:
        say(f"B2: wrk status on {len(queued)} of the queued tasks, 64 connections, {ctx.settings.wrk_seconds} s")
        result = run_wrk(ctx, "status.lua", f"http://{HOST}:{server.port}/video/status", 64, ctx.settings.wrk_seconds,
                         {"I2V_BENCH_IDS": ",".join(queued)})  # fmt: skip
        ctx.row("B2", f"/video/status, 64 connections, {ctx.settings.wrk_seconds} s (InQueue tasks, {total:,} queued)",
                f"{result['rps']:,.0f} req/s", wrk_notes(result) + " · answers include queue_position")  # fmt: skip
        raw["status_queued"] = result
        raw["queued_tasks"] = total
    ctx.raw["B2_submit"] = raw


# --- B3: image intake ------------------------------------------------------------------------------------------------

LOG_FIELD = re.compile(r"(\w[\w.]*)=(\S+)")


def intake_timings(lines: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per requestId: fetch/decode/PNG ms from the server's "image prepared" line (0.01 ms), else "task queued" (1 ms)."""
    found: dict[str, dict[str, float]] = {}
    for line in lines:
        if "image prepared" not in line and "task queued" not in line:
            continue
        fields = dict(LOG_FIELD.findall(line))
        request_id = fields.get("requestId")
        if request_id is None:
            continue
        if "image prepared" in line:
            found[request_id] = {"fetch_ms": float(fields["fetch_ms"]), "decode_ms": float(fields["decode_ms"]),
                                 "png_ms": float(fields["encode_ms"]), "precise": 1.0}  # fmt: skip
        elif request_id not in found:
            found[request_id] = {"fetch_ms": float(fields["fetch_ms"]), "decode_ms": float(fields["decode_ms"]),
                                 "png_ms": float(fields["png_ms"]), "precise": 0.0}  # fmt: skip
    return found


def bench_b3(ctx: Context, server: Server, images_server: ImageServer, directory: Path) -> None:
    kinds = [("photo-4000x3000.jpg", "12 MP JPEG 4000x3000"), ("photo-3840x2160.png", "4K PNG 3840x2160")]
    client = Client(server.port)
    submits: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in kinds}
    try:
        # One untimed submit of each first (connection set-up, libvips start-up), then A B A B.
        for index in range(-1, ctx.settings.intake_submits):
            for name, _ in kinds:
                body = {"image_url": images_server.url(name), "prompt": PROMPT, "image_size": "auto", "seed": B1_SEED}
                started = time.perf_counter()
                status, answer = client.post_json("/video/submit", body)
                elapsed = time.perf_counter() - started
                if status != 202:
                    raise BenchError(f"submit of {name} answered {status}: {answer}")
                if index >= 0:
                    submits[name].append({"id": str(answer["requestId"]), "submit_s": elapsed})
    finally:
        client.close()
    time.sleep(0.3)  # let the log lines reach the file
    timings = intake_timings(server.log_lines())
    raw: dict[str, Any] = {}
    for name, label in kinds:
        runs = submits[name]
        for run in runs:
            run.update(timings.get(run["id"], {}))
        size_mb = (directory / name).stat().st_size / 1e6
        logged = [run for run in runs if "fetch_ms" in run]
        n = len(runs)
        if logged:
            source = "'image prepared' log line" if all(r["precise"] for r in logged) else "'task queued' log line"
            for key, what in (("fetch_ms", "fetch"), ("decode_ms", "decode + resize"), ("png_ms", "PNG encode")):
                ctx.row("B3", f"{label} ({size_mb:.1f} MB): {what} (median of {len(logged)})",
                        msec(median([r[key] for r in logged])), f"from the server's {source}")  # fmt: skip
        else:
            ctx.row("B3", f"{label}: fetch / decode / PNG", "skipped: no intake log lines found (log level?)")
        ctx.row("B3", f"{label} ({size_mb:.1f} MB): whole submit, client side (median of {n})",
                msec(1000 * median([r["submit_s"] for r in runs])),
                "runs " + ", ".join(f"{1000 * r['submit_s']:.0f}" for r in runs) + " ms")  # fmt: skip
        raw[name] = {"bytes": (directory / name).stat().st_size, "runs": runs}
    ctx.raw["B3"] = raw


# --- B4: GPU ---------------------------------------------------------------------------------------------------------


def bench_b4(ctx: Context) -> None:
    command = [ctx.settings.python, str(BENCH / "gpu_step.py"), "--steps", str(ctx.settings.gpu_steps)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    found = re.search(r"^(\{.*\})$", proc.stdout, re.MULTILINE)
    result: dict[str, Any] = json.loads(found.group(1)) if found else {"ok": False, "error": proc.stderr[-500:]}
    ctx.raw["B4"] = result
    if result.get("skipped"):
        ctx.row("B4", "Wan2.1-I2V-14B-480P transformer step on GPU", f"skipped: {result['skipped']}")
    elif not result.get("ok"):
        ctx.row("B4", "Wan2.1-I2V-14B-480P transformer step on GPU", f"skipped: failed: {result.get('error')}")
    else:
        where = f"{result['device_name']}, bf16, {result['size']}x{result['frames']}, {result['latent_tokens']} tokens"
        ctx.row("B4", "seconds per denoising step (2 forwards, CFG), median", secs(result["step_s"]),
                f"{where}; steps " + ", ".join(f"{s:.2f}" for s in result["steps_s"]) + " s")  # fmt: skip
        ctx.row(
            "B4",
            "estimate for 30 steps (denoising only)",
            secs(result["estimate_30_steps_s"]),
            "excludes text/image encoders and the VAE decode",
        )
        ctx.row("B4", "peak GPU memory (allocated)", f"{result['peak_gib']:.1f} GiB",
                f"weights {result['weights_gib']:.1f} GiB ({result['params_billion']:.2f} B params); "
                f"reserved {result['peak_reserved_gib']:.1f} GiB")  # fmt: skip
    if ctx.settings.gpu_smoke_cpu:
        proc = subprocess.run([ctx.settings.python, str(BENCH / "gpu_step.py"), "--smoke-cpu", "--steps", "2"],
                              cwd=REPO, capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
        found = re.search(r"^(\{.*\})$", proc.stdout, re.MULTILINE)
        smoke: dict[str, Any] = json.loads(found.group(1)) if found else {"ok": False, "error": proc.stderr[-300:]}
        ctx.raw["B4_smoke_cpu"] = smoke
        value = f"code path OK, {secs(smoke['step_s'])}/step" if smoke.get("ok") else f"failed: {smoke.get('error')}"
        ctx.row("B4", "smoke: same code, 2-layer toy config on the CPU (not a GPU figure)", value)


# --- orchestration ---------------------------------------------------------------------------------------------------


def cpu_busy(seconds: float = 2.0) -> float | None:
    """The fraction of all CPUs busy over `seconds` (anything else running on the machine skews every figure)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return round(1 - (idle1 - idle0) / max(1, total1 - total0), 3)


def load_average() -> str | None:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return None


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        info["cpu"] = model.group(1).strip() if model else platform.processor()
    with contextlib.suppress(OSError, AttributeError):
        meminfo = Path("/proc/meminfo").read_text()
        total = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
        info["memory_gib"] = round(int(total.group(1)) / 2**20, 1) if total else None
    for package in ("torch", "diffusers", "transformers"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[package] = importlib.metadata.version(package)
    info["gpu"] = "none (CUDA not available)" if shutil.which("nvidia-smi") is None else "see B4"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                            text=True, timeout=10, check=False).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
        )
        info["git_dirty_files"] = len(dirty.stdout.splitlines())
    return info


def table(rows: Sequence[Row]) -> str:
    lines = ["| bench | measurement | value | notes |", "|---|---|---|---|"]
    for row in rows:
        cells = [row.bench, row.metric, row.value, row.notes]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def run(ctx: Context) -> None:
    wanted = ctx.settings.only
    if wanted & {"B1", "B2", "B3"}:
        run_service_benches(ctx)
    for bench in ("B1", "B2", "B3"):
        if bench not in wanted:
            ctx.row(bench, "-", "skipped: not selected (--only)")
    if "B4" in wanted:
        say("B4: GPU step")
        bench_b4(ctx)
    else:
        ctx.row("B4", "-", "skipped: not selected (--only)")


def run_service_benches(ctx: Context) -> None:
    """B1, B2 and B3: each on its own server(s), one after the other, with one loopback image server for all."""
    s = ctx.settings
    wanted = s.only
    model = demo_model(s.python)
    directory = images()
    with contextlib.ExitStack() as stack:
        images_server = ImageServer(ctx, directory)
        stack.callback(images_server.stop)
        b1_url = images_server.url("b1-800x480.jpg")

        if wanted & {"B1", "B2"}:
            # The real worker: B1, then B2's status runs on B1's finished tasks (the worker idle by then).
            pythonpath, export_note = imageio_path(s.python) if "B1" in wanted else (None, "")
            say(
                "starting the service (demo model, real worker)"
                + (" and the reference script" if "B1" in wanted else "")
            )
            server = Server(ctx, "main", model, s.python, "warning")
            stack.callback(server.stop)
            reference = Reference(ctx, model, pythonpath) if "B1" in wanted else None
            if reference is not None:
                stack.callback(reference.stop)
            ctx.raw["service_ready_s"] = server.wait_ready()
            ids: list[str] = []
            if reference is not None:
                reference.wait_ready()
                try:
                    ids = bench_b1(ctx, server, reference, b1_url, export_note)
                except BenchError as exc:
                    ctx.row("B1", "service overhead", f"skipped: failed: {exc}")
                reference.stop()
            if "B2" in wanted:
                try:
                    bench_b2_status(ctx, server, ids or finished_ids(ctx, server, b1_url))
                except BenchError as exc:
                    ctx.row("B2", "status throughput", f"skipped: failed: {exc}")
            server.stop()

        if "B2" in wanted:
            server = Server(ctx, "submit", model, stub_python(ctx), "warning", STUB_SETTINGS)
            stack.callback(server.stop)
            server.wait_ready()
            try:
                bench_b2_submit(ctx, server, images_server.url("small-320x192.png"))
            except BenchError as exc:
                ctx.row("B2", "submit rate", f"skipped: failed: {exc}")
            server.stop()

        if "B3" in wanted:
            server = Server(ctx, "intake", model, stub_python(ctx), "info", STUB_SETTINGS)
            stack.callback(server.stop)
            server.wait_ready()
            say(f"B3: {s.intake_submits} submits of each large image, alternating")
            try:
                bench_b3(ctx, server, images_server, directory)
            except BenchError as exc:
                ctx.row("B3", "image intake", f"skipped: failed: {exc}")
            server.stop()


def stub_python(ctx: Context) -> str:
    """An executable the server can start as `$I2V_PYTHON -m i2v_worker` that runs bench/stub_worker.py."""
    path = ctx.tmp / "stub-worker.sh"
    if not path.exists():
        path.write_text(f'#!/bin/sh\nexec "{ctx.settings.python}" "{BENCH / "stub_worker.py"}" "$@"\n')
        path.chmod(0o755)
    return str(path)


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", type=Path, default=DEFAULT_SERVER, help="the i2v-server binary (release build)")
    parser.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"),
                        help="the worker's Python (the venv with i2v_worker)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="short smoke run (~2 min): fewer jobs, shorter wrk runs")
    parser.add_argument("--only", default="B1,B2,B3,B4", help="comma-separated subset of B1,B2,B3,B4")
    parser.add_argument("--jobs", type=int, help="B1 jobs per side (default 5; --quick 2)")
    parser.add_argument(
        "--gpu-smoke-cpu", action="store_true", help="also run B4's code on a 2-layer toy config on the CPU"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (data dirs, logs, videos)")
    args = parser.parse_args(argv)
    only = {part.strip().upper() for part in args.only.split(",") if part.strip()}
    if not only <= {"B1", "B2", "B3", "B4"}:
        parser.error(f"--only takes B1,B2,B3,B4, not {args.only}")
    server = args.server if args.server.is_absolute() else (Path.cwd() / args.server)
    if only & {"B1", "B2", "B3"} and not server.is_file():
        parser.error(f"no server binary at {server} (build it: swift build -c release --scratch-path .build-release)")
    python = args.python
    if not Path(python).exists():
        parser.error(f"no Python at {python} (make python-env)")
    jobs = args.jobs if args.jobs is not None else (2 if args.quick else 5)
    if not 1 <= jobs <= 50:
        parser.error("--jobs must be 1..50")
    return Settings(
        server=server.resolve(), python=python, quick=args.quick, only=only, jobs=jobs,
        wrk_seconds=5 if args.quick else 20, submit_seconds=3 if args.quick else 10,
        intake_submits=3 if args.quick else 10, gpu_steps=2 if args.quick else 3, gpu_smoke_cpu=args.gpu_smoke_cpu,
        keep=args.keep,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    # SIGTERM/SIGHUP end the run through the normal clean-up path (every started process is stopped).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, frame: sys.exit(128 + number))
    started = time.monotonic()
    stamp = dt.datetime.now(dt.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="i2v-bench-"))
    ctx = Context(settings=settings, tmp=tmp)
    say(f"scratch directory {tmp}")
    busy = cpu_busy()
    quiet: dict[str, Any] = {"cpu_busy_before": busy, "load_average_before": load_average()}
    busy_text = "?" if busy is None else f"{busy:.0%}"
    if busy is not None and busy > 0.15:
        say(f"warning: the CPUs are already {busy_text} busy; the figures will be skewed")
    status = 0
    try:
        run(ctx)
    except BenchError as exc:
        say(f"error: {exc}")
        ctx.row("-", "run aborted", f"failed: {exc}")
        status = 1
    finally:
        elapsed = time.monotonic() - started
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = f"bench-{stamp.strftime('%Y%m%d-%H%M%S')}"
        logs_dir = RESULTS / f"{name}-logs"
        logs_dir.mkdir(exist_ok=True)
        for log in ctx.logs:
            with contextlib.suppress(OSError):
                shutil.copy(log, logs_dir / log.name)
        report: dict[str, Any] = {
            "started": stamp.isoformat(timespec="seconds"),
            "seconds": round(elapsed, 1),
            "quick": settings.quick,
            "settings": {
                k: (str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v)
                for k, v in asdict(settings).items()
            },
            "machine": machine(),
            "quiet": {**quiet, "load_average_after": load_average()},
            "rows": [asdict(row) for row in ctx.rows],
            "raw": ctx.raw,
        }
        text = json.dumps(report, indent=2, default=str)
        (RESULTS / f"{name}.json").write_text(text)
        (RESULTS / "latest.json").write_text(text)
        markdown = table(ctx.rows)
        (RESULTS / "latest.md").write_text(
            f"{markdown}\n\nMachine: {report['machine'].get('cpu')} ({report['machine'].get('cpus')} CPUs), "
            f"{report['machine'].get('memory_gib')} GiB, {report['started']}; run time {elapsed:.0f} s"
            f"{' (--quick)' if settings.quick else ''}; CPUs {busy_text} busy before the run, "
            f"load average {quiet['load_average_before']} before, {report['quiet']['load_average_after']} after.\n"
        )
        print(markdown)
        print(
            f"\nCPUs {busy_text} busy before the run (load average {quiet['load_average_before']}, "
            f"after: {report['quiet']['load_average_after']})"
        )
        print(f"run time {elapsed:.0f} s; results: {RESULTS / (name + '.json')}; logs: {logs_dir}")
        if settings.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
