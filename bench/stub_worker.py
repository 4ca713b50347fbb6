"""A stand-in inference worker for the submit and image-intake benchmarks (B2 submit rate, B3).

It speaks worker protocol 1 (worker/protocol/PROTOCOL.md): it says `ready` for the demo model at once, accepts `run`
messages and never finishes them (so the tasks stay InProgress or InQueue), answers `cancel` with a `cancelled`
error, and exits on `shutdown` or when stdin closes. With it, submit-side measurements are not disturbed by inference
using the machine's cores. The server starts it as `$I2V_PYTHON -m i2v_worker`; the arguments are ignored.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    info_path = os.path.join(os.environ.get("I2V_MODEL_PATH", ""), "i2v_model.json")
    model = {"id": "wan2.1-i2v-demo", "native_area": 15360, "size_multiple": 16, "fps": 16}
    if os.path.isfile(info_path):
        with open(info_path, encoding="utf-8") as f:
            model = json.load(f)
    slots = int(os.environ.get("I2V_WORKER_SLOTS", "1") or "1")
    out = sys.stdout

    def send(message: dict[str, object]) -> None:
        out.write(json.dumps(message, separators=(",", ":")) + "\n")
        out.flush()

    send({"type": "ready", "protocol": 1, "model": model, "device": "cpu", "dtype": "float32", "slots": slots,
          "memory": {"free_bytes": None, "bytes_per_token": None}})  # fmt: skip
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        kind = message.get("type")
        if kind == "shutdown":
            break
        if kind == "cancel":
            send({"type": "error", "task_id": message.get("task_id", ""), "kind": "cancelled", "message": "cancelled"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
