"""Loads `WanImageToVideoPipeline` once and runs jobs on it, several at a time, without duplicating weights.

One pipeline per process, of one model of models.py (checked against its checkpoint by checkpoint.py). Each concurrent job runs on its own *view*: a `WanImageToVideoPipeline` object built from
the loaded pipeline's components, sharing every model's weights, but with its own scheduler (schedulers keep
per-run state), its own shallow copy of the VAE (`AutoencoderKLWan` keeps its causal-conv feature cache on the
module object; the copy shares the weights), its own tokenizer copy (a tokenizers-backed tokenizer must not be
called from two threads at once), and its own per-call attributes (`_interrupt`, `_num_timesteps`,
`_guidance_scale`, `_current_timestep` live on the pipeline object).

`Engine.run` returns a `GenerationResult` or raises a `JobError` (`BadInput`, `Cancelled`, `OutOfMemory`); anything
else it raises is a bug of ours or of a library, reported as an internal error. It reports the job's phases as it
enters them, and a cancel stops the job inside any phase (phases.py), not only between denoising steps.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .adapters import LoraAdapters
from .checkpoint import describe, resolve
from .encode import encode_mp4, to_uint8
from .errors import BadInput, Cancelled, JobError, OutOfMemory, describe_failure
from .group import Group, GroupJob, sequence_problem
from .jobs import EngineInfo, ExpertCallback, GenerationResult, Job, PhaseCallback, SpeedPlan, StepCallback
from .metadata import ModelInfo
from .models import GIB, ModelSpec
from .phases import JobContext, install_hooks
from .settings import ConfigurationError, Settings
from .speed import DistilledFlowScheduler, apply, fp8_quantization, plan

logger = logging.getLogger("i2v_worker")

# Test-only: a directory where each job's float frames (before uint8 and the MP4) are saved as <task_id>.npy, so
# that tests can compare two runs exactly.
FRAMES_DIR_ENV = "I2V_TEST_FRAMES_DIR"
FIXED_SIZES = ((832, 480), (480, 832))  # the API's two fixed frame sizes, served for every model
WARM_UP_FRAMES = 5


def frame_count(num_frames: int) -> int:
    """The frame count Wan makes for a requested one: 4k + 1 (24 -> 25, 50 -> 49, 81 -> 81, 120 -> 121)."""
    return num_frames // 4 * 4 + 1


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "DefaultCPUAllocator" in text or "CUDA out of memory" in text
    )


def load_image(path: str, width: int, height: int, what: str = "image") -> Image.Image:
    """A job's input image (`what`: the first or the last) as RGB; it must be exactly width x height."""
    try:
        with Image.open(path) as image:
            if image.size != (width, height):
                raise BadInput(f"{what} is {image.size[0]}x{image.size[1]}, expected {width}x{height}")
            return image.convert("RGB")
    except FileNotFoundError:
        raise BadInput(f"{what} not found: {path}") from None
    except BadInput:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(f"{what} cannot be read: {exc}") from None


