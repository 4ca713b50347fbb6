"""Speed presets on the demo model on the CPU: settings, refusals, compile, the step cache, the turbo LoRA.

Tolerances are on uint8 frames of the demo model (random weights, fp32 on the CPU). PSNR is against the eager,
cache-free `quality` frames of the same job (seed, image, prompt).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import HEIGHT, WIDTH, Recorder, make_job, needs_cxx, needs_ffmpeg
from PIL import Image

from i2v_worker import demo
from i2v_worker.jobs import GenerationResult
from i2v_worker.models import MODELS
from i2v_worker.pipeline import Engine
from i2v_worker.settings import ConfigurationError, Settings
from i2v_worker.speed import TURBO_STEPS, fp8_support, plan

STEPS = 10
COMPILED_MIN_PSNR = 50.0  # compiled vs eager: fp32 kernels fused differently, nothing else
CACHED_MIN_PSNR = 40.0  # step cache at threshold 0.05 vs none (measured ~53 dB on the demo)
CACHE_THRESHOLD = 0.05


def generate(engine: Engine, *, steps: int = STEPS, width: int = WIDTH, height: int = HEIGHT, num_frames: int = 9,
             report: Callable[[int, int], None] | None = None) -> np.ndarray:  # fmt: skip
    return engine.generate(
        image=Image.new("RGB", (width, height), (200, 120, 40)), prompt="a cat dancing", negative_prompt="blurry",
        width=width, height=height, num_frames=num_frames, infer_steps=steps, guidance_scale=3.0, seed=7,
        on_step=report or (lambda step, total: None), cancelled=threading.Event(),
    )  # fmt: skip


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def reference(engine: Engine) -> np.ndarray:
    """The eager, cache-free frames every preset is compared with."""
    return generate(engine)


def load(checkpoint: Path, **settings: Any) -> Engine:
    return Engine.load(Settings(model_path=str(checkpoint), device="cpu", **settings))


class BlockCalls:
    """Counts the forwards that really ran in the first and the last transformer block (their attention runs only
    when the block computes; a block the step cache skips returns without it)."""

    def __init__(self, transformer: Any) -> None:
        self.head = 0
        self.tail = 0
        self.blocks = len(transformer.blocks)
        self._handles = [
            transformer.blocks[0].attn1.register_forward_pre_hook(lambda module, args: self._count("head")),
            transformer.blocks[-1].attn1.register_forward_pre_hook(lambda module, args: self._count("tail")),
        ]

    def _count(self, which: str) -> None:
        setattr(self, which, getattr(self, which) + 1)

    @property
    def skipped_blocks(self) -> int:
        """Blocks the cache skipped: every block after the first, in each transformer call the tail did not run."""
        return (self.head - self.tail) * (self.blocks - 1)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


# --- settings and refusals ----------------------------------------------------------------------------------------


def test_speed_settings_from_env() -> None:
    settings = Settings.from_env(
        {"I2V_MODEL_PATH": "/m", "I2V_SPEED": "Fast", "I2V_COMPILE": "0", "I2V_CACHE_THRESHOLD": "0.1",
         "I2V_FP8": "auto", "I2V_LORA_PATH": " /l.safetensors "}
    )  # fmt: skip
    assert (settings.speed, settings.compile, settings.cache_threshold, settings.fp8, settings.lora_path) == (
        "fast", "off", 0.1, "auto", "/l.safetensors",
    )  # fmt: skip
    defaults = Settings.from_env({"I2V_MODEL_PATH": "/m"})
    assert (defaults.speed, defaults.compile, defaults.cache_threshold, defaults.fp8, defaults.lora_path) == (
        "quality", "auto", 0.05, "auto", None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"I2V_SPEED": "ludicrous"}, "I2V_SPEED must be one of quality, fast, turbo"),
        ({"I2V_COMPILE": "sometimes"}, "I2V_COMPILE must be auto, 0 or 1"),
        ({"I2V_CACHE_THRESHOLD": "-0.1"}, "I2V_CACHE_THRESHOLD must be a number from 0 to 1"),
        ({"I2V_CACHE_THRESHOLD": "nan"}, "I2V_CACHE_THRESHOLD must be a number from 0 to 1"),
        ({"I2V_FP8": "maybe"}, "I2V_FP8 must be auto, 0 or 1"),
    ],
)
def test_bad_speed_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env({"I2V_MODEL_PATH": "/m", **env})


def test_plans_on_the_cpu(tmp_path: Path, demo_lora: Path) -> None:
    cpu = torch.device("cpu")
    quality = plan(Settings(model_path="/m"), cpu)
    assert (quality.compile, quality.cache_threshold, quality.fp8, quality.infer_steps, quality.serial) == (
        False, None, False, None, False,
    )  # fmt: skip
    assert plan(Settings(model_path="/m", compile="on"), cpu).compile
    fast = plan(Settings(model_path="/m", speed="fast", cache_threshold=0.2), cpu)
    assert (fast.cache_threshold, fast.fp8, fast.serial) == (0.2, False, True)  # no FP8 on a CPU, cache only
    turbo = plan(Settings(model_path="/m", speed="turbo", lora_path=str(demo_lora)), cpu)
    assert (turbo.lora_path, turbo.infer_steps, turbo.guidance_scale) == (str(demo_lora), 4, 1.0)


def test_impossible_presets_are_refused(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    with pytest.raises(ConfigurationError, match="I2V_FP8=1 cannot run here: the device is cpu"):
        plan(Settings(model_path="/m", speed="fast", fp8="on"), cpu)
    with pytest.raises(ConfigurationError, match="I2V_FP8=1 belongs to I2V_SPEED=fast"):
        plan(Settings(model_path="/m", speed="quality", fp8="on"), cpu)
    with pytest.raises(ConfigurationError, match="I2V_SPEED=turbo needs I2V_LORA_PATH"):
        plan(Settings(model_path="/m", speed="turbo"), cpu)
    for model in ("wan2.2-i2v-a14b", "wan2.2-ti2v-5b-demo", "wan2.1-flf2v-14b-720p"):
        with pytest.raises(ConfigurationError, match=f"turbo is not available for {model}: .* Wan2.1 I2V"):
            plan(Settings(model_path="/m", speed="turbo", lora_path="/l.safetensors"), cpu, MODELS[model])
    with pytest.raises(ConfigurationError, match="no such file"):
        plan(Settings(model_path="/m", speed="turbo", lora_path=str(tmp_path / "none.safetensors")), cpu)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigurationError, match="not a safetensors file"):
        plan(Settings(model_path="/m", speed="turbo", lora_path=str(junk)), cpu)
    from safetensors.torch import save_file

    weights = tmp_path / "weights.safetensors"
    save_file({"blocks.0.weight": torch.zeros(2, 2)}, str(weights))
    with pytest.raises(ConfigurationError, match="no LoRA weights in it"):
        plan(Settings(model_path="/m", speed="turbo", lora_path=str(weights)), cpu)


def test_fp8_needs_compute_capability_8_9(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself, with the GPU's answers faked: an A100 (8.0) is refused, an H100 (9.0) is not."""
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    reason = fp8_support(gpu)
    assert reason is not None and "compute capability 8.0" in reason and "8.9" in reason
    with pytest.raises(ConfigurationError, match=r"compute capability 8\.0"):
        plan(Settings(model_path="/m", speed="fast", fp8="on"), gpu)
    assert not plan(Settings(model_path="/m", speed="fast"), gpu).fp8  # auto: the cache alone
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert fp8_support(gpu) is None
    assert plan(Settings(model_path="/m", speed="fast"), gpu).fp8
    assert not plan(Settings(model_path="/m", speed="fast", fp8="off"), gpu).fp8


