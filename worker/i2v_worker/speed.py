"""Speed presets: what `quality`, `fast` and `turbo` turn on, each through the diffusers API made for it.

- `quality` (default, lossless): regional compilation of the transformer's repeated blocks
  (`compile_repeated_blocks`), on by default on CUDA (`I2V_COMPILE`), compiled and warmed before the worker says ready.
- `fast`: adds the first-block step cache (`FirstBlockCacheConfig` through `transformer.enable_cache`, threshold
  `I2V_CACHE_THRESHOLD`) and, on GPUs with FP8 (compute capability 8.9+), FP8 weights and activations through torchao
  (`TorchAoConfig`, applied while loading).
- `turbo`: the step-distillation LoRA at `I2V_LORA_PATH` loaded and fused at start (`load_lora_weights` +
  `fuse_lora`), then 4 steps without classifier-free guidance on the schedule that LoRA was trained with.

`plan` decides from the settings and the device, before anything is loaded, and refuses what the device cannot do;
`apply` does it to the loaded pipeline.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers.schedulers.scheduling_flow_match_euler_discrete import (
    FlowMatchEulerDiscreteScheduler,
)

from .jobs import SpeedPlan
from .models import ModelSpec
from .settings import ConfigurationError, Settings

logger = logging.getLogger("i2v_worker")

# lightx2v's Wan2.1 I2V step-distillation (its `denoising_step_list` 1000, 750, 500, 250 with `sample_shift` 5): the
# unshifted sigmas of those four timesteps; the scheduler's shift turns them into 1.0, 0.9375, 0.8333, 0.625. Each step
# predicts the clean latents and noises them afresh to the next sigma, as that sampler does (`stochastic_sampling`).
TURBO_SIGMAS = (1.0, 0.75, 0.5, 0.25)
TURBO_SHIFT = 5.0
TURBO_STEPS = len(TURBO_SIGMAS)
TURBO_GUIDANCE = 1.0  # the distillation folded guidance in: one transformer call per step
LORA_ADAPTER = "turbo"
FP8_CAPABILITY = (8, 9)
TURBO_ARCHITECTURES = ("wan2.1-i2v",)  # the distillation LoRA and its schedule are Wan2.1 I2V's


class DistilledFlowScheduler(FlowMatchEulerDiscreteScheduler):
    """Flow-matching Euler on the fixed 4-step schedule of the distilled LoRA, its noise drawn from the job's seed.

    `WanImageToVideoPipeline` asks its scheduler for `num_inference_steps` timesteps and passes no generator to
    `step`, so the schedule and the job's generator are set here. Each job gets its own instance.
    """

    generator: torch.Generator | None = None

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
        timesteps: list[float] | None = None,
    ) -> Any:
        return super().set_timesteps(device=device or "cpu", sigmas=list(TURBO_SIGMAS))

    def step(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("generator", self.generator)
        return super().step(*args, **kwargs)


def turbo_scheduler() -> DistilledFlowScheduler:
    return DistilledFlowScheduler(num_train_timesteps=1000, shift=TURBO_SHIFT, stochastic_sampling=True)


def fp8_support(device: torch.device) -> str | None:
    """None when `device` can run FP8 matmuls, else why not."""
    if device.type != "cuda":
        return f"the device is {device.type}, not a CUDA GPU"
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return f"{name} has compute capability {capability[0]}.{capability[1]}; FP8 needs 8.9 or newer (Ada, Hopper)"
    return None


def check_lora_file(path: str) -> None:
    """Refuses, before the model is loaded, a LoRA file that is missing or is not a safetensors LoRA."""
    file = Path(path)
    if not file.is_file():
        raise ConfigurationError(f"I2V_LORA_PATH={path}: no such file")
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as exc:  # noqa: BLE001 (safetensors raises its own error types for a file that is not one of its files)
        raise ConfigurationError(f"I2V_LORA_PATH={path}: not a safetensors file ({exc})") from None
    if not any("lora" in key for key in keys):
        raise ConfigurationError(f"I2V_LORA_PATH={path}: no LoRA weights in it ({len(keys)} tensors, none named lora)")


def plan(settings: Settings, device: torch.device, model: ModelSpec | None = None) -> SpeedPlan:
    """The preset's plan for `device` (and `model`, where known); raises ConfigurationError for what it cannot do."""
    preset = settings.speed
    if preset == "turbo" and model is not None and model.architecture not in TURBO_ARCHITECTURES:
        raise ConfigurationError(
            f"I2V_SPEED=turbo is not available for {model.id}: its step-distillation LoRA and 4-step schedule are"
            " made for Wan2.1 I2V (480P/720P) only"
        )
    if settings.fp8 == "on" and preset != "fast":
        raise ConfigurationError(f"I2V_FP8=1 belongs to I2V_SPEED=fast, not {preset}")
    fp8 = False
    if preset == "fast" and settings.fp8 != "off":
        unsupported = fp8_support(device)
        if unsupported is None:
            fp8 = True
        elif settings.fp8 == "on":
            raise ConfigurationError(f"I2V_FP8=1 cannot run here: {unsupported}")
        else:
            logger.info("fast preset without FP8: %s", unsupported)
    lora_path = None
    if preset == "turbo":
        if not settings.lora_path:
            raise ConfigurationError(
                "I2V_SPEED=turbo needs I2V_LORA_PATH: a step-distillation LoRA for this model "
                "(e.g. lightx2v's Wan2.1 I2V 480P 4-step LoRA)"
            )
        check_lora_file(settings.lora_path)
        lora_path = settings.lora_path
    elif settings.lora_path:
        logger.warning("I2V_LORA_PATH is only used by I2V_SPEED=turbo; ignored with %s", preset)
    compile_blocks = settings.compile == "on" or (settings.compile == "auto" and device.type == "cuda")
    return SpeedPlan(
        preset=preset,
        compile=compile_blocks,
        cache_threshold=settings.cache_threshold if preset == "fast" else None,
        fp8=fp8,
        lora_path=lora_path,
        infer_steps=TURBO_STEPS if preset == "turbo" else None,
        guidance_scale=TURBO_GUIDANCE if preset == "turbo" else None,
    )


