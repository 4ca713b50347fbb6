"""Build the demo checkpoints: tiny, randomly initialised Wan pipelines, one per architecture of models.py.

A demo checkpoint has the architecture of its real model (UMT5 text encoder, Wan VAE, Wan transformer or two, UniPC
flow scheduler, and a CLIP vision encoder where the model has one) at toy sizes. It is built offline from configs,
with a fixed seed, so every machine builds the same checkpoint; it is saved with `save_pretrained` and loaded by
the very same `from_pretrained` code path as the real model. Its output is noise by design.

    python -m i2v_worker.demo --output DIR [--model wan2.2-ti2v-5b-demo]
    python -m i2v_worker.demo --lora FILE      # a step-distillation-shaped LoRA for the Wan2.1 demo, for turbo
    python -m i2v_worker.demo --style-lora FILE [--rank 4] [--seed 1]   # a user LoRA for every demo model
    python -m i2v_worker.demo --list           # the demo model ids
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import models
from .metadata import MODEL_INFO_FILE
from .settings import ConfigurationError

logger = logging.getLogger("i2v_worker.demo")

DEFAULT_DEMO = models.DEFAULT_MODEL + models.DEMO_SUFFIX
DEMO_SEED = 20250101

# Sizes of the toy components.
TEXT_DIM = 32  # UMT5 d_model, the transformer's text_dim
IMAGE_DIM = 16  # CLIP vision hidden size, the transformer's image_dim
IMAGE_SIZE, IMAGE_PATCH = 32, 8
IMAGE_TOKENS = (IMAGE_SIZE // IMAGE_PATCH) ** 2 + 1  # what CLIP makes of one image: the patches and a class token
HEADS = 2
HEAD_DIM = 12
DIM = HEADS * HEAD_DIM  # the transformer's hidden size
FFN_DIM = 32
FREQ_DIM = 32
OUT_PATCH = 16 * 1 * 2 * 2  # out_channels x patch volume: the head's output
LORA_RANK = 4
LORA_SEED = 20250102
WAN22_LATENTS = 48  # the Wan2.2 VAE's latent channels (TI2V-5B)
A14B_BOUNDARY = 0.9  # Wan2.2 I2V-A14B's: the high-noise expert for timesteps >= 900 of 1000


def _vocabulary() -> list[tuple[str, float]]:
    """A small fixed Unigram vocabulary: T5's special tokens, then single characters and a few common words."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    words = ["the", "a", "an", "of", "in", "and", "with", "on", "cat", "dog", "dancing", "style", "blurry"]
    pieces += [("\u2581" + w, -3.0) for w in words]
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    pieces += [("\u2581" + c, -5.0) for c in chars]
    pieces += [(c, -6.0) for c in chars]
    return pieces


def _text() -> dict[str, Any]:
    from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

    vocabulary = _vocabulary()
    return {
        "tokenizer": T5Tokenizer(vocab=vocabulary, extra_ids=0),
        "text_encoder": UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(vocabulary), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
            )
        ),
    }  # fmt: skip


def _image_encoder() -> dict[str, Any]:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    return {
        "image_encoder": CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=IMAGE_DIM, intermediate_size=32, projection_dim=IMAGE_DIM, num_hidden_layers=2,
                num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=IMAGE_PATCH,
            )
        ),
        "image_processor": CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ),
    }  # fmt: skip


def _vae(*, wan22: bool) -> Any:
    from diffusers import AutoencoderKLWan

    if not wan22:
        return AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        )
    # The Wan2.2 VAE: 48 latent channels, residual down/up blocks, frames cut into 2x2 patches before a 8x
    # encoder (16x in all), as the real one's config has it, at a toy width.
    return AutoencoderKLWan(
        base_dim=4, z_dim=WAN22_LATENTS, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
        scale_factor_spatial=16, scale_factor_temporal=4, latents_mean=[0.0] * WAN22_LATENTS,
        latents_std=[1.0] * WAN22_LATENTS,
    )  # fmt: skip


