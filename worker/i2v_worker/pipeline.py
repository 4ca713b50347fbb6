"""Loads `WanImageToVideoPipeline` once and runs jobs on it, several at a time, without duplicating weights.

One pipeline per process. Each concurrent job runs on its own *view*: a `WanImageToVideoPipeline` object built from
the loaded pipeline's components, sharing every model's weights, but with its own scheduler (schedulers keep
per-run state), its own shallow copy of the VAE (`AutoencoderKLWan` keeps its causal-conv feature cache on the
module object; the copy shares the weights), its own tokenizer copy (a tokenizers-backed tokenizer must not be
called from two threads at once), and its own per-call attributes (`_interrupt`, `_num_timesteps`,
`_guidance_scale`, `_current_timestep` live on the pipeline object).
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .encode import encode_mp4, to_uint8
from .metadata import AREA_720P, ModelInfo, read_model_info
from .protocol import Done, Error, ErrorKind, MemoryInfo, Ready, Run

logger = logging.getLogger("i2v_worker")

OOM_MESSAGE = "out of memory: lower the resolution (image_size) or num_frames"
MAX_MESSAGE_CHARS = 2000


def frame_count(num_frames: int) -> int:
    """The frame count Wan makes for a requested one: 4k + 1 (24 -> 25, 50 -> 49, 81 -> 81, 120 -> 121)."""
    return num_frames // 4 * 4 + 1


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be 0 or 1, got {value!r}")


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Settings:
    model_path: str
    device: str | None  # None: cuda if available, else cpu
    slots: int = 1
    cpu_offload: bool = False
    vae_tiling: bool = False
    torch_threads: int = 1  # per job, on the CPU
    bytes_per_token: int | None = None  # measured peak activation bytes per latent token, if the operator knows it

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        model_path = env.get("I2V_MODEL_PATH", "").strip()
        if not model_path:
            raise ValueError("I2V_MODEL_PATH is not set")
        bytes_per_token = env.get("I2V_BYTES_PER_TOKEN", "").strip()
        return cls(
            model_path=model_path,
            device=env.get("I2V_DEVICE", "").strip() or None,
            slots=_positive_int(env, "I2V_WORKER_SLOTS", 1),
            cpu_offload=_flag(env, "I2V_CPU_OFFLOAD"),
            vae_tiling=_flag(env, "I2V_VAE_TILING"),
            torch_threads=_positive_int(env, "I2V_TORCH_THREADS", 1),
            bytes_per_token=_positive_int(env, "I2V_BYTES_PER_TOKEN", 1) if bytes_per_token else None,
        )


class BadInput(ValueError):
    pass


class Cancelled(Exception):
    def __init__(self, step: int, total: int) -> None:
        super().__init__(f"cancelled at step {step} of {total}")
        self.step = step
        self.total = total


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "DefaultCPUAllocator" in text or "CUDA out of memory" in text
    )


def classify(exc: BaseException) -> tuple[ErrorKind, str]:
    """The protocol error kind and message for a job that raised `exc`."""
    if isinstance(exc, Cancelled):
        return "cancelled", str(exc)
    if isinstance(exc, BadInput):
        return "bad_input", str(exc)
    if is_out_of_memory(exc):
        return "oom", OOM_MESSAGE
    return "internal", f"{type(exc).__name__}: {exc}"[:MAX_MESSAGE_CHARS]


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
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"I2V_DEVICE={requested} but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise RuntimeError(f"unsupported I2V_DEVICE={requested}: use cuda, cuda:N or cpu")
    return device


class Engine:
    """The loaded pipeline and its per-job views."""

    def __init__(self, pipe: Any, info: ModelInfo, device: torch.device, settings: Settings) -> None:
        self.pipe = pipe
        self.info = info
        self.device = device
        self.settings = settings
        self.offload = settings.cpu_offload and device.type == "cuda"
        self._scheduler_class = type(pipe.scheduler)
        self._scheduler_config = pipe.scheduler.config
        self._views: queue.Queue[Any] = queue.Queue()
        if self.offload:
            # Model CPU offload moves whole models between devices around each call, so jobs must not overlap:
            # they take turns on the pipeline itself, whose offload hooks then work as diffusers intends.
            pipe.set_progress_bar_config(disable=True)
            self._views.put(pipe)
        else:
            for _ in range(settings.slots):
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
        info = read_model_info(settings.model_path)
        if device.type == "cpu":
            torch.set_num_threads(settings.torch_threads)
            dtype: Any = torch.float32
        else:
            # The transformer (and the UMT5 text encoder) in bf16; the image encoder and the VAE stay in fp32.
            dtype = {"default": torch.bfloat16, "image_encoder": torch.float32, "vae": torch.float32}
        started = time.monotonic()
        logger.info("loading %s on %s", settings.model_path, device)
        pipe = WanImageToVideoPipeline.from_pretrained(settings.model_path, dtype=dtype)
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
        engine = cls(pipe, info, device, settings)
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

    def ready_message(self) -> Ready:
        free: int | None = None
        if self.device.type == "cuda":
            free = int(torch.cuda.mem_get_info(self.device)[0])
        return Ready(
            model=self.info,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            slots=self.settings.slots,
            memory=MemoryInfo(free_bytes=free, bytes_per_token=self.settings.bytes_per_token),
        )

    def warm_up(self) -> None:
        started = time.monotonic()
        side = self.info.size_multiple * 2
        image = Image.new("RGB", (side, side), (127, 127, 127))
        self.generate(image, "warm-up", "", side, side, 5, 2, 3.0, 0, lambda step, total: None, threading.Event())
        logger.info("warm-up done in %.2f s", time.monotonic() - started)

    def generate(
        self,
        image: Image.Image,
        prompt: str,
        negative_prompt: str,
        width: int,
        height: int,
        num_frames: int,
        steps: int,
        guidance_scale: float,
        seed: int,
        report: Callable[[int, int], None],
        cancelled: threading.Event,
    ) -> np.ndarray:
        """Runs the pipeline on a free view: uint8 frames, shape (frame_count(num_frames), height, width, 3).

        `report(step, steps)` is called after every denoising step. When `cancelled` is set the run stops at the
        next step boundary by raising `Cancelled` from the step callback, so the VAE decode is skipped too.
        """
        if self.device.type == "cpu":
            torch.set_num_threads(self.settings.torch_threads)
        else:
            torch.cuda.set_device(self.device)  # the current device is per thread

        def on_step_end(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancelled.is_set():
                raise Cancelled(index + 1, steps)
            report(index + 1, steps)
            return {}

        view = self._take_view(cancelled, steps)
        try:
            view.scheduler = self._scheduler_class.from_config(self._scheduler_config)
            generator = torch.Generator(device=self.device).manual_seed(seed)
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
                output_type="np",
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=[],
            )
        except BaseException:
            if self.offload:
                view.maybe_free_model_hooks()  # what the pipeline does at the end of a run that completes
            raise
        finally:
            self._views.put(view)
        return to_uint8(output.frames[0])

    def _take_view(self, cancelled: threading.Event, steps: int) -> Any:
        while True:
            if cancelled.is_set():
                raise Cancelled(0, steps)
            try:
                return self._views.get(timeout=0.1)
            except queue.Empty:
                continue

    def run(self, job: Run, report: Callable[[int, int], None], cancelled: threading.Event) -> Done | Error:
        """One whole job: checks, generation, MP4. Never raises; every failure becomes an `Error`."""
        task = job.task_id
        frames_wanted = frame_count(job.num_frames)
        logger.info(
            "task=%s start %dx%d, %d frames, %d steps, guidance %.2f, seed %d",
            task, job.width, job.height, frames_wanted, job.infer_steps, job.guidance_scale, job.seed,
        )  # fmt: skip
        kind: ErrorKind | None = None
        message = ""
        try:
            self._check(job)
            image = load_image(job.image_path, job.width, job.height)
            started = time.monotonic()
            frames = self.generate(
                image, job.prompt, job.negative_prompt, job.width, job.height, job.num_frames,
                job.infer_steps, job.guidance_scale, job.seed, report, cancelled,
            )  # fmt: skip
            inference_seconds = time.monotonic() - started
            started = time.monotonic()
            encode_mp4(frames, job.output_path, self.info.fps)
            encode_seconds = time.monotonic() - started
        except Exception as exc:
            kind, message = classify(exc)
            if kind == "internal":
                logger.exception("task=%s failed", task)
        if kind is not None:
            # The exception and its frames (which may hold large tensors) are gone by now: free the memory.
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            logger.info("task=%s %s: %s", task, kind, message)
            return Error(task_id=task, kind=kind, message=message)
        logger.info(
            "task=%s done: %s (inference %.2f s, encode %.2f s)", task, job.output_path, inference_seconds, encode_seconds
        )
        return Done(
            task_id=task,
            path=job.output_path,
            width=job.width,
            height=job.height,
            num_frames=int(frames.shape[0]),
            fps=self.info.fps,
            seed=job.seed,
            inference_seconds=round(inference_seconds, 3),
            encode_seconds=round(encode_seconds, 3),
        )

    def _check(self, job: Run) -> None:
        m = self.info.size_multiple
        if job.width % m or job.height % m:
            raise BadInput(f"width and height must be multiples of {m}, got {job.width}x{job.height}")
        out_dir = Path(job.output_path).parent
        if not out_dir.is_dir():
            raise BadInput(f"output directory does not exist: {out_dir}")
        if not os.access(out_dir, os.W_OK):
            raise BadInput(f"output directory is not writable: {out_dir}")
