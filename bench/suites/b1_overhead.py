"""B1 service overhead: the same demo-model job through the whole service and through a plain diffusers script
(bench/reference_job.py), alternating, for each demo model (`--models`). Each model gets a server of its own, started
with `I2V_MODEL=<id>` (it builds the demo checkpoint into its data dir), and the script loads that very checkpoint
directory with the worker's settings for the model. The service's phase split comes from its `/metrics`, scraped
before and after each job (jobs run one at a time, so each histogram's `_sum` moves by exactly that job's value)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import fixtures
from harness.assets import B1_IMAGES, B1_LAST_IMAGES, imageio_path
from harness.client import PROMPT, Client
from harness.core import (
    BENCH,
    DEMO_MODELS,
    HOST,
    JOB_TIMEOUT_S,
    READY_TIMEOUT_S,
    REPO,
    BenchError,
    Context,
    median,
    say,
    secs,
)  # fmt: skip
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
# The job, the same for every model: its demo's native size (the first of `sizes` on GET /models), 81 frames (fewer
# where the model makes fewer), 30 steps, guidance 3.0 (with two experts: on both), seed 42.
FRAMES = 81
STEPS = 30
GUIDANCE = 3.0
SEED = 42
MAIN_MODEL = DEMO_MODELS[0]  # the 480P demo: its server stays up for B2
IMAGE = B1_IMAGES[(160, 96)]  # the main model's input image (B2 submits it when B1 did not run)
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

# What the worker applies per model that GET /models does not publish, read from the worker's own model table.
WORKER_TABLE = """
import json, sys
from i2v_worker import models
spec = models.find(sys.argv[1])
print(json.dumps({"flow_shift": spec.flow_shift, "fps": spec.fps, "experts": spec.experts,
                  "last_image": spec.last_image, "architecture": spec.architecture}))
"""


@dataclass(frozen=True)
class ModelJob:
    """One model's B1 job and the settings both sides use for it."""

    model: str
    width: int
    height: int
    frames: int
    fps: int
    size_multiple: int
    flow_shift: float
    experts: int
    last_image: str  # none, optional, required (the job sends one only where required)
    architecture: str
    image: str
    last: str | None

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def guidance_2(self) -> float | None:
        """The low-noise expert's guidance: the native submit has no field for it, so the worker takes the job's
        `guidance_scale` for both experts; the script passes that value as `guidance_scale_2`."""
        return GUIDANCE if self.experts > 1 else None


def worker_table(python: str, model: str) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "worker"), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([python, "-c", WORKER_TABLE, model], capture_output=True, text=True, env=env, timeout=120,
                          check=False, cwd=REPO)  # fmt: skip
    if proc.returncode != 0:
        raise BenchError(f"cannot read the worker's settings for {model}: {proc.stderr.strip()[-300:]}")
    return dict(json.loads(proc.stdout))


def model_job(ctx: Context, server: Server, model: str) -> ModelJob:
    """The job for `model`: size, frames and fps as the started server publishes them on GET /models, the flow
    shift and experts from the worker's model table."""
    with Client(server.port) as client:
        status, answer = client.get_json("/models")
    if status != 200:
        raise BenchError(f"GET /models answered {status}: {answer}")
    served = next((m for m in answer.get("models", []) if m.get("id") == model), None)
    if served is None:
        raise BenchError(f"the server does not serve {model}: {[m.get('id') for m in answer.get('models', [])]}")
    width, height = (int(v) for v in str(served["sizes"][0]).split("x"))
    most = served.get("max_frames")
    frames = FRAMES if most is None or most >= FRAMES else (int(most) - 1) // 4 * 4 + 1
    table = worker_table(ctx.settings.python, model)
    if int(table["fps"]) != int(served["fps"]) or table["last_image"] != served["last_image"]:
        raise BenchError(f"{model}: GET /models ({served}) disagrees with the worker's model table ({table})")
    image = B1_IMAGES.get((width, height))
    if image is None:
        raise BenchError(f"{model}: no B1 input image for its native size {width}x{height}")
    return ModelJob(
        model=model, width=width, height=height, frames=frames, fps=int(served["fps"]),
        size_multiple=int(served["size_multiple"]), flow_shift=float(table["flow_shift"]),
        experts=int(table["experts"]), last_image=str(served["last_image"]), architecture=str(table["architecture"]),
        image=image, last=B1_LAST_IMAGES[(width, height)] if served["last_image"] == "required" else None,
    )  # fmt: skip