# --- quality: regional compilation --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(demo_checkpoint: Path) -> Iterator[Engine]:
    yield load(demo_checkpoint, compile="on")
    torch._dynamo.reset()


@needs_cxx
def test_compiled_blocks_match_eager_within_tolerance(compiled: Engine, reference: np.ndarray) -> None:
    blocks = list(compiled.pipe.transformer.blocks)
    assert blocks and all(block._compiled_call_impl is not None for block in blocks)
    assert compiled.pipe.transformer._compiled_call_impl is None  # regional: the blocks only
    frames = generate(compiled)
    assert frames.shape == reference.shape
    assert psnr(frames, reference) >= COMPILED_MIN_PSNR, psnr(frames, reference)
    assert int(np.abs(frames.astype(int) - reference.astype(int)).max()) <= 8


@needs_cxx
def test_compiled_engine_serves_a_new_size_without_recompiling(compiled: Engine) -> None:
    """The warm-up compiled one graph with dynamic shapes: a size and frame count it never saw reuse it."""
    with torch._dynamo.config.patch(error_on_recompile=True):
        frames = generate(compiled, steps=2, width=128, height=112, num_frames=13)
    assert frames.shape == (13, 112, 128, 3)


# --- fast: the step cache -----------------------------------------------------------------------------------------


