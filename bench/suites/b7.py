"""B7: bench/b7_speed.py's `bench_b7(ctx)` where that file exists (it adds its own rows with `ctx.row`)."""

from __future__ import annotations

import importlib.util
import sys

from harness.core import BENCH, Context

PATH = BENCH / "b7_speed.py"


def bench_b7(ctx: Context) -> None:
    if not PATH.is_file():
        ctx.row("B7", "-", "skipped: not available (no bench/b7_speed.py)")
        return
    spec = importlib.util.spec_from_file_location("b7_speed", PATH)
    if spec is None or spec.loader is None:
        ctx.row("B7", "-", "skipped: not available (bench/b7_speed.py cannot be loaded)")
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (and pickling) look the module up by name while it loads
    spec.loader.exec_module(module)
    run = getattr(module, "bench_b7", None)
    if not callable(run):
        ctx.row("B7", "-", "skipped: not available (bench/b7_speed.py has no bench_b7(ctx))")
        return
    run(ctx)