def fp8_quantization() -> Any:
    """The `quantization_config` for `from_pretrained`: the transformer's linear layers in FP8 (torchao)."""
    from diffusers import PipelineQuantizationConfig, TorchAoConfig
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig

    quant_mapping: dict[str, Any] = {"transformer": TorchAoConfig(Float8DynamicActivationFloat8WeightConfig())}
    return PipelineQuantizationConfig(quant_mapping=quant_mapping)


def fuse_lora(pipe: Any, path: str) -> int:
    """Loads the LoRA at `path` into the transformer, fuses it into the weights, drops the adapter. Returns how many
    layers it changed; a file that changes none (made for another model) is refused."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    try:
        pipe.load_lora_weights(path, adapter_name=LORA_ADAPTER)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ConfigurationError(f"I2V_LORA_PATH={path} does not fit this model: {exc}") from None
    adapted = sum(1 for module in pipe.transformer.modules() if isinstance(module, BaseTunerLayer))
    if adapted == 0:
        raise ConfigurationError(f"I2V_LORA_PATH={path} does not fit this model: none of its weights matched a layer")
    pipe.fuse_lora(components=["transformer"], lora_scale=1.0, adapter_names=[LORA_ADAPTER])
    pipe.unload_lora_weights()  # the fused weights stay; the adapter layers would only slow every call
    return adapted


def enable_step_cache(transformer: Any, threshold: float) -> int:
    """Attaches the first-block cache; returns the number of blocks hooked (refuses to go on with none: a cache that
    hooks nothing would silently do nothing)."""
    from diffusers import FirstBlockCacheConfig
    from diffusers.hooks import HookRegistry

    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    hooked = sum(1 for block in transformer.blocks if HookRegistry.check_if_exists_or_initialize(block).hooks)
    if hooked != len(transformer.blocks):
        raise RuntimeError(f"the step cache hooked {hooked} of {len(transformer.blocks)} transformer blocks")
    return hooked


def compile_blocks(transformer: Any, *, cache: bool) -> None:
    """Regional compilation: each repeated transformer block once, shared by all blocks of its class.

    Shapes are dynamic (`dynamic=True`): the sequence length changes with the frame size and count, and one graph
    with symbolic sizes serves them all instead of one compile per size (or recompiles until dynamo's limit).
    The step cache's decision leaves the graph (`torch.compiler.disable` in diffusers), so with it the blocks are
    compiled with graph breaks allowed.
    """
    transformer.compile_repeated_blocks(fullgraph=not cache, dynamic=True)


def transformers(pipe: Any) -> list[Any]:
    """The pipeline's transformers: one, or the A14B's two experts."""
    return [model for model in (pipe.transformer, getattr(pipe, "transformer_2", None)) if model is not None]


def apply(pipe: Any, speed: SpeedPlan) -> None:
    """Does to the loaded pipeline what `speed` says, in the order that works: LoRA fused into the weights first,
    then the cache hooks, then compilation of the hooked blocks (of each expert, where there are two)."""
    if speed.lora_path is not None:
        adapted = fuse_lora(pipe, speed.lora_path)
        pipe.scheduler = turbo_scheduler()
        logger.info("fused LoRA %s into %d layers", speed.lora_path, adapted)
    for transformer in transformers(pipe):
        if speed.cache_threshold is not None:
            hooked = enable_step_cache(transformer, speed.cache_threshold)
            logger.info("step cache on %d blocks, threshold %g", hooked, speed.cache_threshold)
        if speed.compile:
            compile_blocks(transformer, cache=speed.cache_threshold is not None)
    if speed.compile:
        logger.info("transformer blocks compiled (dynamic shapes); warm-up compiles them")
