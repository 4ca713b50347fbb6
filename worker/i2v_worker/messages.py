"""The messages of the worker protocol (see worker/protocol/PROTOCOL.md): frozen dataclasses, parsing, serialising.

`parse_line` turns one line into a message (or raises `ProtocolError`), `dumps` turns a message into a line. Unknown
fields are ignored and optional fields have defaults, so either end may add fields without a version bump.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Literal, cast, get_args

from .loras import LoraError, LoraRequest, LoraUsed, parse_loras
from .metadata import ModelInfo

PROTOCOL_VERSION = 1

ErrorKind = Literal["oom", "bad_input", "cancelled", "internal"]
ERROR_KINDS: tuple[str, ...] = get_args(ErrorKind)

Speed = Literal["quality", "fast", "turbo"]
SPEEDS: tuple[str, ...] = get_args(Speed)

# The phases of a job, in the order a job goes through them (`phase` messages).
JobPhase = Literal["encode_prompt", "encode_image", "denoise", "decode", "encode_video"]
PHASES: tuple[str, ...] = get_args(JobPhase)

# The transformer a two-expert model (Wan2.2 A14B) denoises a step with: `transformer` while the timestep is at or
# above the boundary, `transformer_2` below it.
Expert = Literal["high_noise", "low_noise"]
EXPERTS: tuple[str, ...] = get_args(Expert)


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
    cpu_offload: bool = False  # only the running model is on the GPU (the memory plan, or I2V_CPU_OFFLOAD=1)
    vae_tiling: bool = False


@dataclass(frozen=True, kw_only=True)
class SpeedInfo:
    """The speed preset a worker runs and what it turned on for it."""

    preset: Speed = "quality"
    compiled: bool = False  # the transformer's repeated blocks are compiled (torch.compile)
    cache_threshold: float | None = None  # the first-block step cache's threshold; None: no step cache
    fp8: bool = False  # transformer weights and activations in FP8 (torchao)
    lora: str | None = None  # file name of the fused step-distillation LoRA
    infer_steps: int | None = None  # steps every job runs, whatever it asked for; None: the job's own
    guidance_scale: float | None = None  # guidance every job uses; None: the job's own


@dataclass(frozen=True, kw_only=True)
class Ready:
    type: ClassVar[str] = "ready"
    omit_none: ClassVar[frozenset[str]] = frozenset({"ranks", "devices"})
    protocol: int = PROTOCOL_VERSION
    model: ModelInfo
    device: str
    dtype: str
    slots: int
    memory: MemoryInfo
    speed: SpeedInfo = field(default_factory=SpeedInfo)
    # A group (one job on several devices): its processes, and each one's device in rank order; `device` is them
    # joined by "+". None (left out) for a worker of one process, and from workers before groups.
    ranks: int | None = None
    devices: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class Progress:
    type: ClassVar[str] = "progress"
    omit_none: ClassVar[frozenset[str]] = frozenset({"expert"})
    task_id: str
    step: int
    total_steps: int
    expert: Expert | None = None  # two-expert models: the expert that ran this step


@dataclass(frozen=True, kw_only=True)
class Phase:
    """A job has entered `phase`: sent once per phase, in order, before that phase's work."""

    type: ClassVar[str] = "phase"
    task_id: str
    phase: JobPhase


@dataclass(frozen=True, kw_only=True)
class Done:
    type: ClassVar[str] = "done"
    omit_none: ClassVar[frozenset[str]] = frozenset({"model", "guidance_scale_2", "loras"})
    task_id: str
    path: str
    width: int
    height: int
    num_frames: int
    fps: int
    seed: int
    inference_seconds: float
    encode_seconds: float
    infer_steps: int | None = None  # the steps run (a preset may replace the job's); None from older workers
    guidance_scale: float | None = None  # the guidance used, likewise
    model: str | None = None  # the model that made it; None from older workers
    guidance_scale_2: float | None = None  # two-expert models: the low-noise expert's guidance used
    loras: tuple[LoraUsed, ...] | None = None  # the LoRAs the job ran with (the pipeline's set meanwhile)


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
    omit_none: ClassVar[frozenset[str]] = frozenset(
        {"infer_steps", "guidance_scale", "guidance_scale_2", "last_image_path", "model", "loras"}
    )
    task_id: str
    image_path: str
    prompt: str
    negative_prompt: str = ""
    width: int
    height: int
    num_frames: int
    infer_steps: int | None = None  # None: the model's default
    guidance_scale: float | None = None  # None: the model's default
    seed: int
    output_path: str
    last_image_path: str | None = None  # a PNG of width x height the video ends on
    guidance_scale_2: float | None = None  # two-expert models: the low-noise expert's; None: as guidance_scale
    model: str | None = None  # the model the job is for; a worker serving another refuses it
    loras: tuple[LoraRequest, ...] | None = None  # user LoRAs for this job; None or empty: none


