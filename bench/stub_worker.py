"""A stand-in inference worker for the benchmarks that must not spend the machine's cores on inference.

It speaks worker protocol 1 (worker/protocol/PROTOCOL.md) and says `ready` for the demo model at once. What it does
with a `run` depends on `I2V_STUB_HOLD_SECONDS`:

- unset (B2 submit rate, B3 intake, B6 fill): it accepts the job and never finishes it, so the task stays InProgress
  and the rest stay InQueue;
- a number of seconds H >= 0 (B5 scaling, B6 claims): it holds the job H seconds, split evenly over the job's
  `infer_steps` with a `progress` message after each step (as the real worker reports; with
  `I2V_STUB_PROGRESS_SECONDS` = P > 0 only after a step at least P seconds after the previous message, and after the
  last step), then writes a small placeholder file at `output_path` (a temporary name, then renamed into place) and
  answers `done`. With H = 0 it answers at once (one `progress`, then `done`).

With `I2V_STUB_EVENTS_DIR` set it appends one JSON line per job start and end to `<dir>/stub-<pid>.jsonl`:
`{"event": "run"|"done", "task_id", "t"}` (`t`: wall-clock seconds), the benchmark's own record of when work reached
the "GPU" and when it left it.

Either way it answers `cancel` with an `error` of kind `cancelled`, refuses a `run` beyond `I2V_WORKER_SLOTS` or for a
task already running (`error` kind `internal`, `refused: …`), and exits on `shutdown` or when stdin closes, after
cancelling what it holds. The server starts it as `$I2V_PYTHON -m i2v_worker`; the arguments are ignored.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, TextIO

# An MP4 `ftyp` box and nothing else: enough for a file that is recognisably an MP4 header, never played.
PLACEHOLDER = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"


class Output:
    """stdout, one whole JSON line at a time from any thread."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":")) + "\n"
        with self.lock:
            self.stream.write(line)
            self.stream.flush()


class Events:
    """The optional record of job starts and ends (I2V_STUB_EVENTS_DIR)."""

    def __init__(self, directory: str) -> None:
        path = os.path.join(directory, f"stub-{os.getpid()}.jsonl")
        self.file = open(path, "a", encoding="utf-8") if directory else None  # noqa: SIM115 (open for the process' life)
        self.lock = threading.Lock()

    def record(self, event: str, task_id: str) -> None:
        if self.file is None:
            return
        line = json.dumps({"event": event, "task_id": task_id, "t": time.time()}) + "\n"
        with self.lock:
            self.file.write(line)
            self.file.flush()


class Jobs:
    """The jobs being held, each in its own thread, with a cancel event per task id."""

    def __init__(self, out: Output, slots: int, hold_s: float | None, progress_s: float, events: Events) -> None:
        self.out = out
        self.slots = slots
        self.hold_s = hold_s
        self.progress_s = progress_s
        self.events = events
        self.lock = threading.Lock()
        self.running: dict[str, threading.Event] = {}
        self.threads: list[threading.Thread] = []

    def start(self, message: dict[str, Any]) -> None:
        task_id = str(message.get("task_id", ""))
        with self.lock:
            refused = (
                "a job with this task id is running"
                if task_id in self.running
                else f"all {self.slots} slots are busy"
                if len(self.running) >= self.slots
                else None
            )
            if refused is None:
                self.running[task_id] = threading.Event()
        if refused is not None:
            self.out.send({"type": "error", "task_id": task_id, "kind": "internal", "message": f"refused: {refused}"})
            return
        self.events.record("run", task_id)
        if self.hold_s is None:
            return  # held until cancelled or shut down; nothing is ever sent for it
        thread = threading.Thread(target=self._hold, args=(message, self.hold_s), daemon=True)
        self.threads.append(thread)
        thread.start()

    def cancel(self, task_id: str) -> None:
        with self.lock:
            event = self.running.get(task_id)
            if event is None:
                return
            if self.hold_s is None:
                self.running.pop(task_id)
        if self.hold_s is None:
            self.out.send({"type": "error", "task_id": task_id, "kind": "cancelled", "message": "cancelled"})
        else:
            event.set()  # the job's thread answers at its next step

    def cancel_all(self, wait_s: float = 30.0) -> None:
        with self.lock:
            ids = list(self.running)
        for task_id in ids:
            self.cancel(task_id)
        deadline = time.monotonic() + wait_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _hold(self, message: dict[str, Any], hold_s: float) -> None:
        task_id = str(message["task_id"])
        cancelled = self.running[task_id]
        steps = max(1, int(message.get("infer_steps", 1))) if hold_s > 0 else 1
        started = last_progress = time.monotonic()
        try:
            for step in range(1, steps + 1):
                if cancelled.wait(max(0.0, started + hold_s * step / steps - time.monotonic())):
                    self.out.send({"type": "error", "task_id": task_id, "kind": "cancelled",
                                   "message": f"cancelled at step {step - 1} of {steps}"})  # fmt: skip
                    return
                if step == steps or time.monotonic() - last_progress >= self.progress_s:
                    last_progress = time.monotonic()
                    self.out.send({"type": "progress", "task_id": task_id, "step": step, "total_steps": steps})
            inference_s = time.monotonic() - started
            path = str(message["output_path"])
            tmp = f"{path}.stub-tmp"
            with open(tmp, "wb") as f:
                f.write(PLACEHOLDER)
            os.replace(tmp, path)
            self.events.record("done", task_id)
            self.out.send({
                "type": "done", "task_id": task_id, "path": path, "width": int(message["width"]),
                "height": int(message["height"]), "num_frames": int(message["num_frames"]), "fps": 16,
                "seed": int(message["seed"]), "inference_seconds": round(inference_s, 6), "encode_seconds": 0.0,
            })  # fmt: skip
        except (OSError, KeyError, TypeError, ValueError) as exc:
            self.out.send({"type": "error", "task_id": task_id, "kind": "internal", "message": f"stub: {exc}"})
        finally:
            with self.lock:
                self.running.pop(task_id, None)


def hold_seconds() -> float | None:
    value = os.environ.get("I2V_STUB_HOLD_SECONDS", "").strip()
    return max(0.0, float(value)) if value else None


def main() -> int:
    info_path = os.path.join(os.environ.get("I2V_MODEL_PATH", ""), "i2v_model.json")
    model = {"id": "wan2.1-i2v-demo", "native_area": 15360, "size_multiple": 16, "fps": 16}
    if os.path.isfile(info_path):
        with open(info_path, encoding="utf-8") as f:
            model = json.load(f)
    slots = int(os.environ.get("I2V_WORKER_SLOTS", "1") or "1")
    out = Output(sys.stdout)
    progress_s = float(os.environ.get("I2V_STUB_PROGRESS_SECONDS", "0") or "0")
    jobs = Jobs(out, slots, hold_seconds(), progress_s, Events(os.environ.get("I2V_STUB_EVENTS_DIR", "")))
    out.send({"type": "ready", "protocol": 1, "model": model, "device": "cpu", "dtype": "float32", "slots": slots,
              "memory": {"free_bytes": None, "bytes_per_token": None}})  # fmt: skip
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict):
            continue
        kind = message.get("type")
        if kind == "shutdown":
            break
        if kind == "run":
            jobs.start(message)
        elif kind == "cancel":
            jobs.cancel(str(message.get("task_id", "")))
    jobs.cancel_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