def _resolve_device(requested: str | None) -> torch.device:
    if requested is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigurationError(f"unsupported I2V_DEVICE={requested}: use cuda, cuda:N or cpu") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError(f"I2V_DEVICE={requested} but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise ConfigurationError(f"unsupported I2V_DEVICE={requested}: use cuda, cuda:N or cpu")
    return device


def plan_offload(spec: ModelSpec, settings: Settings, device: torch.device) -> bool:
    """Whether the model runs with model CPU offload: as I2V_CPU_OFFLOAD says, or (auto) where its memory plan
    says the card is too small to keep every model on it."""
    if device.type != "cuda":
        if settings.cpu_offload == "on":
            logger.warning("I2V_CPU_OFFLOAD=1 ignored: the device is the CPU")
        return False
    if settings.cpu_offload != "auto":
        return settings.cpu_offload == "on"
    if spec.memory is None:
        return False
    total_gib = torch.cuda.get_device_properties(device).total_memory / GIB
    offload = spec.memory.needs_offload(total_gib)
    logger.info(
        "memory plan for %s on %.0f GiB: %s (estimated peak %.0f GiB resident, %.0f GiB offloaded)",
        spec.id, total_gib, "model CPU offload" if offload else "every model on the GPU",
        spec.memory.resident_gib, spec.memory.offload_gib,
    )  # fmt: skip
    return offload


class Engine:
    """The loaded pipeline and its per-job views."""

    def __init__(
        self,
        *,
        pipe: Any,
        spec: ModelSpec,
        info: ModelInfo,
        device: torch.device,
        settings: Settings,
        speed: SpeedPlan,
        offload: bool = False,
        group: Group | None = None,
    ) -> None:
        self.pipe = pipe
        self.group = group
        self.spec = spec
        self.info = info
        self.device = device
        self.settings = settings
        self.speed = speed
        self.offload = offload
        self._scheduler_class = type(pipe.scheduler)
        self._scheduler_config = pipe.scheduler.config
        self._views: queue.Queue[Any] = queue.Queue()
        self.loras = LoraAdapters(
            pipe, experts=info.experts, max_rank=settings.lora_max_rank, cache_size=settings.lora_cache,
            compiled=speed.compile,
        )  # fmt: skip
        install_hooks(pipe)  # on the shared models, before any view: every view runs through them
        if group is not None:
            group.install(pipe)  # after the phase hooks: a cancel agreed there is reported in `denoise`
        if self.offload:
            # Model CPU offload moves whole models between devices around each call, so jobs must not overlap:
            # they take turns on the pipeline itself, whose offload hooks then work as diffusers intends.
            pipe.set_progress_bar_config(disable=True)
            self._views.put(pipe)
        else:
            for _ in range(1 if speed.serial else settings.slots):
                self._views.put(self._make_view())

    @property
    def slots(self) -> int:
        return self.settings.slots

    @property
    def experts(self) -> int:
        return self.info.experts

    @classmethod
    def load(cls, settings: Settings, *, group: Group | None = None) -> Engine:
        """The loaded, warm engine. In a group (group.py) every rank calls this in step: the warm-up's transformer
        calls are already parallel."""
        from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        device = _resolve_device(settings.device if group is None else group.device)
        plan(settings, device)  # refuses what the device cannot do before a checkpoint is built or downloaded
        resolved = resolve(settings)  # refuses an unknown model, a corrupt or a mismatched checkpoint
        spec = resolved.spec
        speed = plan(settings, device, spec)
        info = describe(spec, resolved.facts)
        offload = plan_offload(spec, settings, device)
        if device.type == "cpu":
            torch.set_num_threads(settings.torch_threads)
            dtype: Any = torch.float32
        else:
            # The transformers (and the UMT5 text encoder) in bf16; the image encoder and the VAE stay in fp32.
            dtype = {"default": torch.bfloat16, "image_encoder": torch.float32, "vae": torch.float32}
        options: dict[str, Any] = {"dtype": dtype}
        if speed.fp8:
            options["quantization_config"] = fp8_quantization()
        started = time.monotonic()
        logger.info("loading %s from %s on %s (speed %s)", spec.id, resolved.path, device, speed.preset)
        try:
            pipe = WanImageToVideoPipeline.from_pretrained(str(resolved.path), **options)
        except Exception as exc:  # whatever the loaders raise on these files, the files are the cause
            if is_out_of_memory(exc):
                raise
            raise ConfigurationError(
                f"checkpoint {resolved.path} cannot be loaded as {spec.id}: {describe_failure(exc)}"
            ) from None
        pipe.scheduler = UniPCMultistepScheduler.from_config(
            pipe.scheduler.config, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=spec.flow_shift
        )
        if offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        if settings.vae_tiling:
            pipe.vae.enable_tiling()
        apply(pipe, speed)
        if group is not None:
            group.connect()  # after loading, which may take the ranks different times
            group.parallelize(pipe)
        engine = cls(
            pipe=pipe, spec=spec, info=info, device=device, settings=settings, speed=speed, offload=offload,
            group=group,
        )  # fmt: skip
        logger.info("loaded %s in %.1f s; warming up", info.id, time.monotonic() - started)
        engine.warm_up()
        return engine

    def _make_view(self) -> Any:
        base = self.pipe
        components = dict(base.components)
        components["vae"] = copy.copy(base.vae)  # shares the weights, not the feature cache
        components["tokenizer"] = copy.deepcopy(base.tokenizer)
        components["scheduler"] = self._scheduler_class.from_config(self._scheduler_config)
        view = type(base)(
            **components,
            boundary_ratio=base.config.boundary_ratio,
            expand_timesteps=base.config.expand_timesteps,
        )
        view.set_progress_bar_config(disable=True)
        return view

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.transformer.dtype

    def describe(self) -> EngineInfo:
        free: int | None = None
        if self.device.type == "cuda":
            free = int(torch.cuda.mem_get_info(self.device)[0])
        bytes_per_token = self.settings.bytes_per_token
        if bytes_per_token is None and self.device.type == "cuda":
            bytes_per_token = self.spec.bytes_per_token(offload=self.offload)
        group = self.group
        return EngineInfo(
            model=self.info,
            device=str(self.device) if group is None else group.joined,
            dtype=str(self.dtype).removeprefix("torch."),
            slots=self.settings.slots,
            free_bytes=free,
            bytes_per_token=bytes_per_token,
            speed=self.speed,
            cpu_offload=self.offload,
            vae_tiling=self.settings.vae_tiling,
            devices=None if group is None else group.devices,
        )

    def warm_sizes(self) -> list[tuple[int, int]]:
        """Frame sizes the warm-up runs. Compiled blocks: the API's two fixed sizes and the model's own, so the
        compile (one graph with dynamic shapes) and its checks are done before the first job. Eager: one tiny size."""
        # In a group the warm-up's sequence must split evenly among the ranks: a square of `ranks` patches a side.
        side = self.info.size_multiple * max(2, self.group.ranks if self.group is not None else 2)
        if not self.speed.compile:
            return [(side, side)]
        return list(dict.fromkeys([*FIXED_SIZES, *self.spec.sizes]))

    def warm_up(self) -> None:
        started = time.monotonic()
        for width, height in self.warm_sizes():
            image = Image.new("RGB", (width, height), (127, 127, 127))
            compiled = self.speed.compile
            # Two steps: with two experts, the first runs on the high-noise one and the second on the low-noise one.
            self.generate(
                image=image, prompt="warm-up", negative_prompt="", width=width, height=height,
                num_frames=WARM_UP_FRAMES, infer_steps=2, guidance_scale=3.0, seed=0,
                on_step=lambda step, total: None, cancelled=threading.Event(), decode=not compiled,
                last_image=image if self.spec.last_image == "required" else None,
            )  # fmt: skip
        logger.info("warm-up done in %.2f s", time.monotonic() - started)

    def job_steps(self, infer_steps: int | None) -> int:
        if self.speed.infer_steps is not None:
            return self.speed.infer_steps
        return infer_steps if infer_steps is not None else self.spec.infer_steps

    def job_guidance(self, guidance_scale: float | None) -> float:
        if self.speed.guidance_scale is not None:
            return self.speed.guidance_scale
        return guidance_scale if guidance_scale is not None else self.spec.guidance_scale

    def job_guidance_2(self, guidance_scale: float | None, guidance_scale_2: float | None) -> float | None:
        """The low-noise expert's guidance: the job's, else the job's `guidance_scale` (one knob for both experts, as
        diffusers has it), else the model's. None for a model with one transformer."""
        if self.experts < 2:
            return None
        if guidance_scale_2 is not None:
            return guidance_scale_2
        return guidance_scale if guidance_scale is not None else self.spec.guidance_scale_2

    def generate(
        self,
        *,
        image: Image.Image,
        prompt: str,
        negative_prompt: str,
        width: int,
        height: int,
        num_frames: int,
        infer_steps: int | None,
        guidance_scale: float | None,
        seed: int,
        on_step: StepCallback,
        cancelled: threading.Event,
        on_phase: PhaseCallback | None = None,
        decode: bool = True,
        last_image: Image.Image | None = None,
        guidance_scale_2: float | None = None,
        on_expert: ExpertCallback | None = None,
    ) -> np.ndarray:
        """Runs the pipeline on a free view: uint8 frames, shape (frame_count(num_frames), height, width, 3).

        The preset's steps and guidance replace `infer_steps` and `guidance_scale` where it has its own; None takes
        the model's defaults. `last_image` is the frame the video ends on (models that take one). `on_step(step,
        steps)` is called after every denoising step, `on_phase(phase)` as the run enters each phase
        (`encode_prompt`, `encode_image`, `denoise`, `decode`), and with two experts `on_expert(expert)` as the
        steps move to an expert, before that step's `on_step`. When `cancelled` is set the run stops by raising
        `Cancelled`: at the next step boundary while denoising (from the step callback), inside the text and image
        encoders and the VAE otherwise (from the hooks of phases.py). `decode=False` (the warm-up) stops after
        denoising and returns an empty array.
        """
        job = JobContext(cancelled, self.job_steps(infer_steps), on_phase, on_expert if self.experts > 1 else None)
        with job.active():
            return self._generate(
                job, image=image, prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                num_frames=num_frames, guidance_scale=self.job_guidance(guidance_scale),
                guidance_scale_2=self.job_guidance_2(guidance_scale, guidance_scale_2), seed=seed, on_step=on_step,
                decode=decode, last_image=last_image,
            )  # fmt: skip

    def _generate(
        self,
        job: JobContext,
        *,
        image: Image.Image,
        prompt: str,
        negative_prompt: str,
        width: int,
        height: int,
        num_frames: int,
        guidance_scale: float,
        guidance_scale_2: float | None,
        seed: int,
        on_step: StepCallback,
        decode: bool,
        last_image: Image.Image | None,
        task_id: str | None = None,
    ) -> np.ndarray:
        """`generate` within `job`, which is the calling thread's active context; guidance as resolved."""
        steps = job.total_steps
        cancelled = job.cancelled
        if self.device.type == "cpu":
            torch.set_num_threads(self.settings.torch_threads)
        else:
            torch.cuda.set_device(self.device)  # the current device is per thread

        group = self.group

        def on_step_end(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            job.step = index + 1
            # A group's cancel is agreed by all ranks before the next transformer call (group.py), not taken here.
            if cancelled.is_set() and group is None:
                raise Cancelled(index + 1, steps)
            on_step(index + 1, steps)
            return {}

        # diffusers refuses a second guidance for a one-transformer pipeline, and a last image is one more input.
        extra: dict[str, Any] = {}
        if guidance_scale_2 is not None:
            extra["guidance_scale_2"] = guidance_scale_2
        if last_image is not None:
            extra["last_image"] = last_image
        if group is not None:
            group.begin()
            decode = decode and group.leader  # only rank 0 decodes; the others stop at the latents
        view = self._take_view(cancelled, steps)
        try:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            scheduler = self._scheduler_class.from_config(self._scheduler_config)
            if isinstance(scheduler, DistilledFlowScheduler):
                scheduler.generator = generator
            view.scheduler = scheduler
            output = view(
                image=image,
                prompt=prompt,
                negative_prompt=negative_prompt,
                height=height,
                width=width,
                num_frames=frame_count(num_frames),
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=generator,
                output_type="np" if decode else "latent",
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=[],
                **extra,
            )
        except BaseException as exc:
            if group is not None:
                group.failed(exc, job.phase)
            # What the pipeline does at the end of a run that completes: offload hooks back in place, the step
            # cache's state cleared for the next job. A run stopped inside the VAE leaves its causal-conv feature
            # cache (the view's own) full of activations: dropped too.
            view.maybe_free_model_hooks()
            if hasattr(view.vae, "clear_cache"):
                view.vae.clear_cache()
            raise
        finally:
            self._views.put(view)
        if not decode:
            return np.empty((0, height, width, 3), dtype=np.uint8)
        if task_id is not None and (keep := os.environ.get(FRAMES_DIR_ENV)):
            np.save(Path(keep) / f"{task_id}.npy", output.frames[0])
        return to_uint8(output.frames[0])

    def _take_view(self, cancelled: threading.Event, steps: int) -> Any:
        while True:
            if cancelled.is_set():
                raise Cancelled(0, steps)
            try:
                return self._views.get(timeout=0.1)
            except queue.Empty:
                continue

    def run(
        self,
        job: Job,
        *,
        on_step: StepCallback,
        cancelled: threading.Event,
        on_phase: PhaseCallback | None = None,
        on_expert: ExpertCallback | None = None,
    ) -> GenerationResult:
        """One whole job: checks, generation, MP4, with its phases reported to `on_phase` as it enters them (the
        last is `encode_video`) and, with two experts, the expert its steps move to reported to `on_expert`.
        Raises `JobError` for the failures a user is told about; after any failure the memory the job held is
        freed, so the worker goes on serving."""
        try:
            context = JobContext(
                cancelled, self.job_steps(job.infer_steps), on_phase, on_expert if self.experts > 1 else None
            )
            with context.active():
                return self._run(job, context, on_step=on_step)
        except Exception as exc:
            if not isinstance(exc, JobError) and not is_out_of_memory(exc):
                logger.exception("task=%s failed", job.task_id)
            # The traceback holds the frames of the failed run, and with them its tensors: drop it, then free.
            exc.__traceback__ = None
            failure: Exception = OutOfMemory() if is_out_of_memory(exc) else exc
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        logger.info("task=%s failed: %s", job.task_id, failure)
        raise failure

    def _run(self, job: Job, context: JobContext, *, on_step: StepCallback) -> GenerationResult:
        steps = context.total_steps
        guidance = self.job_guidance(job.guidance_scale)
        guidance_2 = self.job_guidance_2(job.guidance_scale, job.guidance_scale_2)
        logger.info(
            "task=%s start %dx%d, %d frames, %d steps, guidance %.2f%s, seed %d%s",
            job.task_id, job.width, job.height, frame_count(job.num_frames), steps, guidance,
            "" if guidance_2 is None else f"/{guidance_2:.2f}", job.seed,
            ", last image" if job.last_image_path else "",
        )  # fmt: skip
        self._check(job)
        image = load_image(job.image_path, job.width, job.height)
        last_image = None
        if job.last_image_path is not None:
            last_image = load_image(job.last_image_path, job.width, job.height, what="last image")
        loras = self.loras.prepare(job.loras)
        started = time.monotonic()
        if self.group is not None:
            self.group.send(
                GroupJob(
                    task_id=job.task_id, image=image, last_image=last_image, prompt=job.prompt,
                    negative_prompt=job.negative_prompt, width=job.width, height=job.height,
                    num_frames=job.num_frames, infer_steps=steps, guidance_scale=guidance,
                    guidance_scale_2=guidance_2, seed=job.seed,
                )
            )  # fmt: skip
        # The active adapters are the shared transformer's: the job waits until no job of another set runs.
        with self.loras.active_for(loras, cancelled=context.cancelled, steps=steps):
            frames = self._generate(
                context, image=image, prompt=job.prompt, negative_prompt=job.negative_prompt, width=job.width,
                height=job.height, num_frames=job.num_frames, guidance_scale=guidance, guidance_scale_2=guidance_2,
                seed=job.seed, on_step=on_step, decode=True, last_image=last_image, task_id=job.task_id,
            )  # fmt: skip
        inference_seconds = time.monotonic() - started
        started = time.monotonic()
        context.enter("encode_video")
        context.check()
        encode_mp4(frames, job.output_path, self.info.fps, check=context.check)
        encode_seconds = time.monotonic() - started
        logger.info(
            "task=%s done: %s (inference %.2f s, encode %.2f s)",
            job.task_id, job.output_path, inference_seconds, encode_seconds,
        )  # fmt: skip
        return GenerationResult(
            model=self.info.id,
            path=job.output_path,
            width=job.width,
            height=job.height,
            num_frames=int(frames.shape[0]),
            fps=self.info.fps,
            seed=job.seed,
            infer_steps=steps,
            guidance_scale=guidance,
            guidance_scale_2=guidance_2,
            loras=loras.used or None,
            inference_seconds=round(inference_seconds, 3),
            encode_seconds=round(encode_seconds, 3),
        )

    def _check(self, job: Job) -> None:
        """Refuses, before any work, a job this model cannot make; each message names the field."""
        spec = self.spec
        m = self.info.size_multiple
        if job.width % m or job.height % m:
            raise BadInput(f"width and height must be multiples of {m}, got {job.width}x{job.height}")
        made = frame_count(job.num_frames)
        if made > spec.max_frames:
            raise BadInput(
                f"num_frames {job.num_frames} makes {made} frames; {spec.id} makes at most {spec.max_frames}"
            )
        if job.last_image_path is not None and spec.last_image == "none":
            raise BadInput(f"last_image_path: {spec.id} cannot end on a given frame, it takes a first frame only")
        if job.last_image_path is None and spec.last_image == "required":
            raise BadInput(f"last_image_path is required: {spec.id} makes a video from a first and a last frame")
        if job.guidance_scale_2 is not None and self.experts < 2:
            raise BadInput(f"guidance_scale_2 is for models with two experts; {spec.id} has one transformer")
        if self.group is not None:
            uneven = sequence_problem(
                width=job.width, height=job.height, frames=made, size_multiple=m, ranks=self.group.ranks
            )
            if uneven is not None:
                raise BadInput(uneven)
            if job.loras:
                # The other ranks would have to load and switch the same adapters in step; not built yet.
                raise BadInput("loras: a worker group (several devices for one job) does not take LoRAs yet")
        out_dir = Path(job.output_path).parent
        if not out_dir.is_dir():
            raise BadInput(f"output directory does not exist: {out_dir}")
        if not os.access(out_dir, os.W_OK):
            raise BadInput(f"output directory is not writable: {out_dir}")
