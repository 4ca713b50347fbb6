"""Loads `WanImageToVideoPipeline` once and runs jobs on it, several at a time, without duplicating weights.

One pipeline per process. Each concurrent job runs on its own *view*: a `WanImageToVideoPipeline` object built from
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

from .encode import encode_mp4, to_uint8
from .errors import BadInput, Cancelled, JobError, OutOfMemory
from .jobs import EngineInfo, GenerationResult, Job, PhaseCallback, SpeedPlan, StepCallback
from .metadata import AREA_720P, ModelInfo, read_model_info
from .phases import JobContext, install_hooks
from .settings import ConfigurationError, Settings
from .speed import DistilledFlowScheduler, apply, fp8_quantization, plan

logger = logging.getLogger("i2v_worker")

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


def load_image(path: str, width: int, height: int) -> Image.Image:
    """The job's input image as RGB; it must be exactly width x height."""
    try:
        with Image.open(path) as image:
            if image.size != (width, height):
                raise BadInput(f"image is {image.size[0]}x{image.size[1]}, expected {width}x{height}")
            return image.convert("RGB")
    except FileNotFoundError:
        raise BadInput(f"image not found: {path}") from None
    except BadInput:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(f"image cannot be read: {exc}") from None


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


class Engine:
    """The loaded pipeline and its per-job views."""

    def __init__(
        self, *, pipe: Any, info: ModelInfo, device: torch.device, settings: Settings, speed: SpeedPlan
    ) -> None:
        self.pipe = pipe
        self.info = info
        self.device = device
        self.settings = settings
        self.speed = speed
        self.offload = settings.cpu_offload and device.type == "cuda"
        self._scheduler_class = type(pipe.scheduler)
        self._scheduler_config = pipe.scheduler.config
        self._views: queue.Queue[Any] = queue.Queue()
        install_hooks(pipe)  # on the shared models, before any view: every view runs through them
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

    @classmethod
    def load(cls, settings: Settings) -> Engine:
        from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        device = _resolve_device(settings.device)
        speed = plan(settings, device)  # refuses what the device cannot do before the slow part
        info = read_model_info(settings.model_path)
        if device.type == "cpu":
            torch.set_num_threads(settings.torch_threads)
            dtype: Any = torch.float32
        else:
            # The transformer (and the UMT5 text encoder) in bf16; the image encoder and the VAE stay in fp32.
            dtype = {"default": torch.bfloat16, "image_encoder": torch.float32, "vae": torch.float32}
        options: dict[str, Any] = {"dtype": dtype}
        if speed.fp8:
            options["quantization_config"] = fp8_quantization()
        started = time.monotonic()
        logger.info("loading %s on %s (speed %s)", settings.model_path, device, speed.preset)
        pipe = WanImageToVideoPipeline.from_pretrained(settings.model_path, **options)
        flow_shift = 5.0 if info.native_area >= AREA_720P else 3.0
        pipe.scheduler = UniPCMultistepScheduler.from_config(
            pipe.scheduler.config, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift
        )
        if settings.cpu_offload and device.type == "cuda":
            pipe.enable_model_cpu_offload(device=device)
        else:
            if settings.cpu_offload:
                logger.warning("I2V_CPU_OFFLOAD=1 ignored: the device is the CPU")
            pipe.to(device)
        if settings.vae_tiling:
            pipe.vae.enable_tiling()
        apply(pipe, speed)
        engine = cls(pipe=pipe, info=info, device=device, settings=settings, speed=speed)
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
        return EngineInfo(
            model=self.info,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            slots=self.settings.slots,
            free_bytes=free,
            bytes_per_token=self.settings.bytes_per_token,
            speed=self.speed,
        )

    def warm_sizes(self) -> list[tuple[int, int]]:
        """Frame sizes the warm-up runs. Compiled blocks: the API's two fixed sizes and the native one, so the
        compile (one graph with dynamic shapes) and its checks are done before the first job. Eager: one tiny size."""
        side = self.info.size_multiple * 2
        if not self.speed.compile:
            return [(side, side)]
        native = read_native_size(self.info)
        return list(dict.fromkeys([*FIXED_SIZES, native]))

    def warm_up(self) -> None:
        started = time.monotonic()
        for width, height in self.warm_sizes():
            image = Image.new("RGB", (width, height), (127, 127, 127))
            compiled = self.speed.compile
            self.generate(
                image=image, prompt="warm-up", negative_prompt="", width=width, height=height,
                num_frames=WARM_UP_FRAMES, infer_steps=2, guidance_scale=3.0, seed=0,
                on_step=lambda step, total: None, cancelled=threading.Event(), decode=not compiled,
            )  # fmt: skip
        logger.info("warm-up done in %.2f s", time.monotonic() - started)

    def job_steps(self, infer_steps: int) -> int:
        return self.speed.infer_steps if self.speed.infer_steps is not None else infer_steps

    def job_guidance(self, guidance_scale: float) -> float:
        return self.speed.guidance_scale if self.speed.guidance_scale is not None else guidance_scale

    def generate(
        self,
        *,
        image: Image.Image,
        prompt: str,
        negative_prompt: str,
        width: int,
        height: int,
        num_frames: int,
        infer_steps: int,
        guidance_scale: float,
        seed: int,
        on_step: StepCallback,
        cancelled: threading.Event,
        on_phase: PhaseCallback | None = None,
        decode: bool = True,
    ) -> np.ndarray:
        """Runs the pipeline on a free view: uint8 frames, shape (frame_count(num_frames), height, width, 3).

        The preset's steps and guidance replace `infer_steps` and `guidance_scale` where it has its own.
        `on_step(step, steps)` is called after every denoising step, `on_phase(phase)` as the run enters each phase
        (`encode_prompt`, `encode_image`, `denoise`, `decode`). When `cancelled` is set the run stops by raising
        `Cancelled`: at the next step boundary while denoising (from the step callback), inside the text and image
        encoders and the VAE otherwise (from the hooks of phases.py). `decode=False` (the warm-up) stops after
        denoising and returns an empty array.
        """
        job = JobContext(cancelled, self.job_steps(infer_steps), on_phase)
        with job.active():
            return self._generate(
                job, image=image, prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                num_frames=num_frames, guidance_scale=guidance_scale, seed=seed, on_step=on_step, decode=decode,
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
        seed: int,
        on_step: StepCallback,
        decode: bool,
    ) -> np.ndarray:
        """`generate` within `job`, which is the calling thread's active context."""
        steps = job.total_steps
        guidance = self.job_guidance(guidance_scale)
        cancelled = job.cancelled
        if self.device.type == "cpu":
            torch.set_num_threads(self.settings.torch_threads)
        else:
            torch.cuda.set_device(self.device)  # the current device is per thread

        def on_step_end(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            job.step = index + 1
            if cancelled.is_set():
                raise Cancelled(index + 1, steps)
            on_step(index + 1, steps)
            return {}

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
                guidance_scale=guidance,
                generator=generator,
                output_type="np" if decode else "latent",
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=[],
            )
        except BaseException:
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
    ) -> GenerationResult:
        """One whole job: checks, generation, MP4, with its phases reported to `on_phase` as it enters them (the
        last is `encode_video`). Raises `JobError` for the failures a user is told about; after any failure the
        memory the job held is freed, so the worker goes on serving."""
        try:
            context = JobContext(cancelled, self.job_steps(job.infer_steps), on_phase)
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
        logger.info(
            "task=%s start %dx%d, %d frames, %d steps, guidance %.2f, seed %d",
            job.task_id, job.width, job.height, frame_count(job.num_frames), steps, guidance, job.seed,
        )  # fmt: skip
        self._check(job)
        image = load_image(job.image_path, job.width, job.height)
        started = time.monotonic()
        frames = self._generate(
            context, image=image, prompt=job.prompt, negative_prompt=job.negative_prompt, width=job.width,
            height=job.height, num_frames=job.num_frames, guidance_scale=guidance, seed=job.seed, on_step=on_step,
            decode=True,
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
            path=job.output_path,
            width=job.width,
            height=job.height,
            num_frames=int(frames.shape[0]),
            fps=self.info.fps,
            seed=job.seed,
            infer_steps=steps,
            guidance_scale=guidance,
            inference_seconds=round(inference_seconds, 3),
            encode_seconds=round(encode_seconds, 3),
        )

    def _check(self, job: Job) -> None:
        m = self.info.size_multiple
        if job.width % m or job.height % m:
            raise BadInput(f"width and height must be multiples of {m}, got {job.width}x{job.height}")
        out_dir = Path(job.output_path).parent
        if not out_dir.is_dir():
            raise BadInput(f"output directory does not exist: {out_dir}")
        if not os.access(out_dir, os.W_OK):
            raise BadInput(f"output directory is not writable: {out_dir}")


def read_native_size(info: ModelInfo) -> tuple[int, int]:
    """The landscape 16:9-ish frame of the model's native area, as `auto` makes it for a 16:9 picture."""
    aspect = 9 / 16
    m = info.size_multiple
    height = max(m, round((info.native_area * aspect) ** 0.5) // m * m)
    width = max(m, round((info.native_area / aspect) ** 0.5) // m * m)
    return width, height
