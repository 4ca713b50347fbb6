"""B4 GPU: one denoising step of the full-size Wan2.1-I2V-14B-480P transformer (bench/gpu_step.py), where CUDA is
available; elsewhere a "skipped" row. `--gpu-smoke-cpu` also runs the same code on a 2-layer toy on the CPU."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

from harness.core import BENCH, REPO, Context, secs


def bench_b4(ctx: Context) -> None:
    command = [ctx.settings.python, str(BENCH / "gpu_step.py"), "--steps", str(ctx.settings.gpu_steps)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    found = re.search(r"^(\{.*\})$", proc.stdout, re.MULTILINE)
    result: dict[str, Any] = json.loads(found.group(1)) if found else {"ok": False, "error": proc.stderr[-500:]}
    ctx.raw["B4"] = result
    if result.get("skipped"):
        ctx.row("B4", "Wan2.1-I2V-14B-480P transformer step on GPU", f"skipped: {result['skipped']}")
    elif not result.get("ok"):
        ctx.row("B4", "Wan2.1-I2V-14B-480P transformer step on GPU", f"skipped: failed: {result.get('error')}")
    else:
        where = f"{result['device_name']}, bf16, {result['size']}x{result['frames']}, {result['latent_tokens']} tokens"
        ctx.row("B4", "seconds per denoising step (2 forwards, CFG), median", secs(result["step_s"]),
                f"{where}; steps " + ", ".join(f"{s:.2f}" for s in result["steps_s"]) + " s")  # fmt: skip
        ctx.row(
            "B4",
            "estimate for 30 steps (denoising only)",
            secs(result["estimate_30_steps_s"]),
            "excludes text/image encoders and the VAE decode",
        )
        ctx.row("B4", "peak GPU memory (allocated)", f"{result['peak_gib']:.1f} GiB",
                f"weights {result['weights_gib']:.1f} GiB ({result['params_billion']:.2f} B params); "
                f"reserved {result['peak_reserved_gib']:.1f} GiB")  # fmt: skip
    if ctx.settings.gpu_smoke_cpu:
        proc = subprocess.run([ctx.settings.python, str(BENCH / "gpu_step.py"), "--smoke-cpu", "--steps", "2"],
                              cwd=REPO, capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
        found = re.search(r"^(\{.*\})$", proc.stdout, re.MULTILINE)
        smoke: dict[str, Any] = json.loads(found.group(1)) if found else {"ok": False, "error": proc.stderr[-300:]}
        ctx.raw["B4_smoke_cpu"] = smoke
        value = f"code path OK, {secs(smoke['step_s'])}/step" if smoke.get("ok") else f"failed: {smoke.get('error')}"
        ctx.row("B4", "smoke: same code, 2-layer toy config on the CPU (not a GPU figure)", value)
