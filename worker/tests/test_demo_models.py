"""Every demo model end to end through the worker's loop, the last frame, and the A14B's switch of experts.

Each model runs through `serve` in this process (one engine per model, shared by the module's tests) and, once,
as `python -m i2v_worker` chosen by `I2V_MODEL` alone. Jobs are tiny: the model's demo size, 9 frames, 3 steps.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Session, needs_ffmpeg, needs_ffprobe, probe
from PIL import Image

from i2v_worker.models import MODELS
from i2v_worker.pipeline import Engine
from i2v_worker.settings import Settings

DEMOS = [spec.id for spec in MODELS.values() if spec.is_demo]
FRAMES, STEPS = 9, 3


@pytest.fixture(scope="module")
def engines(demo_checkpoints: Callable[[str], Path]) -> Iterator[Callable[[str], Engine]]:
    """One engine per demo model, loaded when a test first asks for it."""
    loaded: dict[str, Engine] = {}

    def get(model: str) -> Engine:
        if model not in loaded:
            loaded[model] = Engine.load(Settings(model=model, model_path=str(demo_checkpoints(model)), device="cpu"))
        return loaded[model]

    yield get
    loaded.clear()


def picture(path: Path, width: int, height: int, color: tuple[int, int, int]) -> Path:
    image = Image.new("RGB", (width, height), color)
    image.putdata([((x * 5 + color[0]) % 256, (y * 9) % 256, color[2]) for y in range(height) for x in range(width)])
    image.save(path)
    return path


def run_line(task_id: str, tmp_path: Path, model: str, **overrides: Any) -> str:
    width, height = MODELS[model].sizes[0]
    message: dict[str, Any] = {
        "type": "run", "task_id": task_id, "prompt": "a cat", "negative_prompt": "blurry", "width": width,
        "height": height, "num_frames": FRAMES, "infer_steps": STEPS, "seed": 42, "model": model,
        "image_path": str(picture(tmp_path / f"{task_id}-first.png", width, height, (200, 120, 40))),
        "output_path": str(tmp_path / f"{task_id}.mp4"),
    }  # fmt: skip
    if MODELS[model].last_image == "required":
        message["last_image_path"] = str(picture(tmp_path / f"{task_id}-last.png", width, height, (20, 60, 220)))
    message.update(overrides)
    return json.dumps({key: value for key, value in message.items() if value is not None})


def serve_jobs(engine: Engine, *lines: str) -> list[dict[str, Any]]:
    """Runs `lines` through the worker's loop on `engine`; every message it wrote, once the last job ended."""
    session = Session(lambda: engine)
    session.send(*lines)
    session.wait_for(lambda ms: sum(m["type"] in ("done", "error") for m in ms) == len(lines), timeout=120)
    session.close()
    assert session.finish(timeout=30) == 0
    return session.messages()  # type: ignore[return-value]


def ends(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] in ("done", "error")]


@needs_ffmpeg
@needs_ffprobe
@pytest.mark.parametrize("model", DEMOS)
def test_each_demo_model_makes_its_video(model: str, engines: Callable[[str], Engine], tmp_path: Path) -> None:
    spec = MODELS[model]
    messages = serve_jobs(engines(model), run_line("a", tmp_path, model))
    ready = messages[0]
    assert ready["type"] == "ready" and ready["model"]["id"] == model
    assert (ready["model"]["fps"], ready["model"]["max_frames"], ready["model"]["last_image"]) == (
        spec.fps, spec.max_frames, spec.last_image,
    )  # fmt: skip
    assert (ready["model"]["experts"], ready["model"]["default_infer_steps"]) == (spec.experts, spec.infer_steps)
    done = ends(messages)[0]
    assert done["type"] == "done", done
    width, height = spec.sizes[0]
    assert (done["model"], done["width"], done["height"], done["num_frames"], done["fps"]) == (
        model, width, height, FRAMES, spec.fps,
    )  # fmt: skip
    assert probe(Path(done["path"])) == {"codec": "h264", "width": width, "height": height, "frames": FRAMES,
                                         "fps": spec.fps}  # fmt: skip
    progress = [m for m in messages if m["type"] == "progress"]
    assert [m["step"] for m in progress] == [1, 2, 3]
    if spec.experts == 2:
        assert all(m["expert"] in ("high_noise", "low_noise") for m in progress)
        assert done["guidance_scale_2"] == spec.guidance_scale_2  # the job gave none: the model's
    else:
        assert all("expert" not in m for m in progress) and "guidance_scale_2" not in done
    assert done["guidance_scale"] == spec.guidance_scale  # the job gave none: the model's


