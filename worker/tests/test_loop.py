"""The main loop, with a fake runner (no model, no torch): jobs, progress, cancel, refusals, shutdown, start-up failures."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import Session

from i2v_worker.errors import BadInput, Cancelled, OutOfMemory
from i2v_worker.jobs import EngineInfo, ExpertCallback, GenerationResult, Job, PhaseCallback, SpeedPlan, StepCallback
from i2v_worker.loop import LineWriter, classify
from i2v_worker.messages import Progress, parse_line
from i2v_worker.metadata import ModelInfo
from i2v_worker.settings import ConfigurationError

QUALITY = SpeedPlan(
    preset="quality", compile=False, cache_threshold=None, fp8=False, lora_path=None, infer_steps=None,
    guidance_scale=None,
)  # fmt: skip


class FakeRunner:
    """Each job reports its phases and `steps` progress lines, one per `step_seconds`, and honours cancel between
    steps."""

    def __init__(
        self, slots: int = 2, steps: int = 3, step_seconds: float = 0.01, switch_at: int | None = None
    ) -> None:
        self.slots = slots
        self.steps = steps
        self.step_seconds = step_seconds
        self.switch_at = switch_at  # two experts: the first step on the low-noise one
        self.started: list[str] = []

    def describe(self) -> EngineInfo:
        return EngineInfo(
            model=ModelInfo(id="fake", native_area=256, size_multiple=16, fps=16, experts=2 if self.switch_at else 1),
            device="cpu",
            dtype="float32",
            slots=self.slots,
            free_bytes=None,
            bytes_per_token=None,
            speed=QUALITY,
        )

    def run(
        self,
        job: Job,
        *,
        on_step: StepCallback,
        cancelled: threading.Event,
        on_phase: PhaseCallback,
        on_expert: ExpertCallback,
    ) -> GenerationResult:
        self.started.append(job.task_id)
        if job.prompt == "raise":
            raise RuntimeError("runner bug")
        on_phase("encode_prompt")
        on_phase("encode_image")
        if job.prompt == "oom":
            raise OutOfMemory()
        on_phase("denoise")
        for step in range(1, self.steps + 1):
            time.sleep(self.step_seconds)
            if cancelled.is_set():
                raise Cancelled(step, self.steps)
            if self.switch_at is not None:
                on_expert("high_noise" if step < self.switch_at else "low_noise")
            on_step(step, self.steps)
        on_phase("decode")
        on_phase("encode_video")
        return GenerationResult(
            model="fake", path=job.output_path, width=job.width, height=job.height, num_frames=job.num_frames, fps=16,
            seed=job.seed, infer_steps=self.steps, guidance_scale=job.guidance_scale, inference_seconds=0.1,
            encode_seconds=0.0,
        )  # fmt: skip


def run_line(task_id: str, **overrides: object) -> str:
    message: dict[str, object] = {
        "type": "run", "task_id": task_id, "image_path": "/i.png", "prompt": "p", "width": 16, "height": 16,
        "num_frames": 5, "infer_steps": 3, "guidance_scale": 3.0, "seed": 1, "output_path": f"/out/{task_id}.mp4",
    }  # fmt: skip
    message.update(overrides)
    return json.dumps(message)


@pytest.fixture()
def session() -> Iterator[Callable[..., Session]]:
    def start(runner: FakeRunner | None = None) -> Session:
        return Session(lambda: runner or FakeRunner())

    yield start


def test_serve_runs_a_job_and_shuts_down(session: Callable[..., Session]) -> None:
    s = session()
    s.send(run_line("a"))
    s.wait_for(lambda ms: any(m["type"] == "done" for m in ms))
    s.send(json.dumps({"type": "shutdown"}))
    assert s.finish() == 0
    sequence = [(m["type"], m.get("phase") or m.get("step")) for m in s.messages()]
    assert sequence == [
        ("ready", None), ("phase", "encode_prompt"), ("phase", "encode_image"), ("phase", "denoise"),
        ("progress", 1), ("progress", 2), ("progress", 3), ("phase", "decode"), ("phase", "encode_video"),
        ("done", None),
    ]  # fmt: skip
    assert all(m["task_id"] == "a" for m in s.messages() if m["type"] == "phase")
    ready, done = s.messages()[0], s.messages()[-1]
    assert ready["speed"] == {
        "preset": "quality", "compiled": False, "cache_threshold": None, "fp8": False, "lora": None,
        "infer_steps": None, "guidance_scale": None,
    }  # fmt: skip
    assert (done["infer_steps"], done["guidance_scale"], done["model"]) == (3, 3.0, "fake")
    assert "guidance_scale_2" not in done and all("expert" not in m for m in s.messages())  # one expert


def test_progress_names_the_expert_of_each_step(session: Callable[..., Session]) -> None:
    s = session(FakeRunner(steps=4, switch_at=3))
    s.send(run_line("a"))
    s.wait_for(lambda ms: any(m["type"] == "done" for m in ms))
    s.close()
    assert s.finish() == 0
    progress = [(m["step"], m["expert"]) for m in s.messages() if m["type"] == "progress"]
    assert progress == [(1, "high_noise"), (2, "high_noise"), (3, "low_noise"), (4, "low_noise")]


def test_a_job_for_another_model_is_refused(session: Callable[..., Session]) -> None:
    runner = FakeRunner()
    s = session(runner)
    s.send(run_line("other", model="wan2.2-ti2v-5b"), run_line("mine", model="FAKE"))
    s.wait_for(lambda ms: any(m["type"] == "done" for m in ms))
    s.close()
    assert s.finish() == 0
    error = next(m for m in s.messages() if m["type"] == "error")
    assert error == {
        "type": "error", "task_id": "other", "kind": "internal",
        "message": "refused: this worker serves fake, not wan2.2-ti2v-5b",
    }  # fmt: skip
    assert runner.started == ["mine"]


def test_the_new_job_fields_reach_the_runner() -> None:
    from i2v_worker.loop import job_from
    from i2v_worker.messages import Run

    line = run_line("a", last_image_path="/last.png", guidance_scale_2=2.5, model="m")
    job = job_from(parse_line(line))  # type: ignore[arg-type]
    assert (job.last_image_path, job.guidance_scale_2, job.model) == ("/last.png", 2.5, "m")
    bare = parse_line(run_line("b", infer_steps=None, guidance_scale=None))
    assert isinstance(bare, Run) and (bare.infer_steps, bare.guidance_scale) == (None, None)  # the model's defaults


def test_serve_survives_bad_lines(session: Callable[..., Session]) -> None:
    s = session()
    s.send("garbage", "{}", '{"type": "cancel"}', '{"type": "done"}', run_line("bad", width="wide"), run_line("ok"))
    s.wait_for(lambda ms: any(m["type"] == "done" for m in ms))
    s.close()  # end of input means shutdown
    assert s.finish() == 0
    by_type = [(m["type"], m.get("task_id")) for m in s.messages() if m["type"] not in ("progress", "phase")]
    assert by_type == [("ready", None), ("error", "bad"), ("done", "ok")]
    error = s.messages()[1]
    assert error["kind"] == "bad_input" and "width" in str(error["message"])


def test_serve_refuses_more_jobs_than_slots(session: Callable[..., Session]) -> None:
    s = session(FakeRunner(slots=1, steps=50, step_seconds=0.02))
    s.send(run_line("first"))
    s.wait_for(lambda ms: any(m["type"] == "progress" for m in ms))
    s.send(run_line("second"), run_line("first"))
    s.wait_for(lambda ms: sum(m["type"] == "error" for m in ms) == 2)
    errors = [m for m in s.messages() if m["type"] == "error"]
    assert [(e["task_id"], e["kind"]) for e in errors] == [("second", "internal"), ("first", "internal")]
    s.send(json.dumps({"type": "cancel", "task_id": "first"}))
    s.wait_for(lambda ms: any(m["type"] == "error" and m["kind"] == "cancelled" for m in ms))
    s.send(json.dumps({"type": "shutdown"}))
    assert s.finish() == 0


def test_cancel_of_unknown_task_is_ignored(session: Callable[..., Session]) -> None:
    s = session()
    s.send(json.dumps({"type": "cancel", "task_id": "nobody"}), run_line("a"))
    s.wait_for(lambda ms: any(m["type"] == "done" for m in ms))
    s.send(json.dumps({"type": "shutdown"}))
    assert s.finish() == 0


def test_shutdown_cancels_running_jobs(session: Callable[..., Session]) -> None:
    s = session(FakeRunner(slots=2, steps=1000, step_seconds=0.01))
    s.send(run_line("a"), run_line("b"))
    s.wait_for(lambda ms: {m.get("task_id") for m in ms if m["type"] == "progress"} == {"a", "b"})
    started = time.monotonic()
    s.send(json.dumps({"type": "shutdown"}))
    assert s.finish() == 0
    assert time.monotonic() - started < 3
    ends = {m["task_id"]: m["kind"] for m in s.messages() if m["type"] == "error"}
    assert ends == {"a": "cancelled", "b": "cancelled"}


def test_runner_exception_becomes_internal_error(session: Callable[..., Session]) -> None:
    s = session()
    s.send(run_line("boom", prompt="raise"), run_line("fine"))
    s.wait_for(lambda ms: any(m["type"] == "done" for m in ms))
    s.send(json.dumps({"type": "shutdown"}))
    assert s.finish() == 0
    error = next(m for m in s.messages() if m["type"] == "error")
    assert error == {"type": "error", "task_id": "boom", "kind": "internal", "message": "RuntimeError: runner bug"}


def test_load_failure_is_fatal() -> None:
    def load() -> FakeRunner:
        raise FileNotFoundError("no such directory /nope")

    s = Session(load)
    assert s.finish() == 1
    assert s.messages() == [{"type": "fatal", "message": "model failed to load: no such directory /nope"}]


def test_a_configuration_error_is_fatal_and_the_worker_waits_for_shutdown() -> None:
    """A restart would fail the same way, so the worker does not exit into a restart loop: it refuses jobs until
    the server ends it."""

    def load() -> FakeRunner:
        raise ConfigurationError("I2V_SPEED=turbo needs I2V_LORA_PATH")

    s = Session(load)
    s.wait_for(lambda ms: len(ms) == 1)
    assert s.messages() == [{"type": "fatal", "message": "cannot start: I2V_SPEED=turbo needs I2V_LORA_PATH"}]
    s.send(run_line("a"))
    s.wait_for(lambda ms: len(ms) == 2)
    assert s.messages()[1] == {
        "type": "error", "task_id": "a", "kind": "internal",
        "message": "refused: cannot start: I2V_SPEED=turbo needs I2V_LORA_PATH",
    }  # fmt: skip
    assert s.thread.is_alive()
    s.send(json.dumps({"type": "shutdown"}))
    assert s.finish() == 1


def test_out_of_memory_becomes_an_oom_error(session: Callable[..., Session]) -> None:
    s = session()
    s.send(run_line("big", prompt="oom"), run_line("small"))
    s.wait_for(lambda ms: any(m["type"] == "done" for m in ms))
    s.send(json.dumps({"type": "shutdown"}))
    assert s.finish() == 0
    error = next(m for m in s.messages() if m["type"] == "error")
    assert (error["task_id"], error["kind"]) == ("big", "oom")
    assert "resolution" in str(error["message"]) and "num_frames" in str(error["message"])


def test_classify() -> None:
    assert classify(Cancelled(4, 30)) == ("cancelled", "cancelled at step 4 of 30")
    assert classify(Cancelled(30, 30, "decode")) == ("cancelled", "cancelled at step 30 of 30 (decode)")
    assert classify(BadInput("image not found: /x.png")) == ("bad_input", "image not found: /x.png")
    assert classify(OutOfMemory())[0] == "oom"
    assert classify(ValueError("bad")) == ("internal", "ValueError: bad")
    assert len(classify(RuntimeError("x" * 5000))[1]) == 2000


def test_the_loop_does_not_import_torch() -> None:
    """The protocol side stays light: the loop and its messages load without torch (the engine brings it)."""
    code = "import sys, i2v_worker.loop; print('torch' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_messages_are_whole_lines_under_concurrency() -> None:
    class Slow(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:  # type: ignore[override]
            for i in range(0, len(b), 7):  # written in small pieces, as a pipe might take it
                self.data += b[i : i + 7]
                time.sleep(0)
            return len(b)

    sink = Slow()
    writer = LineWriter(sink)  # type: ignore[arg-type]

    def spam(task: str) -> None:
        for step in range(200):
            writer.send(Progress(task_id=task, step=step, total_steps=200))

    threads = [threading.Thread(target=spam, args=(t,)) for t in ("a" * 32, "b" * 32, "c" * 32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = sink.data.decode().splitlines()
    assert len(lines) == 600
    assert all(parse_line(line).type == "progress" for line in lines)
