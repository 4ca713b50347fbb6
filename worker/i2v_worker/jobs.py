"""What the engine takes and gives: a job, its result, the engine's description and its speed plan.

Plain data, without torch, so the main loop and its tests need neither torch nor a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .loras import LoraRequest, LoraUsed
from .messages import Expert, JobPhase, Speed
from .metadata import ModelInfo

StepCallback = Callable[[int, int], None]  # (step, total steps), after every denoising step
PhaseCallback = Callable[[JobPhase], None]  # the phase a job has entered, once per change
ExpertCallback = Callable[[Expert], None]  # two experts: the one a job's steps now run on, once per change


@dataclass(frozen=True, kw_only=True)
class SpeedPlan:
    """What the worker turns on for its preset on its device."""

    preset: Speed
    compile: bool
    cache_threshold: float | None  # None: no step cache
    fp8: bool
    lora_path: str | None
    infer_steps: int | None  # replaces every job's; None: the job's own
    guidance_scale: float | None  # likewise

    @property
    def serial(self) -> bool:
        """Jobs take turns on the transformer: the step cache keeps its state on the shared modules."""
        return self.cache_threshold is not None


@dataclass(frozen=True, kw_only=True)
class Job:
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
    last_image_path: str | None = None  # the frame the video ends on (models that take one)
    guidance_scale_2: float | None = None  # two experts: the low-noise one's; None: as guidance_scale
    model: str | None = None  # the model the job is for; None: whichever the worker serves
    loras: tuple[LoraRequest, ...] = ()  # user LoRAs, active for this job only


@dataclass(frozen=True, kw_only=True)
class GenerationResult:
    """A finished job: the MP4 at `path`, and what was actually run (a preset may replace steps and guidance)."""

    model: str
    path: str
    width: int
    height: int
    num_frames: int
    fps: int
    seed: int
    infer_steps: int
    guidance_scale: float
    inference_seconds: float
    encode_seconds: float
    guidance_scale_2: float | None = None  # two experts: the low-noise one's guidance
    loras: tuple[LoraUsed, ...] | None = None  # the LoRAs it ran with; None: none


@dataclass(frozen=True, kw_only=True)
class EngineInfo:
    model: ModelInfo
    device: str
    dtype: str
    slots: int
    free_bytes: int | None  # free device memory after loading; None on the CPU
    bytes_per_token: int | None
    speed: SpeedPlan
    cpu_offload: bool = False
    vae_tiling: bool = False
    devices: tuple[str, ...] | None = None  # a group: each rank's device, in rank order; None: one process