@dataclass(frozen=True, kw_only=True)
class Cancel:
    type: ClassVar[str] = "cancel"
    task_id: str


@dataclass(frozen=True, kw_only=True)
class Shutdown:
    type: ClassVar[str] = "shutdown"


FromWorker = Ready | Progress | Phase | Done | Error | Fatal
ToWorker = Run | Cancel | Shutdown
Message = FromWorker | ToWorker


# --- parsing ------------------------------------------------------------------------------------------------------


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

    def optional_text(self, name: str, empty: bool = True) -> str | None:
        return None if self.data.get(name) is None else self.text(name, empty=empty)

    def integer(self, name: str, minimum: int | None = None) -> int:
        value = self.data.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(f"{name!r} must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(f"{name!r} must be at least {minimum}, got {value}")
        return value

    def optional_integer(self, name: str, minimum: int = 0) -> int | None:
        return None if self.data.get(name) is None else self.integer(name, minimum=minimum)

    def number(self, name: str) -> float:
        value = self.data.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self.fail(f"{name!r} must be a number, got {value!r}")
        return float(value)

    def optional_number(self, name: str) -> float | None:
        return None if self.data.get(name) is None else self.number(name)

    def flag(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(f"{name!r} must be true or false, got {value!r}")
        return value

    def mapping(self, name: str) -> dict[str, Any]:
        value = self.data.get(name)
        if not isinstance(value, dict):
            raise self.fail(f"{name!r} must be an object, got {value!r}")
        return value


def _parse_speed(f: _Fields) -> SpeedInfo:
    if f.data.get("speed") is None:  # a worker from before speed presets
        return SpeedInfo()
    s = _Fields(f.mapping("speed"), "ready.speed")
    preset = s.text("preset")
    if preset not in SPEEDS:
        raise s.fail(f"'preset' must be one of {', '.join(SPEEDS)}, got {preset!r}")
    return SpeedInfo(
        preset=cast(Speed, preset),
        compiled=s.flag("compiled", False),
        cache_threshold=s.optional_number("cache_threshold"),
        fp8=s.flag("fp8", False),
        lora=s.optional_text("lora"),
        infer_steps=s.optional_integer("infer_steps", minimum=1),
        guidance_scale=s.optional_number("guidance_scale"),
    )


def _parse_memory(f: _Fields) -> MemoryInfo:
    memory = _Fields(f.mapping("memory"), "ready.memory")
    return MemoryInfo(
        free_bytes=memory.optional_integer("free_bytes"),
        bytes_per_token=memory.optional_integer("bytes_per_token"),
        cpu_offload=memory.flag("cpu_offload", False),
        vae_tiling=memory.flag("vae_tiling", False),
    )


def _parse_ready(f: _Fields) -> Ready:
    try:
        model = ModelInfo.from_dict(f.mapping("model"))
    except ValueError as exc:
        raise f.fail(str(exc)) from None
    return Ready(
        protocol=f.integer("protocol"),
        model=model,
        device=f.text("device", empty=False),
        dtype=f.text("dtype", empty=False),
        slots=f.integer("slots", minimum=1),
        memory=_parse_memory(f),
        speed=_parse_speed(f),
        ranks=f.optional_integer("ranks", minimum=1),
        devices=_parse_devices(f),
    )


def _parse_devices(f: _Fields) -> tuple[str, ...] | None:
    value = f.data.get("devices")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise f.fail(f"'devices' must be a list of device names, got {value!r}")
    return tuple(value)


def _parse_done(f: _Fields) -> Done:
    return Done(
        task_id=f.text("task_id", empty=False),
        path=f.text("path", empty=False),
        width=f.integer("width", minimum=1),
        height=f.integer("height", minimum=1),
        num_frames=f.integer("num_frames", minimum=1),
        fps=f.integer("fps", minimum=1),
        seed=f.integer("seed", minimum=0),
        inference_seconds=f.number("inference_seconds"),
        encode_seconds=f.number("encode_seconds"),
        infer_steps=f.optional_integer("infer_steps", minimum=1),
        guidance_scale=f.optional_number("guidance_scale"),
        model=f.optional_text("model"),
        guidance_scale_2=f.optional_number("guidance_scale_2"),
        loras=_parse_used_loras(f),
    )


def _parse_used_loras(f: _Fields) -> tuple[LoraUsed, ...] | None:
    value = f.data.get("loras")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise f.fail(f"'loras' must be a list of objects, got {value!r}")
    used: list[LoraUsed] = []
    for index, item in enumerate(value):
        lora = _Fields(item, f"{f.message_type}.loras[{index}]")
        used.append(
            LoraUsed(
                name=lora.text("name"), scale=lora.number("scale"), sha256=lora.text("sha256"),
                expert=lora.optional_text("expert"),
            )
        )  # fmt: skip
    return tuple(used)


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
        infer_steps=f.optional_integer("infer_steps", minimum=1),
        guidance_scale=f.optional_number("guidance_scale"),
        seed=f.integer("seed", minimum=0),
        output_path=f.text("output_path", empty=False),
        last_image_path=f.optional_text("last_image_path", empty=False),
        guidance_scale_2=f.optional_number("guidance_scale_2"),
        model=f.optional_text("model", empty=False),
        loras=_parse_run_loras(f),
    )


def _parse_run_loras(f: _Fields) -> tuple[LoraRequest, ...] | None:
    if f.data.get("loras") is None:
        return None
    try:
        return parse_loras(f.data["loras"])
    except LoraError as exc:
        raise f.fail(str(exc)) from None


def _parse_progress(f: _Fields) -> Progress:
    expert = f.optional_text("expert")
    if expert is not None and expert not in EXPERTS:
        raise f.fail(f"'expert' must be one of {', '.join(EXPERTS)}, got {expert!r}")
    return Progress(
        task_id=f.text("task_id", empty=False),
        step=f.integer("step", minimum=0),
        total_steps=f.integer("total_steps", minimum=0),
        expert=cast(Expert | None, expert),
    )


def _parse_phase(f: _Fields) -> Phase:
    phase = f.text("phase")
    if phase not in PHASES:
        raise f.fail(f"'phase' must be one of {', '.join(PHASES)}, got {phase!r}")
    return Phase(task_id=f.text("task_id", empty=False), phase=cast(JobPhase, phase))


_PARSERS: dict[str, Callable[[_Fields], Message]] = {
    "ready": _parse_ready,
    "progress": _parse_progress,
    "phase": _parse_phase,
    "done": _parse_done,
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


# --- serialising --------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON's shapes, at any depth: a dataclass as an object without its `omit_none` fields that are None, tuples
    (`ready.model.sizes`) as lists."""
    if is_dataclass(value) and not isinstance(value, type):
        omit: frozenset[str] = getattr(value, "omit_none", frozenset())
        return {
            item.name: _plain(getattr(value, item.name))
            for item in fields(value)
            if not (getattr(value, item.name) is None and item.name in omit)
        }
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def to_object(message: Message) -> dict[str, Any]:
    """The message as a JSON object. Optional fields that do not apply (`omit_none`, on the message and on the
    objects in it) are left out rather than sent as null, so a message that does not use a newer field reads
    exactly as it did before that field."""
    return {"type": message.type, **_plain(message)}


def dumps(message: Message) -> str:
    """One protocol line for `message`, without the trailing newline."""
    return json.dumps(to_object(message), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
