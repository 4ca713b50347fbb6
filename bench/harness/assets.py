"""What the suites need on disk, made once into bench/results/cache: the demo checkpoint, imageio for the reference
script, and the generated input images."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from harness.core import CACHE, REPO, say

IMAGEIO_PINS = ("imageio==2.38.1", "imageio-ffmpeg==0.6.0")
IMAGES_VERSION = "v1"  # bump when the generated images change
B1_SOURCE = (800, 480)  # B1's input image: a 5:3 JPEG (the 480P demo models make 160x96 of it)
# B1's input images per native demo size (W, H): 5x the size, so the service's cover resize and the script's plain
# resize make the same frame; the "-last" one is the last frame for models that take one (FLF2V).
B1_IMAGES = {(160, 96): "b1-800x480.jpg", (224, 128): "b1-1120x640.jpg"}
B1_LAST_IMAGES = {(160, 96): "b1-800x480-last.jpg", (224, 128): "b1-1120x640-last.jpg"}


def demo_model(python: str) -> Path:
    """The demo checkpoint, built once per version of the worker's demo builder and kept in bench/results/cache."""
    sources = [REPO / "worker" / "i2v_worker" / "demo.py", REPO / "worker" / "i2v_worker" / "metadata.py"]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    path = CACHE / f"demo-{key}" / "wan2.1-i2v-demo"
    if (path / "i2v_model.json").is_file() and (path / "model_index.json").is_file():
        return path
    say(f"building the demo checkpoint into {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-m", "i2v_worker.demo", "--output", str(path)], cwd=REPO, check=True, timeout=900,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return path


def imageio_path(python: str) -> tuple[Path | None, str]:
    """Where `export_to_video`'s imageio + imageio-ffmpeg come from: the venv, bench/results/cache/pydeps, or nowhere."""
    probe = [python, "-c", "import imageio, imageio_ffmpeg; imageio_ffmpeg.get_ffmpeg_exe()"]
    if subprocess.run(probe, capture_output=True, timeout=120, check=False).returncode == 0:
        return None, "export_to_video (imageio from the venv)"
    target = CACHE / "pydeps"
    env = dict(os.environ, PYTHONPATH=str(target))
    if subprocess.run(probe, capture_output=True, timeout=120, env=env, check=False).returncode == 0:
        return target, "export_to_video (imageio from bench/results/cache/pydeps)"
    say(f"installing {' '.join(IMAGEIO_PINS)} into {target} for diffusers' export_to_video")
    install = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--target",
               str(target), *IMAGEIO_PINS]  # fmt: skip
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(install, capture_output=True, timeout=300, check=False)
    if subprocess.run(probe, capture_output=True, timeout=120, env=env, check=False).returncode == 0:
        return target, "export_to_video (imageio installed into bench/results/cache/pydeps)"
    return None, "ffmpeg CLI with imageio's arguments (imageio not installable here)"


def photo_like(width: int, height: int, seed: int, fine_noise: float) -> Any:
    """An RGB test picture that does not compress trivially: gradients, low-frequency blotches and fine noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    picture = np.stack([200 * x + 30 * y, 180 * y + 40 * (1 - x), 120 * (x * y) + 60 * (1 - y)], axis=-1)
    low = rng.normal(128, 40, (max(2, height // 64), max(2, width // 64), 3))
    blotches = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    picture += np.asarray(blotches, dtype=np.float32) - 128
    picture += rng.normal(0, fine_noise, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))


def images() -> Path:
    """The benchmark images, generated once (fixed seeds) into bench/results/cache/images-<version>."""
    directory = CACHE / f"images-{IMAGES_VERSION}"
    specs: list[tuple[str, int, int, float]] = [
        ("b1-800x480.jpg", *B1_SOURCE, 8.0),
        ("small-320x192.png", 320, 192, 0.0),
        ("photo-4000x3000.jpg", 4000, 3000, 10.0),
        ("photo-3840x2160.png", 3840, 2160, 3.0),
        # Added later: new files get new seeds, the ones above keep theirs.
        ("b1-1120x640.jpg", 1120, 640, 8.0),
        ("b1-800x480-last.jpg", *B1_SOURCE, 8.0),
        ("b1-1120x640-last.jpg", 1120, 640, 8.0),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    for index, (name, width, height, noise) in enumerate(specs):
        path = directory / name
        if path.is_file():
            continue
        say(f"generating {name}")
        picture = photo_like(width, height, 1000 + index, noise)
        tmp = path.with_name(f".{name}.tmp")
        if name.endswith(".jpg"):
            picture.save(tmp, "JPEG", quality=90)
        else:
            picture.save(tmp, "PNG")
        tmp.rename(path)
    return directory