def test_step_cache_hooks_every_block_and_skips_blocks(demo_checkpoint: Path, reference: np.ndarray) -> None:
    from diffusers.hooks import HookRegistry

    fast = load(demo_checkpoint, speed="fast", cache_threshold=CACHE_THRESHOLD)
    transformer = fast.pipe.transformer
    assert all(HookRegistry.check_if_exists_or_initialize(block).hooks for block in transformer.blocks)
    assert fast._views.qsize() == 1  # the cache's state lives on the shared blocks: jobs take turns
    calls = BlockCalls(transformer)
    frames = generate(fast)
    calls.remove()
    assert calls.head == 2 * STEPS  # conditional and unconditional call every step
    assert calls.skipped_blocks > 0, "the cache never skipped a block"
    assert psnr(frames, reference) >= CACHED_MIN_PSNR, psnr(frames, reference)
    # Its state is cleared between jobs: the same job again gives the same frames.
    assert np.array_equal(generate(fast), frames)


def test_step_cache_at_threshold_zero_is_bit_identical(demo_checkpoint: Path, reference: np.ndarray) -> None:
    off = load(demo_checkpoint, speed="fast", cache_threshold=0.0)
    calls = BlockCalls(off.pipe.transformer)
    frames = generate(off)
    calls.remove()
    assert calls.head == calls.tail == 2 * STEPS and calls.skipped_blocks == 0
    assert np.array_equal(frames, reference)


# --- turbo: the step-distillation LoRA ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def turbo(demo_checkpoint: Path, demo_lora: Path) -> Engine:
    return load(demo_checkpoint, speed="turbo", lora_path=str(demo_lora))


def test_turbo_fuses_the_lora_and_runs_4_steps_without_guidance(turbo: Engine, engine: Engine) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    transformer = turbo.pipe.transformer
    assert not any(isinstance(m, BaseTunerLayer) for m in transformer.modules())  # fused, adapter layers gone
    fused = transformer.blocks[0].attn1.to_q.weight
    assert not torch.equal(fused, engine.pipe.transformer.blocks[0].attn1.to_q.weight)
    calls = BlockCalls(transformer)
    recorder = Recorder()
    frames = generate(turbo, steps=30, report=recorder)
    calls.remove()
    assert recorder.steps == [(step, TURBO_STEPS) for step in range(1, TURBO_STEPS + 1)]
    assert calls.head == TURBO_STEPS  # guidance 1.0: one transformer call per step
    assert frames.shape == (9, HEIGHT, WIDTH, 3)
    timesteps = turbo._views.get()
    try:
        assert [round(float(t), 1) for t in timesteps.scheduler.timesteps] == [1000.0, 937.5, 833.3, 625.0]
    finally:
        turbo._views.put(timesteps)
    assert np.array_equal(generate(turbo), frames)  # seeded: the re-noising draws from the job's generator


def test_the_lora_changes_the_output(turbo: Engine, demo_checkpoint: Path, tmp_path: Path) -> None:
    """The same schedule with an all-zero LoRA of the same layout: the demo LoRA's frames differ from it."""
    from safetensors.torch import load_file, save_file

    zero = tmp_path / "zero.safetensors"
    tensors = load_file(str(turbo.speed.lora_path))
    save_file({key: torch.zeros_like(value) for key, value in tensors.items()}, str(zero))
    plain = load(demo_checkpoint, speed="turbo", lora_path=str(zero))
    assert not np.array_equal(generate(plain), generate(turbo))


@needs_ffmpeg
def test_turbo_jobs_report_the_steps_and_guidance_used(
    turbo: Engine, image_file: Callable[..., Path], tmp_path: Path
) -> None:
    job = make_job(image_file(), tmp_path / "out.mp4", infer_steps=30, guidance_scale=5.0)
    result = turbo.run(job, on_step=Recorder(), cancelled=threading.Event())
    assert isinstance(result, GenerationResult)
    assert (result.infer_steps, result.guidance_scale) == (4, 1.0)


def test_a_lora_of_other_shapes_is_refused(
    demo_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "DIM", demo.DIM * 2)  # a LoRA made for a wider model
    wrong = tmp_path / "wide.safetensors"
    demo.build_lora(wrong)
    with pytest.raises(ConfigurationError, match="does not fit this model"):
        load(demo_checkpoint, speed="turbo", lora_path=str(wrong))


def test_a_lora_for_another_architecture_is_refused(demo_checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    other = tmp_path / "sd.safetensors"
    save_file(
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
         "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)},
        str(other),
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="does not fit this model"):
        load(demo_checkpoint, speed="turbo", lora_path=str(other))
