"""Messages, parsing and the main loop (with a fake runner: no model, no torch)."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from i2v_worker.metadata import ModelInfo
from i2v_worker.protocol import (
    Cancel,
    Done,
    Error,
    Fatal,
    MemoryInfo,
    ProtocolError,
    Ready,
    Run,
    Shutdown,
    dumps,
    parse_line,
    serve,
    to_object,
)

FIXTURES = Path(__file__).resolve().parents[1] / "protocol" / "fixtures.jsonl"
TASK = "0123456789abcdef0123456789abcdef"


def fixtures() -> list[dict[str, object]]:
    return [json.loads(line) for line in FIXTURES.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("fixture", fixtures(), ids=lambda f: str(f["name"]))
def test_fixture_round_trips(fixture: dict[str, object]) -> None:
    line = json.dumps(fixture["message"])
    message = parse_line(line)
    assert message.type == fixture["message"]["type"]  # type: ignore[index]
    assert to_object(message) == fixture["message"]
    again = dumps(message)
    assert "\n" not in again
    assert json.loads(again) == fixture["message"]
    assert parse_line(again) == message


def test_fixtures_cover_every_message_type() -> None:
    types = {f["message"]["type"] for f in fixtures()}  # type: ignore[index]
    assert types == {"ready", "progress", "done", "error", "fatal", "run", "cancel", "shutdown"}
    kinds = {f["message"]["kind"] for f in fixtures() if f["message"]["type"] == "error"}  # type: ignore[index]
    assert kinds == {"oom", "bad_input", "cancelled", "internal"}


def test_unknown_fields_are_ignored_and_defaults_apply() -> None:
    message = parse_line(
        '{"type":"run","task_id":"t","image_path":"/i.png","prompt":"p","width":16,"height":32,"num_frames":5,'
        '"infer_steps":2,"guidance_scale":3,"seed":0,"output_path":"/o.mp4","future_field":[1,2]}'
    )
    assert isinstance(message, Run)
    assert message.negative_prompt == ""
    assert message.guidance_scale == 3.0 and isinstance(message.guidance_scale, float)


def test_non_ascii_text_survives() -> None:
    message = Error(task_id=TASK, kind="internal", message="失败: \u2028 \"quoted\" \n newline")
    line = dumps(message)
    assert "\n" not in line
    assert parse_line(line.encode("utf-8")) == message


@pytest.mark.parametrize(
    ("line", "task_id"),
    [
        ("", None),
        ("not json", None),
        ("[1, 2]", None),
        ('"run"', None),
        ("{}", None),
        ('{"type": "launch", "task_id": "x"}', "x"),
        ('{"type": 7}', None),
        ('{"type": "cancel"}', None),
        ('{"type": "cancel", "task_id": ""}', None),
        ('{"type": "run", "task_id": "x"}', "x"),
        ('{"type": "run", "task_id": "x", "image_path": "/i.png", "prompt": "p", "width": "16", "height": 16,'
         ' "num_frames": 5, "infer_steps": 2, "guidance_scale": 3, "seed": 0, "output_path": "/o.mp4"}', "x"),
        ('{"type": "run", "task_id": "x", "image_path": "/i.png", "prompt": "p", "width": true, "height": 16,'
         ' "num_frames": 5, "infer_steps": 2, "guidance_scale": 3, "seed": 0, "output_path": "/o.mp4"}', "x"),
        ('{"type": "run", "task_id": "x", "image_path": "/i.png", "prompt": "p", "width": 16, "height": 16,'
         ' "num_frames": 5, "infer_steps": 2, "guidance_scale": 3, "seed": -1, "output_path": "/o.mp4"}', "x"),
        ('{"type": "error", "task_id": "x", "kind": "meltdown", "message": "m"}', "x"),
        ('{"type": "ready", "protocol": 1, "model": {"id": "m"}, "device": "cpu", "dtype": "float32", "slots": 1,'
         ' "memory": {"free_bytes": null, "bytes_per_token": null}}', None),
    ],
)
def test_bad_lines_raise_protocol_error(line: str, task_id: str | None) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_line(line)
    assert info.value.task_id == task_id


def test_invalid_utf8_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        parse_line(b'{"type": "shutdown", "x": "\xff"}')


# --- the main loop, with a fake runner -----------------------------------------------------------------------------


class FakeRunner:
    """Each job reports `steps` progress lines, one per `step_seconds`, and honours cancel between steps."""

    def __init__(self, slots: int = 2, steps: int = 3, step_seconds: float = 0.01) -> None:
        self.slots = slots
        self.steps = steps
        self.step_seconds = step_seconds
        self.started: list[str] = []

    def ready_message(self) -> Ready:
        return Ready(
            model=ModelInfo(id="fake", native_area=256, size_multiple=16, fps=16),
            device="cpu",
            dtype="float32",
            slots=self.slots,
            memory=MemoryInfo(free_bytes=None, bytes_per_token=None),
        )

    def run(self, job: Run, report: Callable[[int, int], None], cancelled: threading.Event) -> Done | Error:
        self.started.append(job.task_id)
        if job.prompt == "raise":
            raise RuntimeError("runner bug")
        for step in range(1, self.steps + 1):
            time.sleep(self.step_seconds)
            if cancelled.is_set():
                return Error(task_id=job.task_id, kind="cancelled", message=f"cancelled at step {step} of {self.steps}")
            report(step, self.steps)
        return Done(
            task_id=job.task_id, path=job.output_path, width=job.width, height=job.height, num_frames=job.num_frames,
            fps=16, seed=job.seed, inference_seconds=0.1, encode_seconds=0.0,
        )  # fmt: skip


def run_line(task_id: str, **overrides: object) -> str:
    message: dict[str, object] = {
        "type": "run", "task_id": task_id, "image_path": "/i.png", "prompt": "p", "width": 16, "height": 16,
        "num_frames": 5, "infer_steps": 3, "guidance_scale": 3.0, "seed": 1, "output_path": f"/out/{task_id}.mp4",
    }  # fmt: skip
    message.update(overrides)
    return json.dumps(message)


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
    types = [m["type"] for m in s.messages()]
    assert types == ["ready", "progress", "progress", "progress", "done"]


def test_serve_survives_bad_lines(session: Callable[..., Session]) -> None:
    s = session()
    s.send("garbage", "{}", '{"type": "cancel"}', '{"type": "done"}', run_line("bad", width="wide"), run_line("ok"))
    s.wait_for(lambda ms: any(m["type"] == "done" for m in ms))
    s.close()  # end of input means shutdown
    assert s.finish() == 0
    by_type = [(m["type"], m.get("task_id")) for m in s.messages() if m["type"] != "progress"]
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


def test_messages_are_whole_lines_under_concurrency() -> None:
    from i2v_worker.protocol import LineWriter, Progress

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


def test_fatal_and_shutdown_serialise_minimally() -> None:
    assert dumps(Shutdown()) == '{"type":"shutdown"}'
    assert dumps(Fatal(message="x")) == '{"type":"fatal","message":"x"}'
    assert dumps(Cancel(task_id="t")) == '{"type":"cancel","task_id":"t"}'
