"""Build the demo checkpoint: a tiny, randomly initialised `WanImageToVideoPipeline`.

The demo checkpoint has the architecture of Wan2.1 image-to-video (UMT5 text encoder, CLIP vision encoder, Wan VAE,
Wan transformer, UniPC flow scheduler) at toy sizes. It is built offline from configs, with a fixed seed, so every
machine builds the same checkpoint; it is saved with `save_pretrained` and loaded by the very same `from_pretrained`
code path as the real model. Its output is noise by design.

    python -m i2v_worker.demo --output DIR
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

from .metadata import MODEL_INFO_FILE, ModelInfo

logger = logging.getLogger("i2v_worker.demo")

DEMO_MODEL = ModelInfo(id="wan2.1-i2v-demo", native_area=160 * 96, size_multiple=16, fps=16)
DEMO_SEED = 20250101

# Sizes of the toy components.
TEXT_DIM = 32  # UMT5 d_model, the transformer's text_dim
IMAGE_DIM = 16  # CLIP vision hidden size, the transformer's image_dim
HEADS = 2
HEAD_DIM = 12


def _vocabulary() -> list[tuple[str, float]]:
    """A small fixed Unigram vocabulary: T5's special tokens, then single characters and a few common words."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    words = ["the", "a", "an", "of", "in", "and", "with", "on", "cat", "dog", "dancing", "style", "blurry"]
    pieces += [("\u2581" + w, -3.0) for w in words]
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    pieces += [("\u2581" + c, -5.0) for c in chars]
    pieces += [(c, -6.0) for c in chars]
    return pieces


def build(output: Path) -> None:
    """Builds the demo checkpoint into `output`, a directory that must not exist yet."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        T5Tokenizer,
        UMT5Config,
        UMT5EncoderModel,
    )

    torch.manual_seed(DEMO_SEED)
    vocabulary = _vocabulary()
    tokenizer = T5Tokenizer(vocab=vocabulary, extra_ids=0)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(vocabulary),
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            dropout_rate=0.0,
        )
    )
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=IMAGE_DIM,
            intermediate_size=32,
            projection_dim=IMAGE_DIM,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=36,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        image_dim=IMAGE_DIM,
        added_kv_proj_dim=HEADS * HEAD_DIM,
        rope_max_seq_len=1024,
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        image_processor=image_processor,
        image_encoder=image_encoder,
        transformer=transformer,
    )
    pipe.save_pretrained(output, safe_serialization=True)
    # Written last: its presence marks a complete checkpoint.
    (output / MODEL_INFO_FILE).write_text(json.dumps(DEMO_MODEL.to_dict(), indent=2) + "\n", encoding="utf-8")


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


def ensure(output: Path, force: bool = False) -> bool:
    """Builds the demo checkpoint at `output` unless a complete one is there. Returns whether it built one."""
    output = output.resolve()
    if is_complete(output) and not force:
        logger.info("demo checkpoint already complete at %s", output)
        return False
    if output.exists():
        if force or not any(output.iterdir()):
            shutil.rmtree(output)
        else:
            raise SystemExit(f"{output} exists and is not a complete demo checkpoint; remove it or pass --force")
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        build(tmp)
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
    parser.add_argument("--output", required=True, type=Path, help="checkpoint directory to create")
    parser.add_argument("--force", action="store_true", help="rebuild even when a complete checkpoint is there")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ensure(args.output, force=args.force)
    print(args.output.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