def _transformer(*, channels: int = 16, image: bool = True, image_tokens: int | None = None) -> Any:
    """`channels` latent channels; an image-conditioned model without expanded timesteps takes the noise, a mask
    (4) and the condition latents."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
        in_channels=channels if channels == WAN22_LATENTS else 2 * channels + 4, out_channels=channels,
        text_dim=TEXT_DIM, freq_dim=FREQ_DIM, ffn_dim=FFN_DIM, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", image_dim=IMAGE_DIM if image else None,
        added_kv_proj_dim=DIM if image else None, rope_max_seq_len=1024, pos_embed_seq_len=image_tokens,
    )  # fmt: skip


def _scheduler(flow_shift: float) -> Any:
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=flow_shift
    )


def _pipeline(spec: models.ModelSpec) -> Any:
    """The demo pipeline of `spec`, its components made in a fixed order from one seed."""
    import torch
    from diffusers import WanImageToVideoPipeline, WanPipeline

    torch.manual_seed(DEMO_SEED)
    text = _text()
    scheduler = _scheduler(spec.flow_shift)
    if spec.architecture == "wan2.1-i2v":
        return WanImageToVideoPipeline(
            **text, **_image_encoder(), vae=_vae(wan22=False), transformer=_transformer(), scheduler=scheduler
        )
    if spec.architecture == "wan2.1-flf2v":
        return WanImageToVideoPipeline(
            **text, **_image_encoder(), vae=_vae(wan22=False), scheduler=scheduler,
            transformer=_transformer(image_tokens=2 * IMAGE_TOKENS),
        )  # fmt: skip
    if spec.architecture == "wan2.2-a14b":
        return WanImageToVideoPipeline(
            **text, vae=_vae(wan22=False), scheduler=scheduler, transformer=_transformer(image=False),
            transformer_2=_transformer(image=False), boundary_ratio=A14B_BOUNDARY,
        )  # fmt: skip
    # TI2V-5B's checkpoint is saved as the text-to-video pipeline, as the real one is: the worker loads it into the
    # image-to-video pipeline by the same cross-class `from_pretrained` the real one needs.
    return WanPipeline(
        **text, vae=_vae(wan22=True), scheduler=scheduler, transformer=_transformer(channels=WAN22_LATENTS, image=False),
        expand_timesteps=True,
    )  # fmt: skip


def build(output: Path, model: str = DEFAULT_DEMO) -> None:
    """Builds the demo checkpoint of `model` (a `-demo` id) into `output`, a directory that must not exist yet."""
    from .checkpoint import describe, read_facts

    spec = demo_spec(model)
    _pipeline(spec).save_pretrained(output, safe_serialization=True)
    info = describe(spec, read_facts(output))
    # Written last: its presence marks a complete checkpoint.
    (output / MODEL_INFO_FILE).write_text(json.dumps(info.to_dict(), indent=2) + "\n", encoding="utf-8")


def demo_spec(model: str) -> models.ModelSpec:
    spec = models.find(model)
    if spec is None or not spec.is_demo:
        demos = ", ".join(s.id for s in models.MODELS.values() if s.is_demo)
        raise ConfigurationError(f"{model} is not a demo model; the demos are {demos}")
    return spec


def lora_layout() -> dict[str, tuple[tuple[int, int] | None, tuple[int, ...] | None]]:
    """The layers a lightx2v Wan2.1 I2V step-distillation LoRA touches, in Wan's original module names (as its
    file names them, under `diffusion_model.`), at the demo transformer's sizes: layer -> ((out, in) of a linear
    layer, or None) and (shape of its `diff`/`diff_b` extras, or None)."""
    layers: dict[str, tuple[tuple[int, int] | None, tuple[int, ...] | None]] = {}
    for block in range(2):
        prefix = f"blocks.{block}"
        for name in ("q", "k", "v", "o"):
            layers[f"{prefix}.self_attn.{name}"] = ((DIM, DIM), (DIM,))
        for name in ("q", "k", "v", "o", "k_img", "v_img"):
            layers[f"{prefix}.cross_attn.{name}"] = ((DIM, DIM), (DIM,))
        layers[f"{prefix}.ffn.0"] = ((FFN_DIM, DIM), (FFN_DIM,))
        layers[f"{prefix}.ffn.2"] = ((DIM, FFN_DIM), (DIM,))
        for norm in ("self_attn.norm_q", "self_attn.norm_k", "cross_attn.norm_q", "cross_attn.norm_k",
                     "cross_attn.norm_k_img", "norm3"):  # fmt: skip
            layers[f"{prefix}.{norm}"] = (None, (DIM,))
        layers[f"{prefix}.modulation"] = (None, (1, 6, DIM))
    layers["head.head"] = ((OUT_PATCH, DIM), (OUT_PATCH,))
    layers["text_embedding.0"] = ((DIM, TEXT_DIM), (DIM,))
    layers["text_embedding.2"] = ((DIM, DIM), (DIM,))
    layers["time_embedding.0"] = ((DIM, FREQ_DIM), (DIM,))
    layers["time_embedding.2"] = ((DIM, DIM), (DIM,))
    layers["time_projection.1"] = ((6 * DIM, DIM), (6 * DIM,))
    layers["img_emb.proj.1"] = ((IMAGE_DIM, IMAGE_DIM), (IMAGE_DIM,))
    layers["img_emb.proj.3"] = ((DIM, IMAGE_DIM), (DIM,))
    return layers


def build_lora(output: Path, rank: int = LORA_RANK, scale: float = 0.5) -> None:
    """Writes a random LoRA for the demo transformer with the key layout of lightx2v's Wan2.1 I2V 4-step LoRA:
    `diffusion_model.<layer>.lora_down.weight` (rank x in), `.lora_up.weight` (out x rank) and `.diff_b` (bias
    change) for linear layers, `.diff` (and `.diff_b` for norm3) for norms, `blocks.N.diff_m` for the modulation.
    Its weights are random, so it changes the demo's (random) output without making it any better."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(LORA_SEED)

    def rand(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * std).to(torch.bfloat16)

    tensors: dict[str, torch.Tensor] = {}
    for layer, (linear, extra) in lora_layout().items():
        key = f"diffusion_model.{layer}"
        if layer.endswith(".modulation"):
            tensors[key.removesuffix(".modulation") + ".diff_m"] = rand(*(extra or ()), std=scale / 10)
        elif linear is None:
            tensors[f"{key}.diff"] = rand(*(extra or ()), std=scale / 10)
            if layer.endswith("norm3"):
                tensors[f"{key}.diff_b"] = rand(*(extra or ()), std=scale / 10)
        else:
            out_features, in_features = linear
            tensors[f"{key}.lora_down.weight"] = rand(rank, in_features, std=scale)
            tensors[f"{key}.lora_up.weight"] = rand(out_features, rank, std=scale)
            tensors[f"{key}.diff_b"] = rand(*(extra or ()), std=scale / 10)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, output)


