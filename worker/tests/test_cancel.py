"""Phases and cancels inside them: a job reports each phase it enters, and a cancel stops it inside the text and
image encoders, the VAE encode and decode and the MP4 encode, not only between denoising steps, without touching
a job that runs beside it on the same pipeline."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Recorder, make_job, needs_ffmpeg
from PIL import Image

from i2v_worker.encode import encode_mp4
from i2v_worker.errors import Cancelled
from i2v_worker.jobs import GenerationResult
from i2v_worker.phases import JobContext, install_hooks
from i2v_worker.pipeline import Engine

PHASES = ["encode_prompt", "encode_image", "denoise", "decode", "encode_video"]
STEPS = 3
NUM_FRAMES = 9  # 3 latent frames: the VAE decoder is called 3 times, its encoder 3 times (1 + 4 + 4 frames)


class Calls:
    """Counts the calls of a module that started and that finished, by the name of the calling thread."""

    def __init__(self) -> None:
        self.started: dict[str, int] = {}
        self.finished: dict[str, int] = {}
        self.lock = threading.Lock()

    def start(self, module: Any, args: Any) -> None:
        with self.lock:
            name = threading.current_thread().name
            self.started[name] = self.started.get(name, 0) + 1

    def finish(self, module: Any, args: Any, output: Any) -> None:
        with self.lock:
            name = threading.current_thread().name
            self.finished[name] = self.finished.get(name, 0) + 1


@contextmanager
def hooked(
    module: Any, pre: Callable[..., Any] | None = None, post: Callable[..., Any] | None = None
) -> Iterator[None]:
    """Test hooks on `module` for the length of the block (after the engine's own, which run first)."""
    handles = []
    if pre is not None:
        handles.append(module.register_forward_pre_hook(pre))
    if post is not None:
        handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_job(engine: Engine, job: Any, cancelled: threading.Event, phases: list[str], events: list[Any]) -> Any:
    """`engine.run` with its phases and steps recorded, returning the error it raised instead of raising it."""

    def on_step(step: int, total: int) -> None:
        events.append(("step", step))

    def on_phase(phase: str) -> None:
        phases.append(phase)
        events.append(("phase", phase))

    try:
        return engine.run(job, on_step=on_step, cancelled=cancelled, on_phase=on_phase)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 (the test looks at which error it was)
        return exc


def test_hooks_are_installed_once(engine: Engine) -> None:
    assert install_hooks(engine.pipe) == 0  # the engine put them in place; a second call adds none
    vae = engine.pipe.vae
    decoder_hooks = sum(len(m._forward_pre_hooks) for m in vae.decoder.modules())
    assert decoder_hooks > 10  # the root and every block of the decoder
    assert not any(m._forward_pre_hooks for m in engine.pipe.transformer.blocks.modules())  # step boundaries there


def test_a_cancel_stops_only_the_thread_whose_job_it_is(engine: Engine) -> None:
    import torch

    encoder = engine.pipe.text_encoder
    ids = torch.zeros((1, 4), dtype=torch.long)
    cancelled = threading.Event()
    cancelled.set()
    other: list[Any] = []

    def elsewhere() -> None:
        with torch.no_grad():
            other.append(encoder(ids).last_hidden_state.shape)  # no job on this thread: the hooks do nothing

    with JobContext(cancelled, 7).active(), torch.no_grad():
        with pytest.raises(Cancelled, match=r"^cancelled at step 0 of 7 \(encode_prompt\)$"):
            encoder(ids)
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(30)
    assert other == [torch.Size([1, 4, encoder.config.d_model])]
    with torch.no_grad():
        encoder(ids)  # the context is gone with its block


@needs_ffmpeg
def test_phases_are_reported_in_order_once_each(
    engine: Engine, image_file: Callable[..., Path], tmp_path: Path
) -> None:
    phases: list[str] = []
    events: list[Any] = []
    job = make_job(image_file(), tmp_path / "a.mp4", num_frames=NUM_FRAMES, infer_steps=STEPS)
    result = run_job(engine, job, threading.Event(), phases, events)
    assert isinstance(result, GenerationResult), result
    assert phases == PHASES
    assert events == [
        ("phase", "encode_prompt"), ("phase", "encode_image"), ("phase", "denoise"),
        ("step", 1), ("step", 2), ("step", 3), ("phase", "decode"), ("phase", "encode_video"),
    ]  # fmt: skip


@needs_ffmpeg
@pytest.mark.parametrize(
    ("phase", "message"),
    [
        ("encode_prompt", "cancelled at step 0 of 3 (encode_prompt)"),
        ("encode_image", "cancelled at step 0 of 3 (encode_image)"),
        ("denoise", "cancelled at step 1 of 3"),
        ("decode", "cancelled at step 3 of 3 (decode)"),
        ("encode_video", "cancelled at step 3 of 3 (encode_video)"),
    ],
)
def test_a_cancel_in_any_phase_ends_the_job_cancelled_there(
    engine: Engine, image_file: Callable[..., Path], tmp_path: Path, phase: str, message: str
) -> None:
    cancelled = threading.Event()
    phases: list[str] = []
    events: list[Any] = []

    def on_phase(entered: str) -> None:
        phases.append(entered)
        if entered == phase:
            cancelled.set()

    job = make_job(image_file(), tmp_path / "a.mp4", num_frames=NUM_FRAMES, infer_steps=STEPS)
    try:
        result: Any = engine.run(job, on_step=lambda s, t: events.append(s), cancelled=cancelled, on_phase=on_phase)  # type: ignore[arg-type]
    except Cancelled as exc:
        result = exc
    assert isinstance(result, Cancelled) and str(result) == message
    assert phases == PHASES[: PHASES.index(phase) + 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.png"]  # no video, no temporary file


def test_a_cancel_inside_the_vae_encode_stops_it(
    engine: Engine, image_file: Callable[..., Path], tmp_path: Path
) -> None:
    vae = engine.pipe.vae
    encoder = Calls()
    transformer = Calls()
    cancelled = threading.Event()

    def cancel_once_started(module: Any, args: Any) -> None:
        cancelled.set()  # inside the encoder's first call: its first block's hook sees it

    job = make_job(image_file(), tmp_path / "a.mp4", num_frames=NUM_FRAMES, infer_steps=STEPS)
    with (
        hooked(vae.encoder, pre=encoder.start, post=encoder.finish),
        hooked(vae.encoder.conv_in, pre=cancel_once_started),
        hooked(engine.pipe.transformer, pre=transformer.start),
    ):
        result = run_job(engine, job, cancelled, [], [])
    assert isinstance(result, Cancelled) and str(result) == "cancelled at step 0 of 3 (encode_image)"
    assert sum(encoder.started.values()) == 1 and not encoder.finished  # 1 of its 3 chunks started, none done
    assert not transformer.started


@needs_ffmpeg
def test_a_cancel_inside_the_vae_decode_stops_it_and_spares_the_job_beside_it(
    engine: Engine, image_file: Callable[..., Path], tmp_path: Path
) -> None:
    decoder = engine.pipe.vae.decoder
    calls = Calls()
    events = {"a": threading.Event(), "b": threading.Event()}
    phases: dict[str, list[str]] = {"a": [], "b": []}
    results: dict[str, Any] = {}
    # Both jobs meet at the start of their first decoder call, so they are decoding at the same time, in the same
    # modules, when job a is cancelled.
    barrier = threading.Barrier(2, timeout=60)

    def meet(module: Any, args: Any) -> None:
        name = threading.current_thread().name
        if calls.started.get(name) == 1:
            barrier.wait()

    def cancel_a_once_decoding(module: Any, args: Any) -> None:
        if threading.current_thread().name == "a":
            events["a"].set()  # inside a's decoder call: the next block's hook stops it

    image = image_file()

    def job(name: str) -> None:
        work = make_job(image, tmp_path / f"{name}.mp4", task_id=name * 32, num_frames=NUM_FRAMES, infer_steps=STEPS)
        results[name] = run_job(engine, work, events[name], phases[name], [])

    with (
        hooked(decoder, pre=calls.start, post=calls.finish),
        hooked(decoder, pre=meet),
        hooked(decoder.mid_block, pre=cancel_a_once_decoding),
    ):
        threads = [threading.Thread(target=job, args=(name,), name=name) for name in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not any(t.is_alive() for t in threads)

    a, b = results["a"], results["b"]
    assert isinstance(a, Cancelled) and str(a) == "cancelled at step 3 of 3 (decode)"
    assert (calls.started["a"], calls.finished.get("a", 0)) == (1, 0)  # stopped inside its first latent frame
    assert phases["a"] == PHASES[:4]
    assert not (tmp_path / "a.mp4").exists()

    assert isinstance(b, GenerationResult) and b.num_frames == NUM_FRAMES, b
    assert (calls.started["b"], calls.finished["b"]) == (3, 3)  # a whole decode: one call per latent frame
    assert phases["b"] == PHASES
    assert (tmp_path / "b.mp4").read_bytes()[4:8] == b"ftyp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.mp4", "input.png"]


def test_a_cancelled_decode_leaves_the_views_clean(
    engine: Engine, image_file: Callable[..., Path], tmp_path: Path
) -> None:
    """After a cancel inside the decode, the view's VAE holds no cached activations and the next job is whole."""
    cancelled = threading.Event()
    job = make_job(image_file(), tmp_path / "a.mp4", num_frames=NUM_FRAMES, infer_steps=STEPS)
    with hooked(engine.pipe.vae.decoder.mid_block, pre=lambda m, a: cancelled.set()):
        result = run_job(engine, job, cancelled, [], [])
    assert isinstance(result, Cancelled)
    views = [engine._views.get(), engine._views.get()]
    try:
        for view in views:
            assert all(entry is None for entry in view.vae._feat_map)
    finally:
        for view in views:
            engine._views.put(view)
    recorder = Recorder()
    frames = engine.generate(
        image=Image.new("RGB", (160, 96)), prompt="p", negative_prompt="", width=160, height=96,
        num_frames=NUM_FRAMES, infer_steps=2, guidance_scale=3.0, seed=1, on_step=recorder,
        cancelled=threading.Event(),
    )  # fmt: skip
    assert frames.shape == (NUM_FRAMES, 96, 160, 3) and recorder.steps == [(1, 2), (2, 2)]


# --- the MP4 encode -----------------------------------------------------------------------------------------------


class Stop(Exception):
    pass


@needs_ffmpeg
def test_encode_mp4_stops_on_cancel_and_leaves_nothing(tmp_path: Path) -> None:
    frames = np.zeros((48, 240, 320, 3), dtype=np.uint8)  # 11 MB: 11 writes of 1 MiB to ffmpeg
    checks: list[int] = []

    def check() -> None:
        checks.append(1)
        if len(checks) == 3:
            raise Stop

    with pytest.raises(Stop):
        encode_mp4(frames, tmp_path / "clip.mp4", fps=16, check=check)
    assert len(checks) == 3  # stopped at the third check, not at the end of the encode
    assert list(tmp_path.iterdir()) == []


@needs_ffmpeg
def test_encode_mp4_checks_while_ffmpeg_finishes(tmp_path: Path) -> None:
    frames = np.zeros((4, 16, 16, 3), dtype=np.uint8)  # one write: then only the wait for ffmpeg is left
    checks: list[int] = []

    def check() -> None:
        checks.append(1)
        if len(checks) > 1:
            raise Stop

    # Either ffmpeg finished within its first poll, or the check in the wait stopped it: never a half-written file.
    try:
        encode_mp4(frames, tmp_path / "clip.mp4", fps=16, check=check)
    except Stop:
        assert list(tmp_path.iterdir()) == []
    else:
        assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
