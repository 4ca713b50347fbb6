"""B4: seconds per denoising step of the full-size Wan2.1-I2V-14B-480P transformer on a CUDA GPU, random weights.

The transformer is built from the published config of `Wan-AI/Wan2.1-I2V-14B-480P-Diffusers` (transformer/config.json;
no download): first on the `meta` device, then every parameter is allocated straight on the GPU in bf16 (the modules
diffusers keeps in fp32, `_keep_in_fp32_modules`, in fp32, as `from_pretrained` does) and filled with random values,
so the host never holds the ~33 GB of weights and the GPU never holds an fp32 copy. One denoising step of
`WanImageToVideoPipeline` with classifier-free guidance is two transformer forwards (conditional, then unconditional,
the pipeline's own order) at the pipeline's input shapes:

    latents + condition: (1, 36, (frames-1)/4+1, height/8, width/8)   bf16
    text embeddings:     (1, 512, 4096)                              bf16 (UMT5-XXL, max_sequence_length 512)
    image embeddings:    (1, 257, 1280)                              bf16 (CLIP ViT-H/14 penultimate layer)

It prints one JSON line: seconds per step (median of the timed steps, after one untimed warm-up step), the 30-step
estimate (denoising only: the text and image encoders and the VAE decode are not included), peak GPU memory.
With `--presets` it then measures the same step the way the speed presets run it (`presets` in the JSON): the
repeated blocks compiled as the worker compiles them (`compile_repeated_blocks`, dynamic shapes; compile time
reported apart), and, on GPUs with FP8 (compute capability 8.9+), the linear layers in FP8 through torchao, compiled.
Random weights cannot say anything about output quality (PSNR against `quality` needs the real checkpoint) nor
about the step cache (whose skips depend on real activations), so neither is measured here.
Without CUDA it prints {"ok": false, "skipped": "no CUDA GPU on this machine"} and exits 0.

    python bench/gpu_step.py [--steps 3] [--height 480 --width 832 --frames 81] [--presets]
    python bench/gpu_step.py --smoke-cpu [--presets]   # a 2-layer toy config on the CPU: checks the code path only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

# transformer/config.json of Wan-AI/Wan2.1-I2V-14B-480P-Diffusers.
WAN21_I2V_14B_480P: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 36,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": 1280,
    "added_kv_proj_dim": 5120,
    "rope_max_seq_len": 1024,
}
TEXT_TOKENS = 512  # the pipeline pads prompts to max_sequence_length=512
IMAGE_TOKENS = 257  # CLIP ViT-H/14 at 224 px: 16 x 16 patches + class token
VAE_SPATIAL = 8
VAE_TEMPORAL = 4

# A toy config of the same architecture, for --smoke-cpu.
SMOKE: dict[str, Any] = {
    **WAN21_I2V_14B_480P,
    "num_attention_heads": 2,
    "attention_head_dim": 32,
    "text_dim": 64,
    "freq_dim": 32,
    "ffn_dim": 128,
    "num_layers": 2,
    "image_dim": 32,
    "added_kv_proj_dim": 64,
}


def build(config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """The transformer with random weights, allocated on `device` only (never a full-size copy on the host)."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model: Any = WanTransformer3DModel(**config)
    keep_fp32 = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    generator = torch.Generator(device=device).manual_seed(seed)
    for module_name, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            full_name = f"{module_name}.{name}" if module_name else name
            param_dtype = torch.float32 if keep_fp32 & set(full_name.split(".")) else dtype
            tensor = torch.empty(param.shape, dtype=param_dtype, device=device)
            if param.ndim >= 2:
                fan_in = param[0].numel()
                tensor.normal_(0.0, fan_in**-0.5, generator=generator)
            elif name == "weight":
                tensor.fill_(1.0)  # norm scales
            else:
                tensor.normal_(0.0, 0.02, generator=generator)  # biases, modulation tables
            module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)
    # The only buffers are the rotary tables: rebuild that module for real on the device (fp32, as diffusers keeps it).
    rope = model.rope
    with torch.device(device):
        model.rope = type(rope)(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)
    leftovers = [
        name for name, tensor in list(model.named_parameters()) + list(model.named_buffers()) if tensor.is_meta
    ]
    if leftovers:
        raise RuntimeError(f"tensors left on the meta device: {leftovers[:5]}")
    return model.eval()


