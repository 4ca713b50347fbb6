"""B9: LoRAs per request on the demo model on the CPU: what switching LoRA sets costs a warm worker, against loading
the pipeline again, and what a job with one LoRA costs against one without.

One child process of the worker's Python: it builds the demo checkpoint and a few demo user LoRAs (rank 8), times
`Engine.load` again (load + warm-up: what a worker per LoRA set would pay to change sets), then, on an eager engine
and on a compiled one (`I2V_COMPILE=1`, regional compilation), each with a LoRA slot of rank 16 and one job slot:
- *switch, new*: a job's set changed to a LoRA not cached yet (header checks, SHA-256, parse, read through
  diffusers' loader, fill the slot), median over several LoRAs;
- *switch, cached*: the set changed between two cached LoRAs (fill the slot only), median;
- *job*: the same job (160x96, 17 frames, 8 steps) without a LoRA and with one, alternating, medians and their ratio;
- on the compiled engine, how many graphs dynamo compiled during all of that after the first two jobs (two LoRAs at
  once and none again included): a set change that recompiled would show here.

The demo's transformer is tiny (width 24), so the LoRA's share of the work says little about a 14B model on a GPU;
the table says so.

    python bench/b9_loras.py [--rounds 3]          # prints the table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
WORKER = BENCH.parent / "worker"

WIDTH, HEIGHT, FRAMES, STEPS, SEED = 160, 96, 17, 8, 42
NEW_LORAS = 4
RANK = 16  # the slot: two rank-8 LoRAs at once
CAVEAT = "demo model (transformer width 24), fp32 on the CPU: says nothing about a 14B model on a GPU"


def _child(base: Path, rounds: int) -> dict[str, Any]:
    sys.path.insert(0, str(WORKER))
    import logging

    logging.disable(logging.WARNING)
    from PIL import Image
    from torch._dynamo.utils import counters

    from i2v_worker import demo
    from i2v_worker.loras import LoraRequest, file_sha256
    from i2v_worker.pipeline import Engine
    from i2v_worker.settings import Settings

    model = base / "wan2.1-i2v-demo"
    demo.ensure(model)
    paths = [base / f"style{i}.safetensors" for i in range(NEW_LORAS + 1)]
    for index, path in enumerate(paths):
        demo.build_style_lora(path, rank=8, seed=100 + index)
    settings = Settings(model_path=str(model), device="cpu", slots=1, lora_max_rank=RANK)
    Engine.load(settings)  # files into the page cache
    started = time.monotonic()
    eager = Engine.load(settings)
    reload_seconds = time.monotonic() - started
    image = Image.new("RGB", (WIDTH, HEIGHT), (90, 120, 150))

    def request(path: Path) -> LoraRequest:
        return LoraRequest(name=path.stem, path=str(path), scale=1.0, sha256=file_sha256(str(path)))

    def measure(engine: Engine, first_before: int) -> dict[str, Any]:
        def switch(loras: tuple[LoraRequest, ...]) -> float:
            begun = time.monotonic()
            with engine.loras.active_for(engine.loras.prepare(loras), cancelled=threading.Event(), steps=1):
                pass
            return time.monotonic() - begun

        def job(loras: tuple[LoraRequest, ...]) -> float:
            cancelled = threading.Event()
            with engine.loras.active_for(engine.loras.prepare(loras), cancelled=cancelled, steps=STEPS):
                begun = time.monotonic()
                engine.generate(
                    image=image, prompt="a cat", negative_prompt="", width=WIDTH, height=HEIGHT, num_frames=FRAMES,
                    infer_steps=STEPS, guidance_scale=3.0, seed=SEED, on_step=lambda step, total: None,
                    cancelled=cancelled,
                )  # fmt: skip
                return time.monotonic() - begun

        with_lora = (request(paths[-1]),)
        job(()), job(with_lora)  # untimed: first runs (a compiled engine compiles here)
        compiled_before = counters["stats"]["unique_graphs"]
        new = [switch((request(path),)) for path in paths[:NEW_LORAS]]
        cached = [switch((request(paths[i % 2]),)) for i in range(2 * rounds + 2)]
        plain, styled = [], []
        for _ in range(rounds):
            plain.append(job(()))
            styled.append(job(with_lora))
        job((request(paths[0]), request(paths[1])))  # two at once, then none again: still no compile
        job(())
        compiles = counters["stats"]["unique_graphs"] - compiled_before
        first = compiled_before - first_before
        return {"new": new, "cached": cached, "plain": plain, "styled": styled, "compiles": compiles, "first": first}

    eager_figures = measure(eager, counters["stats"]["unique_graphs"])
    del eager
    loaded_before = counters["stats"]["unique_graphs"]
    compiled_figures = measure(Engine.load(dataclasses.replace(settings, compile="on")), loaded_before)
    return {"reload": reload_seconds, "eager": eager_figures, "compiled": compiled_figures}


def bench_b9(ctx: Any) -> None:
    settings = getattr(ctx, "settings", None)
    rounds = getattr(settings, "rounds", None) or (1 if getattr(settings, "quick", False) else 3)
    python = str(getattr(getattr(ctx, "settings", None), "python", "") or sys.executable)
    base = Path(getattr(ctx, "tmp", None) or tempfile.mkdtemp(prefix="b9-")) / "b9"
    base.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), "--child", str(base), "--rounds", str(rounds)],
        capture_output=True, text=True, timeout=1800, env={**os.environ, "PYTHONPATH": str(WORKER)}, check=False,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-800:]}")
    raw = json.loads(lines[-1])
    if hasattr(ctx, "raw"):
        ctx.raw["B9"] = raw
    reload_s = raw["reload"]
    ctx.row("B9", "reload the pipeline (Engine.load: load + warm-up, eager)", f"{reload_s:.2f} s", CAVEAT)
    for kind in ("eager", "compiled"):
        figures = raw[kind]
        new, cached = statistics.median(figures["new"]), statistics.median(figures["cached"])
        plain, styled = statistics.median(figures["plain"]), statistics.median(figures["styled"])
        ctx.row("B9", f"{kind}: switch to a new LoRA set (check, hash, read, fill the slot), median of {len(figures['new'])}",
                f"{new * 1000:.1f} ms, {reload_s / new:.0f}x faster than a reload", "rank 8, one LoRA")  # fmt: skip
        ctx.row("B9", f"{kind}: switch between cached sets (fill the slot), median of {len(figures['cached'])}",
                f"{cached * 1000:.1f} ms, {reload_s / cached:.0f}x faster than a reload", "")  # fmt: skip
        ctx.row("B9", f"{kind}: job with one LoRA vs none ({WIDTH}x{HEIGHT}, {FRAMES} frames, {STEPS} steps), median of {len(figures['plain'])}",
                f"{styled:.2f} s vs {plain:.2f} s, ratio {styled / plain:.3f}", f"slot of rank {RANK} on every linear layer")  # fmt: skip
    compiles, first = raw["compiled"]["compiles"], raw["compiled"]["first"]
    ctx.row("B9", "compiled: graphs dynamo compiled during the switches and jobs after the first two jobs", str(compiles),
            f"dynamo's unique_graphs counter (the load's warm-up and the first two jobs compiled {first}); 0: no set change recompiled")  # fmt: skip


class _Table:
    def __init__(self) -> None:
        self.raw: dict[str, Any] = {}
        self.tmp = tempfile.mkdtemp(prefix="b9-")

    def row(self, bench: str, metric: str, value: str, notes: str = "") -> None:
        print(f"| {bench} | {metric} | {value} | {notes} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/b9_loras.py", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", metavar="DIR")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(Path(args.child), args.rounds)))
        return 0
    table = _Table()
    print("| bench | metric | value | notes |\n|---|---|---|---|")
    settings = type("S", (), {"rounds": args.rounds, "python": sys.executable})()
    table.settings = settings  # type: ignore[attr-defined]
    bench_b9(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