def test_the_models_defaults_fill_what_a_job_leaves_out(engines: Callable[[str], Engine]) -> None:
    engine = engines("wan2.2-i2v-a14b-demo")
    assert (engine.job_steps(None), engine.job_guidance(None), engine.job_guidance_2(None, None)) == (40, 3.5, 3.5)
    assert (engine.job_steps(7), engine.job_guidance(2.0), engine.job_guidance_2(2.0, None)) == (7, 2.0, 2.0)
    assert engine.job_guidance_2(2.0, 4.5) == 4.5
    assert engines("wan2.2-ti2v-5b-demo").job_guidance_2(2.0, None) is None


# --- the last frame -----------------------------------------------------------------------------------------------


def generate(engine: Engine, model: str, **options: Any) -> np.ndarray:
    width, height = MODELS[model].sizes[0]
    return engine.generate(
        image=Image.new("RGB", (width, height), (200, 120, 40)), prompt="a cat", negative_prompt="", width=width,
        height=height, num_frames=FRAMES, infer_steps=STEPS, guidance_scale=3.0, seed=7,
        on_step=lambda step, total: None, cancelled=threading.Event(), **options,
    )  # fmt: skip


def test_the_same_seed_with_a_last_frame_makes_another_video(engines: Callable[[str], Engine]) -> None:
    model = "wan2.2-i2v-a14b-demo"
    engine = engines(model)
    width, height = MODELS[model].sizes[0]
    last = Image.new("RGB", (width, height), (20, 60, 220))
    without = generate(engine, model)
    assert np.array_equal(without, generate(engine, model))
    ending = generate(engine, model, last_image=last)
    assert ending.shape == without.shape and not np.array_equal(ending, without)
    assert np.array_equal(ending, generate(engine, model, last_image=last))


def test_flf2v_conditions_on_both_frames(engines: Callable[[str], Engine]) -> None:
    model = "wan2.1-flf2v-14b-720p-demo"
    engine = engines(model)
    width, height = MODELS[model].sizes[0]
    blue = generate(engine, model, last_image=Image.new("RGB", (width, height), (20, 60, 220)))
    red = generate(engine, model, last_image=Image.new("RGB", (width, height), (220, 20, 20)))
    assert not np.array_equal(blue, red)


@pytest.mark.parametrize(
    ("model", "overrides", "message"),
    [
        ("wan2.1-i2v-14b-480p-demo", {"last_image_path": "LAST"},
         "last_image_path: wan2.1-i2v-14b-480p-demo cannot end on a given frame, it takes a first frame only"),
        ("wan2.2-ti2v-5b-demo", {"last_image_path": "LAST"},
         "last_image_path: wan2.2-ti2v-5b-demo cannot end on a given frame"),
        ("wan2.1-flf2v-14b-720p-demo", {"last_image_path": None},
         "last_image_path is required: wan2.1-flf2v-14b-720p-demo makes a video from a first and a last frame"),
        ("wan2.2-i2v-a14b-demo", {"last_image_path": "SMALL"}, "last image is 32x32, expected 224x128"),
        ("wan2.2-i2v-a14b-demo", {"last_image_path": "MISSING"}, "last image not found: "),
        ("wan2.1-i2v-14b-720p-demo", {"guidance_scale_2": 2.0},
         "guidance_scale_2 is for models with two experts; wan2.1-i2v-14b-720p-demo has one transformer"),
        ("wan2.2-i2v-a14b-demo", {"num_frames": 125}, "num_frames 125 makes 125 frames; wan2.2-i2v-a14b-demo makes at most 121"),
        ("wan2.2-ti2v-5b-demo", {"width": 208}, "width and height must be multiples of 32, got 208x128"),
    ],
    ids=["480p-last", "ti2v-last", "flf2v-without", "last-size", "last-missing", "guidance-2", "frames", "multiple"],
)  # fmt: skip
def test_what_a_model_cannot_make_is_bad_input_naming_the_field(
    model: str, overrides: dict[str, Any], message: str, engines: Callable[[str], Engine], tmp_path: Path
) -> None:
    width, height = MODELS[model].sizes[0]
    paths = {
        "LAST": str(picture(tmp_path / "last.png", width, height, (0, 0, 0))),
        "SMALL": str(picture(tmp_path / "small.png", 32, 32, (0, 0, 0))),
        "MISSING": str(tmp_path / "missing.png"),
    }
    if overrides.get("last_image_path") in paths:
        overrides = {**overrides, "last_image_path": paths[overrides["last_image_path"]]}
    error = ends(serve_jobs(engines(model), run_line("a", tmp_path, model, **overrides)))[0]
    assert (error["type"], error["kind"]) == ("error", "bad_input") and message in error["message"], error
    assert not (tmp_path / "a.mp4").exists()