STYLE_LORA_SEED = 1


def style_lora_tensors(*, rank: int = LORA_RANK, seed: int = STYLE_LORA_SEED, std: float = 0.3, dim: int = DIM,
                       ffn_dim: int = FFN_DIM, blocks: int = 2) -> dict[str, Any]:  # fmt: skip
    """A user ("style") LoRA for the demo transformers in diffusers' key layout (`transformer.blocks.N.attn1.to_q.
    lora_A.weight`, rank x in, and `.lora_B.weight`, out x rank), on the attention and feed-forward layers every
    demo architecture has; random weights from `seed`, so the same arguments make the same bytes. `dim` and
    `ffn_dim` other than the demo's make a LoRA of another model's shapes."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    layers: dict[str, tuple[int, int]] = {}
    for block in range(blocks):
        for attention in ("attn1", "attn2"):
            for name in ("to_q", "to_k", "to_v", "to_out.0"):
                layers[f"blocks.{block}.{attention}.{name}"] = (dim, dim)
        layers[f"blocks.{block}.ffn.net.0.proj"] = (ffn_dim, dim)
        layers[f"blocks.{block}.ffn.net.2"] = (dim, ffn_dim)
    tensors: dict[str, Any] = {}
    for layer, (out_features, in_features) in layers.items():
        tensors[f"transformer.{layer}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * std
        tensors[f"transformer.{layer}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * std
    return tensors


def build_style_lora(output: Path, *, rank: int = LORA_RANK, seed: int = STYLE_LORA_SEED, **shape: int) -> None:
    """Writes `style_lora_tensors(rank=rank, seed=seed, **shape)` to `output` (.safetensors, replaced atomically)."""
    from safetensors.torch import save_file

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    save_file(style_lora_tensors(rank=rank, seed=seed, **shape), str(tmp))
    os.replace(tmp, output)


def _make_readable(root: Path) -> None:
    """mkdtemp makes a private directory and some writers private files: make the checkpoint readable by all."""
    umask = os.umask(0)
    os.umask(umask)
    for directory, _, files in os.walk(root):
        os.chmod(directory, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o666 & ~umask)


def is_complete(path: Path) -> bool:
    return (path / MODEL_INFO_FILE).is_file() and (path / "model_index.json").is_file()


def ensure(output: Path, force: bool = False, model: str = DEFAULT_DEMO) -> bool:
    """Builds the demo checkpoint of `model` at `output` unless a complete checkpoint is there (whether it is of
    `model` is for the worker's checks to say). Returns whether it built one."""
    demo_spec(model)
    output = output.resolve()
    if is_complete(output) and not force:
        logger.info("demo checkpoint already complete at %s", output)
        return False
    if output.exists():
        if force or not any(output.iterdir()):
            shutil.rmtree(output)
        else:
            raise ConfigurationError(
                f"{output} exists and is not a complete demo checkpoint; remove it or pass --force"
            )
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        build(tmp, model)
        _make_readable(tmp)
        try:
            os.rename(tmp, output)
        except OSError:
            if not is_complete(output):  # a concurrent builder finished first: theirs is as good as ours
                raise
            logger.info("another process completed %s first", output)
            return False
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("built demo checkpoint %s in %.1f s", output, time.monotonic() - started)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m i2v_worker.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="checkpoint directory to create")
    parser.add_argument("--model", default=DEFAULT_DEMO, help=f"the demo model to build (default {DEFAULT_DEMO})")
    parser.add_argument("--list", action="store_true", help="print the demo model ids")
    parser.add_argument("--force", action="store_true", help="rebuild even when a complete checkpoint is there")
    parser.add_argument("--lora", type=Path, help="also write a demo step-distillation LoRA to this .safetensors file")
    parser.add_argument("--style-lora", type=Path, help="also write a demo user LoRA to this .safetensors file")
    parser.add_argument("--rank", type=int, default=LORA_RANK, help=f"--style-lora's rank (default {LORA_RANK})")
    parser.add_argument("--seed", type=int, default=STYLE_LORA_SEED, help="--style-lora's seed")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(spec.id for spec in models.MODELS.values() if spec.is_demo))
        return 0
    if args.output is None and args.lora is None and args.style_lora is None:
        parser.error("give --output, --lora, --style-lora or several")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.output is not None:
        try:
            ensure(args.output, force=args.force, model=args.model)
        except ConfigurationError as exc:
            raise SystemExit(str(exc)) from None
        print(args.output.resolve())
    if args.lora is not None:
        build_lora(args.lora)
        print(args.lora.resolve())
    if args.style_lora is not None:
        build_style_lora(args.style_lora, rank=args.rank, seed=args.seed)
        print(args.style_lora.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
