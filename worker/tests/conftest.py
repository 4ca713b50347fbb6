from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from i2v_worker.jobs import Job
from i2v_worker.loop import serve

WIDTH, HEIGHT = 160, 96  # the demo model's native size


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo checkpoint, built once per test session."""
    from i2v_worker import demo

    path = tmp_path_factory.mktemp("checkpoints") / "wan2.1-i2v-demo"
    assert demo.ensure(path) is True
    return path


@pytest.fixture(scope="session")
def demo_checkpoints(tmp_path_factory: pytest.TempPathFactory, demo_checkpoint: Path) -> Callable[[str], Path]:
    """The demo checkpoint of a model id, each built once per test session when a test first asks for it."""
    from i2v_worker import demo

    root = tmp_path_factory.mktemp("demos")

    def get(model: str) -> Path:
        if model == demo.DEFAULT_DEMO:
            return demo_checkpoint
        path = root / model
        demo.ensure(path, model=model)
        return path

    return get


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


class Session:
    """serve() on a pipe in a thread; lines are written to it and its output is read back as messages."""

    def __init__(self, load: Callable[[], object]) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.output = io.BytesIO()
        self.status: int | None = None
        self.thread = threading.Thread(target=self._serve, args=(load,), daemon=True)
        self.thread.start()

    def _serve(self, load: Callable[[], object]) -> None:
        self.status = serve(load, self.read_fd, self.output, shutdown_grace_seconds=5)  # type: ignore[arg-type]

    def send(self, *lines: str) -> None:
        os.write(self.write_fd, "".join(line + "\n" for line in lines).encode("utf-8"))

    def close(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def messages(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.output.getvalue().decode("utf-8").splitlines()]

    def wait_for(self, predicate: Callable[[list[dict[str, object]]], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.messages()):
            assert time.monotonic() < deadline, f"timed out; got {self.messages()}"
            time.sleep(0.01)

    def finish(self, timeout: float = 10) -> int:
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        # End of input lets serve()'s reader thread finish; the read end is left to it (closing it under a blocked
        # read could hand its number to a later pipe).
        self.close()
        assert self.status is not None
        return self.status


def probe(path: Path) -> dict[str, object]:
    """ffprobe's view of an MP4's video stream: width, height, frames counted by decoding, frame rate."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
         "stream=codec_name,width,height,nb_read_frames,r_frame_rate", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    stream = json.loads(out)["streams"][0]
    numerator, denominator = (int(part) for part in stream["r_frame_rate"].split("/"))
    return {
        "codec": stream["codec_name"], "width": stream["width"], "height": stream["height"],
        "frames": int(stream["nb_read_frames"]), "fps": numerator / denominator,
    }  # fmt: skip


# torch.compile on the CPU builds its kernels with a C++ compiler.
needs_cxx = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler for torch.compile on the CPU"
)
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not on PATH")
needs_ffprobe = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe is not on PATH")
