"""The demo checkpoint and the engine: loading, determinism, progress, cancel, error mapping, parallel jobs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import HEIGHT, WIDTH, Recorder, make_job, needs_ffmpeg
from PIL import Image

from i2v_worker import demo
from i2v_worker.errors import OOM_MESSAGE, BadInput, Cancelled, JobError, OutOfMemory
from i2v_worker.jobs import GenerationResult
from i2v_worker.pipeline import Engine, frame_count
from i2v_worker.settings import ConfigurationError, Settings


def generate(engine: Engine, seed: int = 42, steps: int = 3, num_frames: int = 9, **kw: Any) -> np.ndarray:
    width, height = kw.pop("width", WIDTH), kw.pop("height", HEIGHT)
    return engine.generate(
        image=kw.pop("image", None) or Image.new("RGB", (width, height), (200, 120, 40)),
        prompt=kw.pop("prompt", "a cat dancing"),
        negative_prompt="blurry",
        width=width,
        height=height,
        num_frames=num_frames,
        infer_steps=steps,
        guidance_scale=kw.pop("guidance_scale", 3.0),
        seed=seed,
        on_step=kw.pop("report", lambda step, total: None),
        cancelled=kw.pop("cancelled", threading.Event()),
    )


def run_job(engine: Engine, job: Any, report: Any = None, cancelled: threading.Event | None = None) -> Any:
    """`engine.run`, returning the error it raised instead of raising it."""
    try:
        return engine.run(job, on_step=report or Recorder(), cancelled=cancelled or threading.Event())
    except Exception as exc:  # noqa: BLE001 (the test looks at which error it was)
        return exc


# --- the demo checkpoint ------------------------------------------------------------------------------------------


def test_demo_checkpoint_is_small_complete_and_idempotent(demo_checkpoint: Path) -> None:
    assert demo.is_complete(demo_checkpoint)
    size = sum(f.stat().st_size for f in demo_checkpoint.rglob("*") if f.is_file())
    assert size < 1_000_000
    info = json.loads((demo_checkpoint / "i2v_model.json").read_text())
    assert info == {
        "id": "wan2.1-i2v-14b-480p-demo", "native_area": 15360, "size_multiple": 16, "fps": 16,
        "sizes": ["160x96", "96x160"], "max_frames": 121, "last_image": "none", "experts": 1, "boundary_ratio": None,
        "default_infer_steps": 40, "default_guidance_scale": 5.0, "default_guidance_scale_2": None, "memory_gib": None,
    }  # fmt: skip
    index = json.loads((demo_checkpoint / "model_index.json").read_text())
    assert index["_class_name"] == "WanImageToVideoPipeline"
    before = (demo_checkpoint / "model_index.json").stat().st_mtime_ns
    assert demo.ensure(demo_checkpoint) is False  # already complete: nothing rebuilt
    assert (demo_checkpoint / "model_index.json").stat().st_mtime_ns == before
    assert not [p for p in demo_checkpoint.parent.iterdir() if p.name.endswith(".tmp")]


def test_demo_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "somebody.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="not a complete demo checkpoint"):
        demo.ensure(tmp_path)
    assert (tmp_path / "somebody.txt").exists()


def test_engine_loads_the_demo(engine: Engine) -> None:
    info = engine.describe()
    assert (info.model.id, info.model.native_area, info.model.size_multiple, info.model.fps) == (
        "wan2.1-i2v-14b-480p-demo", 15360, 16, 16,
    )  # fmt: skip
    assert (info.cpu_offload, info.vae_tiling) == (False, False)
    assert (info.device, info.dtype, info.slots) == ("cpu", "float32", 2)
    assert info.free_bytes is None and info.bytes_per_token is None
    assert (info.speed.preset, info.speed.compile, info.speed.cache_threshold) == ("quality", False, None)
    scheduler = engine.pipe.scheduler
    assert type(scheduler).__name__ == "UniPCMultistepScheduler"
    assert scheduler.config.flow_shift == 3.0 and scheduler.config.use_flow_sigmas
    assert torch.get_num_threads() == 1


def test_views_share_weights_but_not_per_run_state(engine: Engine) -> None:
    views = [engine._views.get(), engine._views.get()]
    try:
        a, b = views
        assert a is not b and a.scheduler is not b.scheduler and a.tokenizer is not b.tokenizer
        for name in ("transformer", "text_encoder", "image_encoder"):
            assert getattr(a, name) is getattr(engine.pipe, name) is getattr(b, name)
        assert a.vae is not b.vae
        pa = dict(a.vae.named_parameters())
        pb = dict(b.vae.named_parameters())
        assert pa.keys() == pb.keys() and all(pa[k] is pb[k] for k in pa)
    finally:
        for view in views:
            engine._views.put(view)


# --- jobs ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("asked", "made"), [(24, 25), (50, 49), (81, 81), (120, 121), (1, 1), (5, 5), (8, 9)])
def test_frame_count(asked: int, made: int) -> None:
    assert frame_count(asked) == made


def test_frame_rounding_in_a_real_run(engine: Engine) -> None:
    frames = generate(engine, num_frames=24, steps=2, width=32, height=32)
    assert frames.shape == (25, 32, 32, 3) and frames.dtype == np.uint8


def test_same_seed_same_frames_different_seed_different_frames(engine: Engine) -> None:
    first = generate(engine, seed=7)
    assert first.shape == (9, HEIGHT, WIDTH, 3)
    assert np.array_equal(first, generate(engine, seed=7))
    assert not np.array_equal(first, generate(engine, seed=8))


def test_same_seed_same_frames_across_processes(engine: Engine, demo_checkpoint: Path) -> None:
    script = (
        "import hashlib, threading, sys\n"
        "from PIL import Image\n"
        "from i2v_worker.pipeline import Engine\n"
        "from i2v_worker.settings import Settings\n"
        f"e = Engine.load(Settings(model_path={str(demo_checkpoint)!r}, device='cpu', slots=1))\n"
        f"img = Image.new('RGB', ({WIDTH}, {HEIGHT}), (200, 120, 40))\n"
        f"f = e.generate(image=img, prompt='a cat dancing', negative_prompt='blurry', width={WIDTH}, height={HEIGHT},"
        " num_frames=9, infer_steps=3, guidance_scale=3.0, seed=11, on_step=lambda s, t: None,"
        " cancelled=threading.Event())\n"
        "print(hashlib.sha256(f.tobytes()).hexdigest())\n"
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    here = hashlib.sha256(generate(engine, seed=11).tobytes()).hexdigest()
    assert child.stdout.strip().splitlines()[-1] == here


def test_progress_on_every_step(engine: Engine) -> None:
    recorder = Recorder()
    generate(engine, steps=5, report=recorder)
    assert recorder.steps == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


@needs_ffmpeg
def test_run_writes_the_video_and_reports_it(engine: Engine, image_file: Callable[..., Path], tmp_path: Path) -> None:
    output = tmp_path / "out.mp4"
    recorder = Recorder()
    result = engine.run(make_job(image_file(), output, num_frames=10, infer_steps=2), on_step=recorder,
                        cancelled=threading.Event())  # fmt: skip
    assert isinstance(result, GenerationResult), result
    assert (result.path, result.width, result.height, result.num_frames, result.fps, result.seed) == (
        str(output), WIDTH, HEIGHT, 9, 16, 42,
    )  # fmt: skip
    assert (result.infer_steps, result.guidance_scale) == (2, 3.0)  # the quality preset runs what the job asked
    assert result.inference_seconds > 0 and result.encode_seconds > 0
    assert output.stat().st_size > 0
    assert recorder.steps == [(1, 2), (2, 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.png", "out.mp4"]


def test_cancel_stops_at_the_next_step_and_writes_nothing(
    engine: Engine, image_file: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import AutoencoderKLWan

    decodes: list[int] = []
    original_decode = AutoencoderKLWan.decode

    def counting_decode(self: Any, *args: Any, **kwargs: Any) -> Any:
        decodes.append(1)
        return original_decode(self, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKLWan, "decode", counting_decode)
    cancelled = threading.Event()
    recorder = Recorder()

    def report(step: int, total: int) -> None:
        recorder(step, total)
        if step == 3:
            cancelled.set()

    output = tmp_path / "out.mp4"
    result = run_job(engine, make_job(image_file(), output, infer_steps=30), report, cancelled)
    assert isinstance(result, Cancelled) and str(result) == "cancelled at step 4 of 30"
    assert recorder.steps == [(1, 30), (2, 30), (3, 30)]
    assert decodes == []  # the VAE decode never ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.png"]


def test_cancel_before_start(engine: Engine, image_file: Callable[..., Path], tmp_path: Path) -> None:
    cancelled = threading.Event()
    cancelled.set()
    result = run_job(engine, make_job(image_file(), tmp_path / "out.mp4"), cancelled=cancelled)
    assert isinstance(result, Cancelled) and str(result) == "cancelled at step 0 of 3"


@pytest.mark.parametrize(
    "failure",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried"
            " to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"
        ),
        MemoryError(),
    ],
    ids=["cuda", "cpu", "python"],
)
def test_out_of_memory_is_reported_and_the_worker_goes_on(
    engine: Engine,
    image_file: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: BaseException,
) -> None:
    from diffusers import WanTransformer3DModel

    original_forward = WanTransformer3DModel.forward
    calls: list[int] = []

    def failing_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:  # fails in the middle of the second step
            raise failure
        return original_forward(self, *args, **kwargs)

    monkeypatch.setattr(WanTransformer3DModel, "forward", failing_forward)
    image = image_file()
    result = run_job(engine, make_job(image, tmp_path / "a.mp4"))
    assert isinstance(result, OutOfMemory) and str(result) == OOM_MESSAGE
    assert "resolution" in str(result) and "num_frames" in str(result)
    assert not (tmp_path / "a.mp4").exists()

    monkeypatch.setattr(WanTransformer3DModel, "forward", original_forward)
    after = run_job(engine, make_job(image, tmp_path / "b.mp4", num_frames=5, infer_steps=2))
    if isinstance(after, Exception):  # without ffmpeg the encode fails; the pipeline itself must have run
        assert "ffmpeg" in str(after)
    else:
        assert isinstance(after, GenerationResult) and after.num_frames == 5


def test_internal_error_is_reported_and_the_worker_goes_on(
    engine: Engine, image_file: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import WanImageToVideoPipeline

    def boom(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(WanImageToVideoPipeline, "__call__", boom)
        result = run_job(engine, make_job(image_file(), tmp_path / "a.mp4"))
    assert isinstance(result, RuntimeError) and not isinstance(result, JobError) and str(result) == "boom"
    # Both views went back to the pool: two jobs can still run side by side.
    assert engine._views.qsize() == 2
    assert generate(engine, steps=1, num_frames=1).shape == (1, HEIGHT, WIDTH, 3)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda img, tmp: make_job(tmp / "missing.png", tmp / "o.mp4"), "image not found"),
        (lambda img, tmp: make_job(img(100, 100), tmp / "o.mp4"), "image is 100x100, expected 160x96"),
        (lambda img, tmp: make_job(img(150, 96), tmp / "o.mp4", width=150), "multiples of 16"),
        (lambda img, tmp: make_job(img(), tmp / "nodir" / "o.mp4"), "output directory does not exist"),
    ],
    ids=["missing", "wrong-size", "not-multiple", "no-output-dir"],
)
def test_bad_input(
    engine: Engine, image_file: Callable[..., Path], tmp_path: Path, make: Callable[..., Any], message: str
) -> None:
    result = run_job(engine, make(image_file, tmp_path))
    assert isinstance(result, BadInput)
    assert message in str(result)


def test_not_an_image_is_bad_input(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "input.png"
    path.write_bytes(b"not a png")
    result = run_job(engine, make_job(path, tmp_path / "o.mp4"))
    assert isinstance(result, BadInput)


def test_two_jobs_in_parallel_interleave_and_match_their_solo_frames(engine: Engine) -> None:
    steps = 8
    solo = {seed: generate(engine, seed=seed, steps=steps) for seed in (1, 2)}
    events: list[tuple[int, int]] = []
    lock = threading.Lock()
    # Each job waits at its first step for the other to reach its own: if the engine ran jobs one after another,
    # the barrier would break and both jobs would fail.
    barrier = threading.Barrier(2, timeout=60)
    results: dict[int, np.ndarray] = {}

    def job(seed: int) -> None:
        def report(step: int, total: int) -> None:
            with lock:
                events.append((seed, step))
            if step == 1:
                barrier.wait()

        results[seed] = generate(engine, seed=seed, steps=steps, report=report)

    threads = [threading.Thread(target=job, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(results) == {1, 2}
    for seed in (1, 2):
        assert np.array_equal(results[seed], solo[seed]), f"seed {seed}: parallel frames differ from solo frames"
    assert sorted(events) == [(s, i) for s in (1, 2) for i in range(1, steps + 1)]
    order = [seed for seed, _ in events]
    # Interleaved: each job reported progress before the other one finished.
    assert order.index(2) < len(order) - 1 - order[::-1].index(1)
    assert order.index(1) < len(order) - 1 - order[::-1].index(2)


def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {"I2V_MODEL_PATH": "/m", "I2V_WORKER_SLOTS": "3", "I2V_CPU_OFFLOAD": "1", "I2V_VAE_TILING": "0"}
    )
    assert settings == Settings(model_path="/m", device=None, slots=3, cpu_offload="on", vae_tiling=False)
    assert Settings.from_env({"I2V_MODEL": " wan2.2-ti2v-5b-demo ", "I2V_DEMO_DIR": "/d"}) == Settings(
        model="wan2.2-ti2v-5b-demo", demo_dir="/d"
    )
    with pytest.raises(ConfigurationError, match="I2V_MODEL_PATH is not set: set it, or I2V_MODEL"):
        Settings.from_env({})
    with pytest.raises(ConfigurationError, match="I2V_WORKER_SLOTS"):
        Settings.from_env({"I2V_MODEL_PATH": "/m", "I2V_WORKER_SLOTS": "0"})
    with pytest.raises(ConfigurationError, match="I2V_CPU_OFFLOAD"):
        Settings.from_env({"I2V_MODEL_PATH": "/m", "I2V_CPU_OFFLOAD": "maybe"})


def test_vae_tiling_and_cpu_offload_flags_load_on_cpu(demo_checkpoint: Path) -> None:
    tiled = Engine.load(Settings(model_path=str(demo_checkpoint), device="cpu", vae_tiling=True, cpu_offload="on"))
    assert tiled.pipe.vae.use_tiling
    assert not tiled.offload  # model CPU offload needs CUDA: ignored on the CPU
    assert generate(tiled, steps=1, num_frames=1).shape == (1, HEIGHT, WIDTH, 3)