# --- the A14B's two experts ---------------------------------------------------------------------------------------


def expected_experts(engine: Engine, steps: int, boundary: float) -> list[str]:
    """The pipeline's rule, from the scheduler's own timesteps: the high-noise expert for t >= boundary x 1000."""
    scheduler = engine._scheduler_class.from_config(engine._scheduler_config)
    scheduler.set_timesteps(steps)
    limit = boundary * scheduler.config.num_train_timesteps
    return ["high_noise" if t >= limit else "low_noise" for t in scheduler.timesteps.tolist()]


def experts_of(engine: Engine, steps: int) -> tuple[list[str], list[int]]:
    """The expert each step ran on, as the step reports say, and how often each transformer's forward ran."""
    width, height = 96, 160
    current: list[str] = []
    per_step: list[str] = []
    calls = {"transformer": 0, "transformer_2": 0}
    handles = [
        getattr(engine.pipe, name).register_forward_pre_hook(lambda m, a, name=name: calls.__setitem__(name, calls[name] + 1))
        for name in calls
    ]  # fmt: skip
    try:
        engine.generate(
            image=Image.new("RGB", (width, height), (1, 2, 3)), prompt="a cat", negative_prompt="", width=width,
            height=height, num_frames=5, infer_steps=steps, guidance_scale=3.0, seed=1,
            on_step=lambda step, total: per_step.append(current[-1]), cancelled=threading.Event(),
            on_expert=current.append, decode=False,
        )  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    return per_step, [calls["transformer"], calls["transformer_2"]]


def test_a14b_switches_experts_at_the_configured_boundary(engines: Callable[[str], Engine]) -> None:
    engine = engines("wan2.2-i2v-a14b-demo")
    assert engine.pipe.config.boundary_ratio == 0.9
    steps = 8
    per_step, calls = experts_of(engine, steps)
    expected = expected_experts(engine, steps, 0.9)
    assert per_step == expected
    high = expected.count("high_noise")
    assert 0 < high < steps  # both experts ran
    assert calls == [2 * high, 2 * (steps - high)]  # two calls a step (with and without the prompt)


def test_the_boundary_is_read_from_the_checkpoint(demo_checkpoints: Callable[[str], Path], tmp_path: Path) -> None:
    moved = tmp_path / "a14b"
    shutil.copytree(demo_checkpoints("wan2.2-i2v-a14b-demo"), moved)
    index = json.loads((moved / "model_index.json").read_text())
    (moved / "model_index.json").write_text(json.dumps({**index, "boundary_ratio": 0.6}))
    engine = Engine.load(Settings(model_path=str(moved), device="cpu"))
    assert engine.describe().model.boundary_ratio == 0.6
    per_step, _ = experts_of(engine, 8)
    assert per_step == expected_experts(engine, 8, 0.6) != expected_experts(engine, 8, 0.9)


def test_a_one_expert_model_reports_no_expert(engines: Callable[[str], Engine]) -> None:
    heard: list[str] = []
    generate(engines("wan2.1-i2v-14b-720p-demo"), "wan2.1-i2v-14b-720p-demo", on_expert=heard.append)
    assert heard == []