def inputs(
    config: dict[str, Any], height: int, width: int, frames: int, device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    latent_frames = (frames - 1) // VAE_TEMPORAL + 1
    generator = torch.Generator(device=device).manual_seed(1)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device, dtype=torch.float32).to(dtype)

    return {
        "hidden_states": randn(1, config["in_channels"], latent_frames, height // VAE_SPATIAL, width // VAE_SPATIAL),
        "cond": randn(1, TEXT_TOKENS, config["text_dim"]),
        "uncond": randn(1, TEXT_TOKENS, config["text_dim"]),
        "image": randn(1, IMAGE_TOKENS, config["image_dim"]),
    }


def step(model: Any, x: dict[str, torch.Tensor], timestep: torch.Tensor, guidance: float) -> Any:
    """One denoising step's model work: the conditional and the unconditional forward, combined as the pipeline does."""
    cond = model(
        hidden_states=x["hidden_states"], timestep=timestep, encoder_hidden_states=x["cond"],
        encoder_hidden_states_image=x["image"], return_dict=False,
    )[0]  # fmt: skip
    uncond = model(
        hidden_states=x["hidden_states"], timestep=timestep, encoder_hidden_states=x["uncond"],
        encoder_hidden_states_image=x["image"], return_dict=False,
    )[0]  # fmt: skip
    return uncond + guidance * (cond - uncond)


def measure(
    config: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype,
    height: int,
    width: int,
    frames: int,
    steps: int,
    presets: bool = False,
) -> dict[str, Any]:
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    started = time.perf_counter()
    model = build(config, device, dtype)
    sync()
    build_s = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    x = inputs(config, height, width, frames, device, dtype)
    timestep = torch.tensor([999.0], device=device)
    tokens = x["hidden_states"].shape[2] * (height // VAE_SPATIAL // 2) * (width // VAE_SPATIAL // 2)
    times: list[float] = []
    with torch.inference_mode():
        started = time.perf_counter()
        out = step(model, x, timestep, 3.0)  # warm-up: kernels chosen, allocator grown
        sync()
        warmup_s = time.perf_counter() - started
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            started = time.perf_counter()
            out = step(model, x, timestep, 3.0)
            sync()
            times.append(time.perf_counter() - started)
    if not bool(torch.isfinite(out.float()).all()):
        raise RuntimeError("the transformer produced non-finite values")
    step_s = statistics.median(times)
    result: dict[str, Any] = {
        "ok": True,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "size": f"{width}x{height}",
        "frames": frames,
        "latent_tokens": tokens,
        "num_layers": config["num_layers"],
        "params_billion": round(params / 1e9, 3),
        "weights_gib": round(weight_bytes / 2**30, 2),
        "build_s": round(build_s, 2),
        "warmup_step_s": round(warmup_s, 3),
        "step_s": round(step_s, 4),
        "steps_s": [round(t, 4) for t in times],
        "forward_s": round(step_s / 2, 4),
        "estimate_30_steps_s": round(30 * step_s, 1),
    }
    if cuda:
        result["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    if presets:
        result["presets"] = measure_presets(model, x, timestep, steps, sync)
    return result


def timed_steps(
    model: Any, x: dict[str, torch.Tensor], timestep: torch.Tensor, steps: int, sync: Any
) -> dict[str, Any]:
    """One untimed step (compiles, where compiled), then `steps` timed ones."""
    times: list[float] = []
    with torch.inference_mode():
        started = time.perf_counter()
        step(model, x, timestep, 3.0)
        sync()
        first_s = time.perf_counter() - started
        for _ in range(steps):
            started = time.perf_counter()
            step(model, x, timestep, 3.0)
            sync()
            times.append(time.perf_counter() - started)
    return {"first_step_s": round(first_s, 3), "step_s": round(statistics.median(times), 4)}


def measure_presets(
    model: Any, x: dict[str, torch.Tensor], timestep: torch.Tensor, steps: int, sync: Any
) -> dict[str, Any]:
    """The step as `quality` runs it (blocks compiled) and as `fast` adds FP8 where the GPU has it."""
    device = x["hidden_states"].device
    results: dict[str, Any] = {}
    model.compile_repeated_blocks(fullgraph=True, dynamic=True)
    results["quality_compiled"] = timed_steps(model, x, timestep, steps, sync)
    fp8 = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
    if not fp8:
        results["fast_fp8"] = {"skipped": "no FP8 on this device (needs CUDA compute capability 8.9+)"}
        return results
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        quantize_,
    )

    torch._dynamo.reset()
    # The blocks' linear layers, as TorchAoConfig does it while loading the real checkpoint.
    quantize_(model, Float8DynamicActivationFloat8WeightConfig())
    results["fast_fp8"] = timed_steps(model, x, timestep, steps, sync)
    if device.type == "cuda":
        results["fast_fp8"]["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--smoke-cpu", action="store_true", help="toy 2-layer config on the CPU (checks the code path)")
    parser.add_argument("--presets", action="store_true", help="also the step as the speed presets run it")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.steps > 50:
        parser.error("--steps must be 1..50")
    try:
        if args.smoke_cpu:
            torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
            result = measure(SMOKE, torch.device("cpu"), torch.bfloat16, 64, 64, 5, args.steps, args.presets)
            result["smoke"] = True
        elif not torch.cuda.is_available():
            result = {"ok": False, "skipped": "no CUDA GPU on this machine"}
        else:
            torch.backends.cuda.matmul.allow_tf32 = True
            result = measure(
                WAN21_I2V_14B_480P, torch.device("cuda", torch.cuda.current_device()), torch.bfloat16,
                args.height, args.width, args.frames, args.steps, args.presets,
            )  # fmt: skip
    except torch.OutOfMemoryError as exc:
        result = {"ok": False, "error": f"out of memory: {str(exc)[:300]}"}
    except Exception as exc:  # noqa: BLE001 (reported in the table rather than as a traceback)
        result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
