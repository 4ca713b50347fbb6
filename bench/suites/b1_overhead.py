"""B1 service overhead: the same demo-model job through the whole service and through a plain diffusers script
(bench/reference_job.py), alternating. The service's phase split comes from its `/metrics`, scraped before and after
each job (jobs run one at a time, so each histogram's `_sum` moves by exactly that job's value)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

from harness import fixtures
from harness.assets import B1_SOURCE, imageio_path
from harness.client import PROMPT, Client
from harness.core import BENCH, HOST, JOB_TIMEOUT_S, READY_TIMEOUT_S, REPO, BenchError, Context, median, say, secs
from harness.metrics import Metrics, histogram_delta
from harness.procs import LineReader, group_cpu_seconds, stop_process
from harness.servers import Server, start_server

# Wan's recommended negative prompt (the server's default); sent explicitly so both sides use the same one.
NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall "
    "gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, "
    "poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy background, three "
    "legs, many people in the background, walking backwards"
)
# The job: the demo model's auto size for a 5:3 image (160x96 = its whole native area), 81 frames, 30 steps.
SIZE = (160, 96)
FRAMES = 81
STEPS = 30
GUIDANCE = 3.0
SEED = 42
IMAGE = "b1-800x480.jpg"
# Status polling: every 10 ms while queued and once the last denoising step is reported (VAE decode, MP4 encode: the
# end of a job is seen within 10 ms), every 100 ms while denoising (so polling takes little CPU time from the job).
POLL_FAST_S = 0.01
POLL_SLOW_S = 0.1

# The service's phases: (key, label, histogram on /metrics). Intake and queue wait are split out where the server
# publishes them; otherwise the whole server-side submit stands for intake.
PHASE_METRICS = (
    ("fetch", "image fetch", "i2v_intake_fetch_duration_seconds"),
    ("decode", "image decode + resize", "i2v_intake_decode_duration_seconds"),
    ("png", "PNG encode (input for the worker)", "i2v_intake_png_duration_seconds"),
    ("submit", "submit handled by the server (intake, input file, store insert)", "i2v_submit_duration_seconds"),
    ("queue", "queue wait (submit → claimed)", "i2v_queue_wait_seconds"),
    ("inference", "inference (pipeline call)", "i2v_inference_duration_seconds"),
    ("encode", "MP4 encode", "i2v_encode_duration_seconds"),
)
INTAKE_PARTS = ("fetch", "decode", "png")
MAIN_SERVER = "b1-main-server"  # shared with B2, which measures status on B1's finished tasks


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


def main_server(ctx: Context) -> Server:
    """The service with the real worker and the demo model (B1; B2's status runs on its finished tasks)."""

    def start() -> Server:
        server = start_server(ctx, "main", model=fixtures.model(ctx), python=ctx.settings.python)
        ctx.raw["service_ready_s"] = server.wait_ready()
        return server

    return ctx.shared_resource(MAIN_SERVER, start, Server.stop)


def service_job(client: Client, image_url: str, pgid: int) -> dict[str, Any]:
    body = {
        "image_url": image_url, "prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "image_size": "auto",
        "num_frames": FRAMES, "infer_steps": STEPS, "guidance_scale": GUIDANCE, "seed": SEED,
    }  # fmt: skip
    metrics_before = client.metrics()
    cpu_before = group_cpu_seconds(pgid)
    started = time.perf_counter()
    request_id = client.submit(body)
    submitted = time.perf_counter()
    state = poll_until_done(client, request_id, started)
    succeeded = time.perf_counter()
    results = state["results"]
    url = urllib.parse.urlsplit(results["videos"][0]["url"])
    if url.hostname != HOST:
        raise BenchError(f"video URL is not on {HOST}: {url.geturl()}")
    status, video = client.request("GET", url.path)
    finished = time.perf_counter()
    cpu_after = group_cpu_seconds(pgid)
    if status != 200 or video[4:8] != b"ftyp":
        raise BenchError(f"video download answered {status} with {len(video)} bytes")
    return {
        "id": request_id,
        "seconds": finished - started,
        "submit_s": submitted - started,
        "until_succeed_s": succeeded - started,
        "download_s": finished - succeeded,
        "inference_s": float(results["timings"]["inference"]),
        "width": results["width"],
        "height": results["height"],
        "num_frames": results["num_frames"],
        "bytes": len(video),
        "cpu_s": cpu_after[0] - cpu_before[0],  # server + worker + ffmpeg
        "server_cpu_s": cpu_after[1] - cpu_before[1],  # the Swift process alone
        "phases": phases_from_metrics(metrics_before, client.metrics()),
    }


def poll_until_done(client: Client, request_id: str, started: float) -> dict[str, Any]:
    while time.perf_counter() - started < JOB_TIMEOUT_S:
        state = client.status(request_id)
        if state.get("status") == "Succeed":
            return state
        if state.get("status") in ("Failed", "Cancelled"):
            raise BenchError(f"service job {state.get('status')}: {state.get('reason')}")
        progress = state.get("progress") or {}
        denoising = state.get("status") == "InProgress" and progress.get("step", 0) < progress.get("total_steps", 1)
        time.sleep(POLL_SLOW_S if denoising else POLL_FAST_S)
    raise BenchError(f"service job not done within {JOB_TIMEOUT_S:.0f} s")


def phases_from_metrics(before: Metrics, after: Metrics) -> dict[str, float]:
    """Each published phase's value for the one job between the two scrapes (histograms with exactly one new
    observation); phases the server does not publish are left out."""
    found: dict[str, float] = {}
    for key, _, name in PHASE_METRICS:
        delta = histogram_delta(before, after, name)
        if delta is not None and round(delta.count) == 1:
            found[key] = delta.total
    return found


def split_phases(job: dict[str, Any]) -> dict[str, float]:
    """The job's client-side time split into published phases plus the rest ("other")."""
    phases = dict(job["phases"])
    if all(part in phases for part in INTAKE_PARTS):
        phases["submit_rest"] = phases.pop("submit", 0.0) - sum(phases[p] for p in INTAKE_PARTS)
    phases["other"] = job["seconds"] - sum(phases.values())
    return phases


def bench_b1(ctx: Context) -> None:
    server = main_server(ctx)
    image_url = fixtures.image_server(ctx).url(IMAGE)
    pythonpath, export_note = imageio_path(ctx.settings.python)
    reference = Reference(ctx, fixtures.model(ctx), pythonpath)
    try:
        reference.wait_ready()
        service, script, warm_id = alternate(ctx, server, reference, image_url)
    finally:
        reference.stop()
    ctx.shared["b1_task_ids"] = [warm_id, *[job["id"] for job in service]]
    add_rows(ctx, service, script, export_note)
    ctx.raw["B1"] = {
        "job": {"size": f"{SIZE[0]}x{SIZE[1]}", "source_image": f"{B1_SOURCE[0]}x{B1_SOURCE[1]} JPEG", "frames": FRAMES,
                "steps": STEPS, "guidance_scale": GUIDANCE, "seed": SEED, "poll_s": [POLL_FAST_S, POLL_SLOW_S]},
        "service": service, "script": script, "reference": reference.info, "export": export_note,
        "warm_up_service_id": warm_id,
    }  # fmt: skip


def alternate(
    ctx: Context, server: Server, reference: Reference, image_url: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """One untimed warm-up job on each side, then N pairs, service first in each pair."""
    n = ctx.settings.jobs
    width, height = SIZE

    def script_job(index: int) -> dict[str, Any]:
        return reference.job({
            "image_url": image_url, "prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "width": width,
            "height": height, "num_frames": FRAMES, "infer_steps": STEPS, "guidance_scale": GUIDANCE,
            "seed": SEED, "output": str(ctx.tmp / f"reference-{index}.mp4"),
        })  # fmt: skip

    service: list[dict[str, Any]] = []
    script: list[dict[str, Any]] = []
    with Client(server.port) as client:
        say("B1: warm-up job on each side (not timed)")
        warm = service_job(client, image_url, server.proc.pid)
        script_job(-1)
        if (warm["width"], warm["height"], warm["num_frames"]) != (width, height, FRAMES):
            raise BenchError(f"the service made {warm['width']}x{warm['height']}x{warm['num_frames']}, "
                             f"expected {width}x{height}x{FRAMES}")  # fmt: skip
        for index in range(n):
            say(f"B1: pair {index + 1}/{n}: service, then script")
            service.append(service_job(client, image_url, server.proc.pid))
            script.append(script_job(index))
    return service, script, str(warm["id"])


def add_rows(ctx: Context, service: list[dict[str, Any]], script: list[dict[str, Any]], export_note: str) -> None:
    n = len(service)
    build = ctx.settings.build
    service_s = median([job["seconds"] for job in service])
    script_s = median([job["seconds"] for job in script])
    ratio = service_s / script_s
    pair_ratios = [a["seconds"] / b["seconds"] for a, b in zip(service, script, strict=True)]
    size = f"{SIZE[0]}x{SIZE[1]}, {FRAMES} frames, {STEPS} steps, seed {SEED}; {build} build"
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
    worker_inference = median([j["inference_s"] for j in service])
    script_inference = median([j["inference_s"] for j in script])
    ctx.row("B1", "inference only: worker / script pipeline call (medians)", f"{worker_inference / script_inference:.3f}",
            f"worker {secs(worker_inference)} vs script {secs(script_inference)}")  # fmt: skip
    phase_rows(ctx, service)
    script_phases = {"fetch_s": "fetch", "prepare_s": "decode + resize (PIL)", "inference_s": "inference (pipeline call)",
                     "export_s": "export_to_video"}  # fmt: skip
    ctx.row("B1", "script phases (medians)",
            " · ".join(f"{label} {secs(median([j[key] for j in script]))}" for key, label in script_phases.items()),
            "timed inside reference_job.py")  # fmt: skip


def phase_rows(ctx: Context, service: list[dict[str, Any]]) -> None:
    splits = [split_phases(job) for job in service]
    labels = {key: (label, name) for key, label, name in PHASE_METRICS}
    labels["submit_rest"] = ("rest of the submit (input file, store insert, HTTP)", "i2v_submit_duration_seconds")
    labels["other"] = ("other (HTTP round trips, hand-off, result recording, polling, download)", "")
    for key, (label, name) in labels.items():
        values = [split[key] for split in splits if key in split]
        if key == "submit" and all("submit_rest" in split for split in splits):
            continue  # split into fetch, decode, PNG and the rest
        if values:
            source = f"/metrics {name} (per-job _sum change)" if name else "client clock − the phases above"
            ctx.row("B1", f"service phase: {label} (median)", secs(median(values)), source)
        elif key not in ("submit_rest",):
            ctx.row("B1", f"service phase: {label}", "skipped: not published", f"/metrics has no {name}")