def test_two_jobs_at_once_on_the_a14b_each_switch_on_their_own(demo_checkpoints: Callable[[str], Path]) -> None:
    engine = Engine.load(Settings(model_path=str(demo_checkpoints("wan2.2-i2v-a14b-demo")), device="cpu", slots=2))
    results: dict[int, list[str]] = {}
    barrier = threading.Barrier(2, timeout=60)

    def job(steps: int) -> None:
        current: list[str] = []
        per_step: list[str] = []

        def on_step(step: int, total: int) -> None:
            per_step.append(current[-1])
            if step == 1:
                barrier.wait()

        engine.generate(
            image=Image.new("RGB", (96, 160), (1, 2, 3)), prompt="a cat", negative_prompt="", width=96, height=160,
            num_frames=5, infer_steps=steps, guidance_scale=3.0, seed=1, on_step=on_step,
            cancelled=threading.Event(), on_expert=current.append, decode=False,
        )  # fmt: skip
        results[steps] = per_step

    threads = [threading.Thread(target=job, args=(steps,)) for steps in (4, 10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == {steps: expected_experts(engine, steps, 0.9) for steps in (4, 10)}


# --- start-up -----------------------------------------------------------------------------------------------------


def test_a_corrupt_checkpoint_makes_the_worker_refuse_with_the_reason(
    demo_checkpoints: Callable[[str], Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(demo_checkpoints("wan2.2-ti2v-5b-demo"), broken)
    (broken / "vae" / "config.json").write_text('{"z_dim": 48')
    session = Session(lambda: Engine.load(Settings(model_path=str(broken), device="cpu")))
    session.wait_for(lambda ms: len(ms) == 1)
    fatal = session.messages()[0]
    assert fatal["type"] == "fatal"
    assert str(fatal["message"]).startswith(f"cannot start: checkpoint {broken}: vae/config.json cannot be read")
    session.send(json.dumps({"type": "shutdown"}))
    assert session.finish() == 1


def test_a_mismatched_checkpoint_makes_the_worker_refuse_with_the_reason(
    demo_checkpoints: Callable[[str], Path],
) -> None:
    path = demo_checkpoints("wan2.1-i2v-14b-480p-demo")

    def load() -> Engine:
        return Engine.load(Settings(model="wan2.2-ti2v-5b-demo", model_path=str(path), device="cpu"))

    session = Session(load)
    session.wait_for(lambda ms: len(ms) == 1)
    assert session.messages() == [{
        "type": "fatal",
        "message": f"cannot start: checkpoint {path} is wan2.1-i2v-14b-480p-demo (by its i2v_model.json), not"
        " I2V_MODEL=wan2.2-ti2v-5b-demo",
    }]  # fmt: skip
    session.close()
    assert session.finish() == 1


@needs_ffmpeg
def test_i2v_model_alone_serves_a_demo_from_a_fresh_process(tmp_path: Path) -> None:
    """`I2V_MODEL=wan2.2-ti2v-5b-demo` and nothing else: the worker builds the demo and serves it."""
    from test_e2e import Worker

    demos = tmp_path / "demos"
    worker = Worker(tmp_path, I2V_MODEL="wan2.2-ti2v-5b-demo", I2V_DEMO_DIR=str(demos))
    try:
        ready = worker.next(timeout=120)
        assert (ready["type"], ready["model"]["id"], ready["model"]["size_multiple"]) == (
            "ready", "wan2.2-ti2v-5b-demo", 32,
        )  # fmt: skip
        worker.send(run_line("a", tmp_path, "wan2.2-ti2v-5b-demo", infer_steps=2))
        done = worker.until(lambda m: m["type"] in ("done", "error"))[-1]
        assert (done["type"], done["fps"], done["model"]) == ("done", 24, "wan2.2-ti2v-5b-demo"), done
        worker.send({"type": "shutdown"})
        assert worker.wait() == 0
    finally:
        worker.close()
    assert (demos / "wan2.2-ti2v-5b-demo" / "i2v_model.json").is_file()
