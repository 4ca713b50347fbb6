"""The line-delimited JSON protocol between the Swift server and the worker (see worker/protocol/PROTOCOL.md).

Messages are frozen dataclasses; `parse_line` turns one line into one of them (or raises `ProtocolError`), `dumps`
turns one into a line. `serve` is the worker's main loop: it reads the server's messages from stdin in a reader
thread, runs jobs in threads, and writes its own messages to the protocol stream, one line at a time under a lock.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Callable, ClassVar, Literal, Protocol, Union, cast, get_args

from .metadata import ModelInfo

PROTOCOL_VERSION = 1

ErrorKind = Literal["oom", "bad_input", "cancelled", "internal"]
ERROR_KINDS: tuple[str, ...] = get_args(ErrorKind)

logger = logging.getLogger("i2v_worker")


class ProtocolError(ValueError):
    """A line that is not a valid message. `task_id` and `message_type` are set when the line named them."""

    def __init__(self, message: str, task_id: str | None = None, message_type: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.message_type = message_type


# --- messages -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MemoryInfo:
    free_bytes: int | None
    bytes_per_token: int | None


@dataclass(frozen=True, kw_only=True)
class Ready:
    type: ClassVar[str] = "ready"
    protocol: int = PROTOCOL_VERSION
    model: ModelInfo
    device: str
    dtype: str
    slots: int
    memory: MemoryInfo


@dataclass(frozen=True, kw_only=True)
class Progress:
    type: ClassVar[str] = "progress"
    task_id: str
    step: int
    total_steps: int


@dataclass(frozen=True, kw_only=True)
class Done:
    type: ClassVar[str] = "done"
    task_id: str
    path: str
    width: int
    height: int
    num_frames: int
    fps: int
    seed: int
    inference_seconds: float
    encode_seconds: float


@dataclass(frozen=True, kw_only=True)
class Error:
    type: ClassVar[str] = "error"
    task_id: str
    kind: ErrorKind
    message: str


@dataclass(frozen=True, kw_only=True)
class Fatal:
    type: ClassVar[str] = "fatal"
    message: str


@dataclass(frozen=True, kw_only=True)
class Run:
    type: ClassVar[str] = "run"
    task_id: str
    image_path: str
    prompt: str
    negative_prompt: str = ""
    width: int
    height: int
    num_frames: int
    infer_steps: int
    guidance_scale: float
    seed: int
    output_path: str


@dataclass(frozen=True, kw_only=True)
class Cancel:
    type: ClassVar[str] = "cancel"
    task_id: str


@dataclass(frozen=True, kw_only=True)
class Shutdown:
    type: ClassVar[str] = "shutdown"


FromWorker = Union[Ready, Progress, Done, Error, Fatal]
ToWorker = Union[Run, Cancel, Shutdown]
Message = Union[FromWorker, ToWorker]


# --- parsing and serialising --------------------------------------------------------------------------------------


class _Fields:
    """Typed access to a decoded JSON object; every failure is a ProtocolError naming the field."""

    def __init__(self, data: dict[str, Any], message_type: str) -> None:
        self.data = data
        self.message_type = message_type
        task_id = data.get("task_id")
        self.task_id = task_id if isinstance(task_id, str) and task_id else None

    def fail(self, message: str) -> ProtocolError:
        return ProtocolError(f"{self.message_type}: {message}", self.task_id, self.message_type)

    def text(self, name: str, default: str | None = None, empty: bool = True) -> str:
        value = self.data.get(name, default)
        if not isinstance(value, str):
            raise self.fail(f"{name!r} must be a string, got {value!r}")
        if not empty and not value:
            raise self.fail(f"{name!r} must not be empty")
        return value

    def integer(self, name: str, minimum: int | None = None) -> int:
        value = self.data.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(f"{name!r} must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(f"{name!r} must be at least {minimum}, got {value}")
        return value

    def optional_integer(self, name: str) -> int | None:
        return None if self.data.get(name) is None else self.integer(name, minimum=0)

    def number(self, name: str) -> float:
        value = self.data.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self.fail(f"{name!r} must be a number, got {value!r}")
        return float(value)

    def mapping(self, name: str) -> dict[str, Any]:
        value = self.data.get(name)
        if not isinstance(value, dict):
            raise self.fail(f"{name!r} must be an object, got {value!r}")
        return value


def _parse_ready(f: _Fields) -> Ready:
    try:
        model = ModelInfo.from_dict(f.mapping("model"))
    except ValueError as exc:
        raise f.fail(str(exc)) from None
    memory = _Fields(f.mapping("memory"), "ready.memory")
    return Ready(
        protocol=f.integer("protocol"),
        model=model,
        device=f.text("device", empty=False),
        dtype=f.text("dtype", empty=False),
        slots=f.integer("slots", minimum=1),
        memory=MemoryInfo(
            free_bytes=memory.optional_integer("free_bytes"), bytes_per_token=memory.optional_integer("bytes_per_token")
        ),
    )


def _parse_error(f: _Fields) -> Error:
    kind = f.text("kind")
    if kind not in ERROR_KINDS:
        raise f.fail(f"'kind' must be one of {', '.join(ERROR_KINDS)}, got {kind!r}")
    return Error(task_id=f.text("task_id", empty=False), kind=cast(ErrorKind, kind), message=f.text("message"))


def _parse_run(f: _Fields) -> Run:
    return Run(
        task_id=f.text("task_id", empty=False),
        image_path=f.text("image_path", empty=False),
        prompt=f.text("prompt"),
        negative_prompt=f.text("negative_prompt", default=""),
        width=f.integer("width", minimum=1),
        height=f.integer("height", minimum=1),
        num_frames=f.integer("num_frames", minimum=1),
        infer_steps=f.integer("infer_steps", minimum=1),
        guidance_scale=f.number("guidance_scale"),
        seed=f.integer("seed", minimum=0),
        output_path=f.text("output_path", empty=False),
    )


_PARSERS: dict[str, Callable[[_Fields], Message]] = {
    "ready": _parse_ready,
    "progress": lambda f: Progress(
        task_id=f.text("task_id", empty=False), step=f.integer("step", minimum=0), total_steps=f.integer("total_steps", minimum=0)
    ),
    "done": lambda f: Done(
        task_id=f.text("task_id", empty=False),
        path=f.text("path", empty=False),
        width=f.integer("width", minimum=1),
        height=f.integer("height", minimum=1),
        num_frames=f.integer("num_frames", minimum=1),
        fps=f.integer("fps", minimum=1),
        seed=f.integer("seed", minimum=0),
        inference_seconds=f.number("inference_seconds"),
        encode_seconds=f.number("encode_seconds"),
    ),
    "error": _parse_error,
    "fatal": lambda f: Fatal(message=f.text("message")),
    "run": _parse_run,
    "cancel": lambda f: Cancel(task_id=f.text("task_id", empty=False)),
    "shutdown": lambda f: Shutdown(),
}


def parse_object(data: Any) -> Message:
    """A message from a decoded JSON value. Unknown fields are ignored."""
    if not isinstance(data, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(data).__name__}")
    message_type = data.get("type")
    fields = _Fields(data, str(message_type))
    if not isinstance(message_type, str) or message_type not in _PARSERS:
        raise ProtocolError(f"unknown message type {message_type!r}", fields.task_id, None)
    return _PARSERS[message_type](fields)


def parse_line(line: str | bytes) -> Message:
    """A message from one line of the protocol."""
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from None
    return parse_object(data)


def to_object(message: Message) -> dict[str, Any]:
    return {"type": message.type, **asdict(message)}


def dumps(message: Message) -> str:
    """One protocol line for `message`, without the trailing newline."""
    return json.dumps(to_object(message), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# --- the main loop ------------------------------------------------------------------------------------------------


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


class Runner(Protocol):
    """What the main loop needs from the inference side (implemented by pipeline.Engine)."""

    @property
    def slots(self) -> int: ...

    def ready_message(self) -> Ready: ...

    def run(self, job: Run, report: Callable[[int, int], None], cancelled: threading.Event) -> Done | Error: ...


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


def serve(
    load: Callable[[], Runner], input_fd: int, output: BinaryIO, shutdown_grace_seconds: float = 30.0
) -> int:
    """The worker's main loop. Returns the process exit status: 0 after shutdown or end of input, 1 if loading failed."""
    writer = LineWriter(output)
    inbox: queue.Queue[bytes | None] = queue.Queue()
    threading.Thread(target=_read_lines, args=(input_fd, inbox), name="protocol-reader", daemon=True).start()

    try:
        runner = load()
    except Exception as exc:
        logger.exception("model failed to load")
        writer.send(Fatal(message=f"model failed to load: {exc}"))
        return 1
    writer.send(runner.ready_message())
    logger.info("ready")

    jobs: dict[str, threading.Event] = {}  # the cancel flags of running jobs, by task id
    threads: list[threading.Thread] = []  # every job thread started, joined before returning
    jobs_lock = threading.Lock()

    def run_job(run: Run, cancelled: threading.Event) -> None:
        task_id = run.task_id

        def report(step: int, total: int) -> None:
            writer.send(Progress(task_id=task_id, step=step, total_steps=total))

        try:
            result = runner.run(run, report, cancelled)
        except BaseException as exc:  # Runner.run maps failures itself; this is the last line of defence
            logger.exception("task=%s failed outside the job runner", task_id)
            result = Error(task_id=task_id, kind="internal", message=f"{type(exc).__name__}: {exc}")
        finally:
            with jobs_lock:
                jobs.pop(task_id, None)
        writer.send(result)

    def start(run: Run) -> None:
        with jobs_lock:
            if run.task_id in jobs:
                refusal = f"task {run.task_id} is already running"
            elif len(jobs) >= runner.slots:
                refusal = f"all {runner.slots} slots are busy"
            else:
                refusal = ""
                cancelled = threading.Event()
                thread = threading.Thread(target=run_job, args=(run, cancelled), name=f"task-{run.task_id}", daemon=True)
                jobs[run.task_id] = cancelled
                threads[:] = [t for t in threads if t.is_alive()]
                threads.append(thread)
                thread.start()
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
        started = list(threads)
    # Also the threads of jobs that have just reported their end: they may still be returning.
    deadline = time.monotonic() + shutdown_grace_seconds
    for thread in started:
        thread.join(max(0.0, deadline - time.monotonic()))
    unfinished = [t.name for t in started if t.is_alive()]
    if unfinished:
        logger.warning("exiting with jobs still running after %.0f s: %s", shutdown_grace_seconds, unfinished)
    return 0
