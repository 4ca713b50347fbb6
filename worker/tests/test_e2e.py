"""`python -m i2v_worker` as a child process, spoken to over stdin/stdout exactly as the Swift server does."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import HEIGHT, WIDTH, needs_ffmpeg

from i2v_worker.messages import parse_line

WORKER_DIR = Path(__file__).resolve().parents[1]


class Worker:
    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.log_path = tmp_path / "worker.log"
        self.log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        environment = {**os.environ, "PYTHONPATH": str(WORKER_DIR), "I2V_DEVICE": "cpu", **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "i2v_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=environment, cwd=tmp_path,
        )  # fmt: skip
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            text = raw.decode("utf-8")
            try:
                parse_line(text)  # every stdout line is a valid protocol message: no stray prints
                self.lines.put(json.loads(text))
            except Exception as exc:  # noqa: BLE001 - reported to the test through the queue
                self.lines.put({"type": "__invalid__", "line": text, "error": str(exc)})
        self.lines.put(None)

    def send(self, message: dict[str, Any] | str) -> None:
        assert self.proc.stdin is not None
        line = message if isinstance(message, str) else json.dumps(message)
        self.proc.stdin.write(line.encode("utf-8") + b"\n")
        self.proc.stdin.flush()

    def next(self, timeout: float = 60) -> dict[str, Any]:
        try:
            message = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout} s; log:\n{self.log_text()}") from None
        assert message is not None, f"stdout closed; log:\n{self.log_text()}"
        assert message["type"] != "__invalid__", message
        return message

    def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        while True:
            message = self.next(timeout)
            seen.append(message)
            if predicate(message):
                return seen

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit; log:\n{self.log_text()}") from None

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-5000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture()
def worker(tmp_path: Path, demo_checkpoint: Path) -> Any:
    started: list[Worker] = []

    def start(**env: str) -> Worker:
        w = Worker(tmp_path, **{"I2V_MODEL_PATH": str(demo_checkpoint), "I2V_WORKER_SLOTS": "2", **env})
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


def run_message(task_id: str, image: Path, output: Path, **overrides: Any) -> dict[str, Any]:
    message = {
        "type": "run", "task_id": task_id, "image_path": str(image), "prompt": "A dancing cat in the style of Van Gogh",
        "negative_prompt": "blurry", "width": WIDTH, "height": HEIGHT, "num_frames": 17, "infer_steps": 3,
        "guidance_scale": 3.0, "seed": 42, "output_path": str(output),
    }  # fmt: skip
    message.update(overrides)
    return message


@needs_ffmpeg
def test_worker_process_end_to_end(worker: Any, image_file: Callable[..., Path], tmp_path: Path) -> None:
    w = worker()
    ready = w.next(timeout=120)
    assert ready == {
        "type": "ready", "protocol": 1,
        "model": {
            "id": "wan2.1-i2v-14b-480p-demo", "native_area": 15360, "size_multiple": 16, "fps": 16,
            "sizes": ["160x96", "96x160"], "max_frames": 121, "last_image": "none", "experts": 1,
            "boundary_ratio": None, "default_infer_steps": 40, "default_guidance_scale": 5.0,
            "default_guidance_scale_2": None, "memory_gib": None,
        },
        "device": "cpu", "dtype": "float32", "slots": 2,
        "memory": {"free_bytes": None, "bytes_per_token": None, "cpu_offload": False, "vae_tiling": False},
        "speed": {"preset": "quality", "compiled": False, "cache_threshold": None, "fp8": False, "lora": None,
                  "infer_steps": None, "guidance_scale": None},
    }  # fmt: skip
    image = image_file()

    # A job: each phase as it starts, progress on every step, then done with the finished MP4.
    a = "a" * 32
    w.send(run_message(a, image, tmp_path / "a.mp4"))
    seen = w.until(lambda m: m["type"] in ("done", "error"))
    assert [(m["type"], m.get("phase") or m.get("step")) for m in seen] == [
        ("phase", "encode_prompt"), ("phase", "encode_image"), ("phase", "denoise"),
        ("progress", 1), ("progress", 2), ("progress", 3),
        ("phase", "decode"), ("phase", "encode_video"), ("done", None),
    ]  # fmt: skip
    assert all(m["task_id"] == a for m in seen)
    done = seen[-1]
    assert done["task_id"] == a and done["path"] == str(tmp_path / "a.mp4")
    assert (done["width"], done["height"], done["num_frames"], done["fps"], done["seed"]) == (WIDTH, HEIGHT, 17, 16, 42)
    assert (done["infer_steps"], done["guidance_scale"], done["model"]) == (3, 3.0, "wan2.1-i2v-14b-480p-demo")
    assert (tmp_path / "a.mp4").read_bytes()[4:8] == b"ftyp"

    # A long job cancelled after its first step.
    b = "b" * 32
    w.send(run_message(b, image, tmp_path / "b.mp4", infer_steps=100))
    first = w.until(lambda m: m["type"] == "progress")[-1]
    assert (first["type"], first["task_id"], first["step"], first["total_steps"]) == ("progress", b, 1, 100)
    w.send({"type": "cancel", "task_id": b})
    seen = w.until(lambda m: m["type"] in ("done", "error"))
    end = seen[-1]
    assert (end["type"], end["task_id"], end["kind"]) == ("error", b, "cancelled")
    stopped_at = int(end["message"].split()[3])
    last_progress = max([1] + [m["step"] for m in seen if m["type"] == "progress"])
    assert stopped_at == last_progress + 1 < 100
    assert not (tmp_path / "b.mp4").exists()

    # Garbage does not kill it; a malformed run and a wrong-sized image get bad_input errors; it still serves.
    w.send("this is not json")
    w.send({"type": "run", "task_id": "c" * 32, "width": "wide"})
    bad = w.next()
    assert (bad["type"], bad["task_id"], bad["kind"]) == ("error", "c" * 32, "bad_input")
    w.send(run_message("d" * 32, image_file(100, 100, name="small.png"), tmp_path / "d.mp4"))
    assert w.next() == {
        "type": "error", "task_id": "d" * 32, "kind": "bad_input", "message": "image is 100x100, expected 160x96"
    }  # fmt: skip

    # Two jobs at once (two slots). (That their progress interleaves is checked in-process, where it need not
    # depend on timing: test_pipeline.py.)
    w.send(run_message("e" * 32, image, tmp_path / "e.mp4", infer_steps=20, seed=1))
    w.send(run_message("f" * 32, image, tmp_path / "f.mp4", infer_steps=3, seed=2))
    seen = []
    while sum(m["type"] in ("done", "error") for m in seen) < 2:
        seen.append(w.next())
    order = [(m["type"], m["task_id"][0]) for m in seen]
    assert sorted(x for x in order if x[0] not in ("progress", "phase")) == [("done", "e"), ("done", "f")]
    assert (order.count(("phase", "e")), order.count(("phase", "f"))) == (5, 5)
    assert (order.count(("progress", "e")), order.count(("progress", "f"))) == (20, 3)

    w.send({"type": "shutdown"})
    status = w.wait()
    assert status == 0, w.log_text()
    assert w.lines.get(timeout=5) is None  # stdout closed, nothing after the last message
    log = w.log_text()
    assert f"task={a}" in log and f"task={b}" in log


def test_end_of_input_cancels_and_exits_zero(worker: Any, image_file: Callable[..., Path], tmp_path: Path) -> None:
    w = worker()
    assert w.next(timeout=120)["type"] == "ready"
    w.send(run_message("a" * 32, image_file(), tmp_path / "a.mp4", infer_steps=100))
    w.until(lambda m: m["type"] == "progress")
    assert w.proc.stdin is not None
    w.proc.stdin.close()
    seen = w.until(lambda m: m["type"] not in ("progress", "phase"))
    assert (seen[-1]["type"], seen[-1]["kind"]) == ("error", "cancelled")
    assert w.wait() == 0
    assert not (tmp_path / "a.mp4").exists()


def test_model_load_failure_is_fatal(worker: Any, tmp_path: Path) -> None:
    w = worker(I2V_MODEL_PATH=str(tmp_path / "nope"))
    fatal = w.next(timeout=120)
    assert fatal["type"] == "fatal" and fatal["message"].startswith("model failed to load:")
    assert w.wait() != 0


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"I2V_WORKER_SLOTS": "many"}, "I2V_WORKER_SLOTS must be a positive integer"),
        ({"I2V_SPEED": "turbo"}, "I2V_SPEED=turbo needs I2V_LORA_PATH"),
        ({"I2V_SPEED": "fast", "I2V_FP8": "1"}, "I2V_FP8=1 cannot run here: the device is cpu, not a CUDA GPU"),
    ],
    ids=["slots", "turbo-without-lora", "fp8-on-cpu"],
)
def test_bad_configuration_is_fatal_and_not_a_restart_loop(worker: Any, env: dict[str, str], reason: str) -> None:
    w = worker(**env)
    fatal = w.next(timeout=120)
    assert fatal["type"] == "fatal" and fatal["message"].startswith("cannot start: ") and reason in fatal["message"]
    # It stays up, refusing work, until the server ends it: exiting would only get it restarted into the same error.
    assert w.proc.poll() is None
    w.send({"type": "shutdown"})
    assert w.wait() == 1


@needs_ffmpeg
def test_turbo_worker_runs_4_step_jobs_and_says_so(
    worker: Any, image_file: Callable[..., Path], tmp_path: Path, demo_lora: Path
) -> None:
    w = worker(I2V_SPEED="turbo", I2V_LORA_PATH=str(demo_lora))
    ready = w.next(timeout=120)
    assert ready["type"] == "ready", ready
    assert ready["speed"] == {
        "preset": "turbo", "compiled": False, "cache_threshold": None, "fp8": False, "lora": demo_lora.name,
        "infer_steps": 4, "guidance_scale": 1.0,
    }  # fmt: skip
    w.send(run_message("a" * 32, image_file(), tmp_path / "a.mp4", infer_steps=30, guidance_scale=5.0))
    seen = [m for m in w.until(lambda m: m["type"] in ("done", "error")) if m["type"] != "phase"]
    assert [(m["type"], m.get("step"), m.get("total_steps")) for m in seen[:-1]] == [
        ("progress", step, 4) for step in range(1, 5)
    ]
    done = seen[-1]
    assert (done["type"], done["infer_steps"], done["guidance_scale"]) == ("done", 4, 1.0)
    assert (tmp_path / "a.mp4").read_bytes()[4:8] == b"ftyp"
    w.send({"type": "shutdown"})
    assert w.wait() == 0