class Reference:
    """bench/reference_job.py --serve: the model loaded once, then one job per stdin line."""

    def __init__(self, ctx: Context, checkpoint: Path, job: ModelJob, pythonpath: Path | None) -> None:
        env = dict(os.environ)
        if pythonpath is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH", "")]))
        log_path = ctx.tmp / f"reference-{job.model}.log"
        ctx.logs.append(log_path)
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        command = [
            ctx.settings.python, str(BENCH / "reference_job.py"), "--model", str(checkpoint), "--serve",
            "--threads", "1", "--flow-shift", str(job.flow_shift), "--fps", str(job.fps),
            "--warm-size", str(2 * job.size_multiple),
        ]  # fmt: skip
        if job.last_image == "required":
            command.append("--warm-last-image")
        self.proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            start_new_session=True,
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


def model_server(ctx: Context, name: str, model: str) -> Server:
    """The service with the real worker serving `model`: `I2V_MODEL=<id>`, no checkpoint path, so the server
    builds the demo checkpoint into its data dir on start."""
    server = start_server(ctx, name, model=None, python=ctx.settings.python, extra={"I2V_MODEL": model})
    ctx.raw.setdefault("service_ready_s", {})[model] = server.wait_ready()
    return server


def main_server(ctx: Context) -> Server:
    """The service serving the 480P demo model (B1; B2's status runs on its finished tasks)."""
    return ctx.shared_resource(MAIN_SERVER, lambda: model_server(ctx, "main", MAIN_MODEL), Server.stop)


def service_job(client: Client, job: ModelJob, urls: dict[str, str], pgid: int) -> dict[str, Any]:
    body = {
        "image_url": urls["image"], "prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "image_size": job.size,
        "num_frames": job.frames, "infer_steps": STEPS, "guidance_scale": GUIDANCE, "seed": SEED,
    }  # fmt: skip
    if "last" in urls:
        body["last_image_url"] = urls["last"]
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
    """Each model in turn, the 480P one last: its server stays up for B2, so no idle server of it sits beside the
    other models' measurements. Rows come in `--models` order."""
    pythonpath, export_note = imageio_path(ctx.settings.python)
    models = ctx.settings.models or [MAIN_MODEL]
    order = [m for m in models if m != MAIN_MODEL] + [m for m in models if m == MAIN_MODEL]
    results: dict[str, dict[str, Any] | BenchError] = {}
    for model in order:
        say(f"B1: {model}")
        try:
            results[model] = measure_model(ctx, model, pythonpath)
        except BenchError as exc:
            say(f"B1: {model} failed: {exc}")
            results[model] = exc
    ctx.raw["B1"] = {"export": export_note, "models": {m: r for m, r in results.items() if isinstance(r, dict)}}
    for model in models:
        result = results[model]
        if isinstance(result, BenchError):
            ctx.row("B1", f"{model}: service overhead", f"skipped: failed: {result}")
        else:
            add_rows(ctx, result, export_note, full=model == MAIN_MODEL)
    summary_row(ctx, [results[m] for m in models if isinstance(results[m], dict)])  # type: ignore[misc]


def measure_model(ctx: Context, model: str, pythonpath: Path | None) -> dict[str, Any]:
    main = model == MAIN_MODEL
    server = main_server(ctx) if main else model_server(ctx, f"b1-{model}", model)
    try:
        job = model_job(ctx, server, model)
        checkpoint = server.demo_checkpoint(model)
        if not (checkpoint / "i2v_model.json").is_file():
            raise BenchError(f"{model}: the server's demo checkpoint is not at {checkpoint}")
        images = fixtures.image_server(ctx)
        urls = {"image": images.url(job.image)}
        if job.last is not None:
            urls["last"] = images.url(job.last)
        reference = Reference(ctx, checkpoint, job, pythonpath)
        try:
            info = reference.wait_ready()
            expected = {"flow_shift": job.flow_shift, "experts": job.experts, "fps": job.fps, "threads": 1}
            if any(info.get(k) != v for k, v in expected.items()):
                raise BenchError(f"{model}: the script loaded {info}, expected {expected}")
            service, script, warm_id = alternate(ctx, server, reference, job, urls)
        finally:
            reference.stop()
    finally:
        if not main:
            server.stop()
    if main:
        ctx.shared["b1_task_ids"] = [warm_id, *[j["id"] for j in service]]
    return {
        "job": {**asdict(job), "steps": STEPS, "guidance_scale": GUIDANCE, "guidance_scale_2": job.guidance_2,
                "seed": SEED, "poll_s": [POLL_FAST_S, POLL_SLOW_S]},
        "checkpoint": str(checkpoint), "service": service, "script": script, "reference": info,
        "warm_up_service_id": warm_id,
    }  # fmt: skip


