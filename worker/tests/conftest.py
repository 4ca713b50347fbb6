from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from i2v_worker.jobs import Job

WIDTH, HEIGHT = 160, 96  # the demo model's native size


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo checkpoint, built once per test session."""
    from i2v_worker import demo

    path = tmp_path_factory.mktemp("checkpoints") / "wan2.1-i2v-demo"
    assert demo.ensure(path) is True
    return path


@pytest.fixture(scope="session")
def engine(demo_checkpoint: Path) -> Iterator[object]:
    """One engine with two slots, shared by the tests that run jobs in-process."""
    from i2v_worker.pipeline import Engine
    from i2v_worker.settings import Settings

    yield Engine.load(Settings(model_path=str(demo_checkpoint), device="cpu", slots=2))


@pytest.fixture()
def image_file(tmp_path: Path) -> Callable[..., Path]:
    def make(width: int = WIDTH, height: int = HEIGHT, name: str = "input.png") -> Path:
        path = tmp_path / name
        image = Image.new("RGB", (width, height))
        image.putdata([((x * 7) % 256, (y * 11) % 256, (x + y) % 256) for y in range(height) for x in range(width)])
        image.save(path)
        return path

    return make


@pytest.fixture(scope="session")
def demo_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA for the demo transformer with the key layout of lightx2v's Wan2.1 I2V 4-step LoRA."""
    from i2v_worker import demo

    path = tmp_path_factory.mktemp("loras") / "demo-lora.safetensors"
    demo.build_lora(path)
    return path


def make_job(image: Path, output: Path, **overrides: object) -> Job:
    fields: dict[str, object] = dict(
        task_id="0123456789abcdef0123456789abcdef",
        image_path=str(image),
        prompt="A dancing cat in the style of Van Gogh",
        negative_prompt="blurry",
        width=WIDTH,
        height=HEIGHT,
        num_frames=9,
        infer_steps=3,
        guidance_scale=3.0,
        seed=42,
        output_path=str(output),
    )
    fields.update(overrides)
    return Job(**fields)  # type: ignore[arg-type]


class Recorder:
    """Collects progress reports of one job."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, step: int, total: int) -> None:
        with self.lock:
            self.steps.append((step, total))


needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not on PATH")
needs_ffprobe = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe is not on PATH")
