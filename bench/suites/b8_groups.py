"""B8 groups: one job on several devices (context parallelism) against one process (bench/group_step.py).

On the CPU: the demo model through the worker, a group of 2 CPU ranks vs 1 process, per-step time and total side
by side; on a machine of a few cores the ranks share them, so the rows show correctness and overhead, not a
speed-up. On GPUs: the full-size Wan2.1 transformer on 1, 2, 4 and 8 GPUs; counts the machine lacks (all of them
without CUDA) are "not yet measured" rows."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

from harness.core import BENCH, REPO, BenchError, Context, secs


def _run(ctx: Context, *args: str) -> dict[str, Any]:
    command = [ctx.settings.python, str(BENCH / "group_step.py"), *args]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)
    found = re.search(r"^(\{.*\})$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or not found:
        raise BenchError(f"group_step.py {' '.join(args)} failed: {proc.stderr[-400:]}")
    return json.loads(found.group(1))  # type: ignore[no-any-return]


def _cuda_devices(ctx: Context) -> int:
    probe = "import torch; print(torch.cuda.device_count())"
    proc = subprocess.run([ctx.settings.python, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    return int(proc.stdout.strip() or 0) if proc.returncode == 0 else 0


def bench_b8(ctx: Context) -> None:
    demo = _run(ctx, "--demo-cpu", "--steps", "10" if ctx.settings.quick else "20")
    ctx.raw["B8_demo_cpu"] = demo
    one, two = demo["one"], demo["group_2"]
    note = f"demo model, {demo['steps']} steps, {demo['cores']} cores shared by both ranks: overhead, not speed-up"
    ctx.row("B8", "CPU demo: seconds per step, 1 process | group of 2", f"{secs(one['step_s'])} | {secs(two['step_s'])}",
            note)  # fmt: skip
    ctx.row("B8", "CPU demo: job total, 1 process | group of 2", f"{secs(one['total_s'])} | {secs(two['total_s'])}",
            f"encoders {secs(one['encoders_s'])} | {secs(two['encoders_s'])} (every rank runs them)")  # fmt: skip
    ctx.row("B8", "CPU demo: largest frame difference, group vs 1 process", f"{demo['max_frame_difference']:.1e}",
            "float32 frames before the MP4, same job and seed")  # fmt: skip
    gpus = _cuda_devices(ctx)
    if gpus == 0:
        for ranks in (1, 2, 4, 8):
            ctx.row("B8", f"GPU: Wan2.1 14B transformer step on {ranks} GPU(s)", "not yet measured", "no CUDA GPU here")
        return
    result = _run(ctx, "--gpu")
    ctx.raw["B8_gpu"] = result
    for row in result["rows"]:
        metric = f"GPU: Wan2.1 14B transformer step on {row['ranks']} GPU(s)"
        if row["step_s"] is None:
            ctx.row("B8", metric, "not yet measured", row["note"])
        else:
            ctx.row("B8", metric, secs(row["step_s"]), f"scaling efficiency {row.get('efficiency', '-')}, "
                    f"peak {row['peak_gib_rank0']} GiB on rank 0; {result['size']}, random weights")  # fmt: skip