def alternate(
    ctx: Context, server: Server, reference: Reference, job: ModelJob, urls: dict[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """One untimed warm-up job on each side, then N pairs, service first in each pair."""
    n = ctx.settings.jobs

    def script_job(index: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "image_url": urls["image"], "prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "width": job.width,
            "height": job.height, "num_frames": job.frames, "infer_steps": STEPS, "guidance_scale": GUIDANCE,
            "seed": SEED, "output": str(ctx.tmp / f"reference-{job.model}-{index}.mp4"),
        }  # fmt: skip
        if "last" in urls:
            body["last_image_url"] = urls["last"]
        if job.guidance_2 is not None:
            body["guidance_scale_2"] = job.guidance_2
        return reference.job(body)

    service: list[dict[str, Any]] = []
    script: list[dict[str, Any]] = []
    with Client(server.port) as client:
        say(f"B1: {job.model}: warm-up job on each side (not timed)")
        warm = service_job(client, job, urls, server.proc.pid)
        script_job(-1)
        if (warm["width"], warm["height"], warm["num_frames"]) != (job.width, job.height, job.frames):
            raise BenchError(f"the service made {warm['width']}x{warm['height']}x{warm['num_frames']}, "
                             f"expected {job.size}x{job.frames}")  # fmt: skip
        for index in range(n):
            say(f"B1: {job.model}: pair {index + 1}/{n}: service, then script")
            service.append(service_job(client, job, urls, server.proc.pid))
            script.append(script_job(index))
    return service, script, str(warm["id"])


def add_rows(ctx: Context, result: dict[str, Any], export_note: str, *, full: bool) -> None:
    """The model's rows; `full` gives every service phase a row of its own (the 480P model's, as B1 always had),
    otherwise the phases share one row."""
    service, script, job = result["service"], result["script"], result["job"]
    model = job["model"]
    n = len(service)
    build = ctx.settings.build
    service_s = median([j["seconds"] for j in service])
    script_s = median([j["seconds"] for j in script])
    ratio = service_s / script_s
    pair_ratios = [a["seconds"] / b["seconds"] for a, b in zip(service, script, strict=True)]
    extras = f"; last image; {job['fps']} fps" if job["last"] else f"; {job['fps']} fps"
    if job["guidance_scale_2"] is not None:
        extras += f"; guidance_scale_2 {job['guidance_scale_2']}"
    size = (f"{job['width']}x{job['height']}, {job['frames']} frames, {STEPS} steps, seed {SEED}, flow shift "
            f"{job['flow_shift']}{extras}; {build} build")  # fmt: skip
    ctx.row("B1", f"{model}: service job, submit → Succeed → MP4 downloaded (median of {n})", secs(service_s),
            f"{size}; runs " + ", ".join(f"{j['seconds']:.2f}" for j in service) + " s")  # fmt: skip
    ctx.row("B1", f"{model}: plain script job, reference_job.py (median of {n})", secs(script_s),
            f"{export_note}; runs " + ", ".join(f"{j['seconds']:.2f}" for j in script) + " s")  # fmt: skip
    verdict = "meets" if ratio <= 1.0 else "misses"
    ctx.row("B1", f"{model}: ratio service / script (medians)", f"{ratio:.3f}",
            f"{verdict} target ≤ 1.00; per-pair ratios " + ", ".join(f"{r:.3f}" for r in pair_ratios) + "; A B A B order")  # fmt: skip
    service_cpu = median([j["cpu_s"] for j in service])
    script_cpu = median([j["cpu_s"] for j in script])
    ctx.row("B1", f"{model}: CPU seconds per job: service / script (medians)", f"{service_cpu / script_cpu:.3f}",
            f"service {service_cpu:.2f} s (of which the Swift server {median([j['server_cpu_s'] for j in service]):.2f} s"
            f", the rest worker + ffmpeg) vs script {script_cpu:.2f} s (process + ffmpeg); less sensitive to other "
            "load on the machine than wall time")  # fmt: skip
    worker_inference = median([j["inference_s"] for j in service])
    script_inference = median([j["inference_s"] for j in script])
    ctx.row("B1", f"{model}: inference only: worker / script pipeline call (medians)",
            f"{worker_inference / script_inference:.3f}",
            f"worker {secs(worker_inference)} vs script {secs(script_inference)}")  # fmt: skip
    if full:
        phase_rows(ctx, model, service)
    else:
        phases_row(ctx, model, service)
    script_phases = {"fetch_s": "fetch", "prepare_s": "decode + resize (PIL)", "inference_s": "inference (pipeline call)",
                     "export_s": "export_to_video"}  # fmt: skip
    ctx.row("B1", f"{model}: script phases (medians)",
            " · ".join(f"{label} {secs(median([j[key] for j in script]))}" for key, label in script_phases.items()),
            "timed inside reference_job.py")  # fmt: skip


def phase_labels() -> dict[str, tuple[str, str]]:
    labels = {key: (label, name) for key, label, name in PHASE_METRICS}
    labels["submit_rest"] = ("rest of the submit (input file, store insert, HTTP)", "i2v_submit_duration_seconds")
    labels["other"] = ("other (HTTP round trips, hand-off, result recording, polling, download)", "")
    return labels


def phase_rows(ctx: Context, model: str, service: list[dict[str, Any]]) -> None:
    splits = [split_phases(job) for job in service]
    for key, (label, name) in phase_labels().items():
        values = [split[key] for split in splits if key in split]
        if key == "submit" and all("submit_rest" in split for split in splits):
            continue  # split into fetch, decode, PNG and the rest
        if values:
            source = f"/metrics {name} (per-job _sum change)" if name else "client clock − the phases above"
            ctx.row("B1", f"{model}: service phase: {label} (median)", secs(median(values)), source)
        elif key not in ("submit_rest",):
            ctx.row("B1", f"{model}: service phase: {label}", "skipped: not published", f"/metrics has no {name}")


def phases_row(ctx: Context, model: str, service: list[dict[str, Any]]) -> None:
    """The service's phases in one row: the same figures `phase_rows` gives one row each."""
    splits = [split_phases(job) for job in service]
    short = {"fetch": "fetch", "decode": "decode + resize", "png": "PNG", "submit": "submit",
             "submit_rest": "rest of submit", "queue": "queue wait", "inference": "inference", "encode": "MP4 encode",
             "other": "other"}  # fmt: skip
    parts = []
    missing = []
    for key, (_, name) in phase_labels().items():
        values = [split[key] for split in splits if key in split]
        if key == "submit" and all("submit_rest" in split for split in splits):
            continue
        if values:
            parts.append(f"{short[key]} {secs(median(values))}")
        elif key != "submit_rest":
            missing.append(name)
    notes = "/metrics per-job _sum changes; other = client clock − the phases"
    if missing:
        notes += "; not published: " + ", ".join(missing)
    ctx.row("B1", f"{model}: service phases (medians)", " · ".join(parts), notes)


def summary_row(ctx: Context, results: list[dict[str, Any]]) -> None:
    if len(results) < 2:
        return
    ratios = {}
    for result in results:
        service_s = median([j["seconds"] for j in result["service"]])
        script_s = median([j["seconds"] for j in result["script"]])
        ratios[result["job"]["model"]] = service_s / script_s
    above = [m for m, r in ratios.items() if r > 1.0]
    ctx.row("B1", "ratio service / script per model (medians)",
            " · ".join(f"{m.removesuffix('-demo')} {r:.3f}" for m, r in ratios.items()),
            f"target ≤ 1.00; above it: {', '.join(above)}" if above else "target ≤ 1.00: every model meets it")  # fmt: skip
