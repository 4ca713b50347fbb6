"""B9: bench/b9_loras.py's `bench_b9(ctx)`: LoRA set switches on a warm worker against a reload, and a job with one
LoRA against one without (demo model, CPU)."""

from __future__ import annotations

import importlib.util
import sys

from harness.core import BENCH, Context

PATH = BENCH / "b9_loras.py"


def bench_b9(ctx: Context) -> None:
    spec = importlib.util.spec_from_file_location("b9_loras", PATH)
    if spec is None or spec.loader is None:
        ctx.row("B9", "-", "skipped: not available (bench/b9_loras.py cannot be loaded)")
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.bench_b9(ctx)
