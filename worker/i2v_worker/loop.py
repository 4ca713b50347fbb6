"""The worker's main loop: reads the server's messages from stdin, runs jobs, writes the worker's messages.

A reader thread turns stdin into lines; the loop parses them and hands `run`s to a pool of `slots` job threads
(kept for the life of the process, so a job starts on a thread whose allocator and thread-local torch state are
warm); every message out goes through one locked line writer. The engine returns results and raises typed errors;
this module alone turns them into protocol messages.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import BinaryIO, Protocol

from .errors import BadInput, Cancelled, OutOfMemory, describe_failure
from .jobs import EngineInfo, ExpertCallback, GenerationResult, Job, PhaseCallback, StepCallback
from .messages import (
    Cancel,
    Done,
    Error,
    ErrorKind,
    Expert,
    Fatal,
    FromWorker,
    JobPhase,
    MemoryInfo,
    Phase,
    Progress,
    ProtocolError,
    Ready,
    Run,
    Shutdown,
    SpeedInfo,
    dumps,
    parse_line,
)
from .models import canonical_id
from .settings import ConfigurationError

logger = logging.getLogger("i2v_worker")


class Runner(Protocol):
    """What the main loop needs from the inference side (implemented by pipeline.Engine)."""

    @property
    def slots(self) -> int: ...

    def describe(self) -> EngineInfo: ...

    def run(
        self,
        job: Job,
        *,
        on_step: StepCallback,
        cancelled: threading.Event,
        on_phase: PhaseCallback,
        on_expert: ExpertCallback,
    ) -> GenerationResult: ...


class LineWriter:
    """Writes messages to the protocol stream, one whole line at a time, flushed, from any thread."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._broken = False

    def send(self, message: FromWorker) -> None:
        data = (dumps(message) + "\n").encode("utf-8")
        with self._lock:
            if self._broken:
                return
            try:
                self._stream.write(data)
                self._stream.flush()
            except (OSError, ValueError) as exc:  # the server went away; stdin's EOF ends the loop
                self._broken = True
                logger.warning("cannot write to the protocol stream: %s", exc)


def ready_message(info: EngineInfo) -> Ready:
    speed = info.speed
    return Ready(
        model=info.model,
        device=info.device,
        dtype=info.dtype,
        slots=info.slots,
        memory=MemoryInfo(
            free_bytes=info.free_bytes,
            bytes_per_token=info.bytes_per_token,
            cpu_offload=info.cpu_offload,
            vae_tiling=info.vae_tiling,
        ),
        speed=SpeedInfo(
            preset=speed.preset,
            compiled=speed.compile,
            cache_threshold=speed.cache_threshold,
            fp8=speed.fp8,
            lora=os.path.basename(speed.lora_path) if speed.lora_path else None,
            infer_steps=speed.infer_steps,
            guidance_scale=speed.guidance_scale,
        ),
        ranks=None if info.devices is None else len(info.devices),
        devices=info.devices,
    )


def done_message(task_id: str, result: GenerationResult) -> Done:
    return Done(
        task_id=task_id,
        path=result.path,
        width=result.width,
        height=result.height,
        num_frames=result.num_frames,
        fps=result.fps,
        seed=result.seed,
        inference_seconds=result.inference_seconds,
        encode_seconds=result.encode_seconds,
        infer_steps=result.infer_steps,
        guidance_scale=result.guidance_scale,
        model=result.model,
        guidance_scale_2=result.guidance_scale_2,
        loras=result.loras,
    )


def classify(exc: BaseException) -> tuple[ErrorKind, str]:
    """The protocol error kind and message for a job that raised `exc`."""
    if isinstance(exc, Cancelled):
        return "cancelled", str(exc)
    if isinstance(exc, BadInput):
        return "bad_input", str(exc)
    if isinstance(exc, OutOfMemory):
        return "oom", str(exc)
    return "internal", describe_failure(exc)


def job_from(run: Run) -> Job:
    return Job(
        task_id=run.task_id,
        image_path=run.image_path,
        prompt=run.prompt,
        negative_prompt=run.negative_prompt,
        width=run.width,
        height=run.height,
        num_frames=run.num_frames,
        infer_steps=run.infer_steps,
        guidance_scale=run.guidance_scale,
        seed=run.seed,
        output_path=run.output_path,
        last_image_path=run.last_image_path,
        guidance_scale_2=run.guidance_scale_2,
        model=run.model,
        loras=run.loras or (),
    )


def _read_lines(fd: int, inbox: queue.Queue[bytes | None]) -> None:
    """Reader thread: puts each line read from `fd` into `inbox`, then None at end of input."""
    pending = b""
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    inbox.put(line)
        if pending.strip():
            inbox.put(pending)
    except OSError as exc:
        logger.warning("cannot read the protocol input: %s", exc)
    finally:
        inbox.put(None)


def _release_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")  # only where the engine loaded it: the loop itself does not need torch
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _refuse_until_shutdown(inbox: queue.Queue[bytes | None], writer: LineWriter, *, reason: str) -> None:
    """Answers every `run` with a refusal until `shutdown` or the end of input."""
    while (line := inbox.get()) is not None:
        try:
            message = parse_line(line)
        except ProtocolError:
            continue
        if isinstance(message, Shutdown):
            return
        if isinstance(message, Run):
            writer.send(Error(task_id=message.task_id, kind="internal", message=f"refused: cannot start: {reason}"))


def serve(
    load: Callable[[], Runner],
    input_fd: int,
    output: BinaryIO | LineWriter,
    *,
    shutdown_grace_seconds: float = 30.0,
) -> int:
    """The worker's main loop. Returns the process exit status: 0 after shutdown or end of input, 1 if loading failed.
    `output` may be a `LineWriter` already in use elsewhere (a group's watcher writes its `fatal` through it)."""
    writer = output if isinstance(output, LineWriter) else LineWriter(output)
    inbox: queue.Queue[bytes | None] = queue.Queue()
    threading.Thread(target=_read_lines, args=(input_fd, inbox), name="protocol-reader", daemon=True).start()

    refusal: str | None = None
    try:
        runner = load()
    except ConfigurationError as exc:
        refusal = str(exc)
    except Exception as exc:
        logger.exception("model failed to load")
        writer.send(Fatal(message=f"model failed to load: {exc}"))
        return 1
    if refusal is not None:
        # A restart with the same configuration would fail the same way: say why, then wait for the server to end
        # this process rather than exit into a restart loop. What was loaded (a LoRA is checked against the loaded
        # model) went with the exception's traceback: give it back first.
        logger.error("cannot start: %s", refusal)
        writer.send(Fatal(message=f"cannot start: {refusal}"))
        _release_memory()
        _refuse_until_shutdown(inbox, writer, reason=refusal)
        return 1
    ready = ready_message(runner.describe())
    served = ready.model.id
    writer.send(ready)
    logger.info("ready")

    jobs: dict[str, threading.Event] = {}  # the cancel flags of running jobs, by task id
    futures: list[Future[None]] = []  # every job submitted, waited for before returning
    jobs_lock = threading.Lock()
    pool = ThreadPoolExecutor(max_workers=runner.slots, thread_name_prefix="job")

    def run_job(run: Run, cancelled: threading.Event) -> None:
        task_id = run.task_id
        expert: list[Expert | None] = [None]  # set before the first step on it, and on every switch

        def on_step(step: int, total: int) -> None:
            writer.send(Progress(task_id=task_id, step=step, total_steps=total, expert=expert[0]))

        def on_phase(phase: JobPhase) -> None:
            writer.send(Phase(task_id=task_id, phase=phase))

        def on_expert(now: Expert) -> None:
            expert[0] = now

        result: FromWorker
        try:
            job = job_from(run)
            outcome = runner.run(job, on_step=on_step, cancelled=cancelled, on_phase=on_phase, on_expert=on_expert)
            result = done_message(task_id, outcome)
        except BaseException as exc:  # noqa: BLE001 (every way a job ends is reported to the server)
            kind, message = classify(exc)
            if kind == "internal":
                logger.error("task=%s internal error: %s", task_id, message)
            result = Error(task_id=task_id, kind=kind, message=message)
        finally:
            with jobs_lock:
                jobs.pop(task_id, None)
        writer.send(result)

    def start(run: Run) -> None:
        with jobs_lock:
            if run.model is not None and canonical_id(run.model) != canonical_id(served):
                refusal = f"this worker serves {served}, not {run.model}"
            elif run.task_id in jobs:
                refusal = f"task {run.task_id} is already running"
            elif len(jobs) >= runner.slots:
                refusal = f"all {runner.slots} slots are busy"
            else:
                refusal = ""
                cancelled = threading.Event()
                jobs[run.task_id] = cancelled
                futures[:] = [f for f in futures if not f.done()]
                futures.append(pool.submit(run_job, run, cancelled))
        if refusal:
            logger.error("task=%s refused: %s", run.task_id, refusal)
            writer.send(Error(task_id=run.task_id, kind="internal", message=f"refused: {refusal}"))

    while True:
        line = inbox.get()
        if line is None:
            logger.info("end of input: shutting down")
            break
        try:
            message = parse_line(line)
        except ProtocolError as exc:
            logger.error("bad line from the server (%s): %.200r", exc, line)
            if exc.message_type == "run" and exc.task_id is not None:
                writer.send(Error(task_id=exc.task_id, kind="bad_input", message=str(exc)))
            continue
        if isinstance(message, Run):
            start(message)
        elif isinstance(message, Cancel):
            with jobs_lock:
                flag = jobs.get(message.task_id)
            if flag is None:
                logger.info("task=%s cancel ignored: not running", message.task_id)
            else:
                logger.info("task=%s cancel requested", message.task_id)
                flag.set()
        elif isinstance(message, Shutdown):
            logger.info("shutdown requested")
            break
        else:
            logger.error("ignoring a %r message: it goes from the worker to the server", message.type)

    with jobs_lock:
        for flag in jobs.values():
            flag.set()
        pending = list(futures)
    # Also the jobs that have just reported their end: their threads may still be returning.
    _, unfinished = wait(pending, timeout=shutdown_grace_seconds)
    pool.shutdown(wait=False)
    if unfinished:
        logger.warning("exiting with %d jobs still running after %.0f s", len(unfinished), shutdown_grace_seconds)
    return 0
