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
    python bench/b9_loras.py --model-path /models/Wan2.1-I2V-14B-480P-Diffusers --device cuda   # on a GPU

On a GPU the LoRAs take the checkpoint's transformer shapes (rank 64, every block; slot of rank 128) and the timed
job is 480x272, 17 frames, 4 steps; the compiled engine's warm-up compiles the blocks first (minutes for a 14B).
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

SEED = 42
NEW_LORAS = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class Target:
    """What B9 runs on: the demo model on the CPU by default; `--model-path` and `--device cuda` for a real
    checkpoint on a GPU, with LoRAs of its transformer's shapes."""

    model_path: str | None = None  # None: the demo checkpoint, built in the bench's directory
    device: str = "cpu"
    lora_rank: int = 8
    slot_rank: int = 16  # room for two LoRAs at once
    width: int = 160
    height: int = 96
    frames: int = 17
    steps: int = 8

    @property
    def caveat(self) -> str:
        if self.model_path is None:
            return "demo model (transformer width 24), fp32 on the CPU: says nothing about a 14B model on a GPU"
        return f"{Path(self.model_path).name} on {self.device}"


def _lora_shape(model_path: str | None) -> dict[str, int]:
    """The demo LoRA builder's shape arguments for the checkpoint's transformer (the demo's own without one)."""
    if model_path is None:
        return {}
    config = json.loads((Path(model_path) / "transformer" / "config.json").read_text())
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    return {"dim": dim, "ffn_dim": config["ffn_dim"], "blocks": config["num_layers"]}


def _child(base: Path, rounds: int, target: Target) -> dict[str, Any]:
    sys.path.insert(0, str(WORKER))
    import logging

    logging.disable(logging.WARNING)
    from PIL import Image
    from torch._dynamo.utils import counters

    from i2v_worker import demo
    from i2v_worker.loras import LoraRequest, file_sha256
    from i2v_worker.pipeline import Engine
    from i2v_worker.settings import Settings

    model = target.model_path or str(base / "wan2.1-i2v-demo")
    if target.model_path is None:
        demo.ensure(Path(model))
    paths = [base / f"style{i}.safetensors" for i in range(NEW_LORAS + 1)]
    shape = _lora_shape(target.model_path)
    for index, path in enumerate(paths):
        demo.build_style_lora(path, rank=target.lora_rank, seed=100 + index, **shape)
    settings = Settings(model_path=model, device=target.device, slots=1, lora_max_rank=target.slot_rank, compile="off")
    Engine.load(settings)  # files into the page cache
    started = time.monotonic()
    eager = Engine.load(settings)
    reload_seconds = time.monotonic() - started
    image = Image.new("RGB", (target.width, target.height), (90, 120, 150))

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
            with engine.loras.active_for(engine.loras.prepare(loras), cancelled=cancelled, steps=target.steps):
                begun = time.monotonic()
                engine.generate(
                    image=image, prompt="a cat", negative_prompt="", width=target.width, height=target.height,
                    num_frames=target.frames, infer_steps=target.steps, guidance_scale=3.0, seed=SEED,
                    on_step=lambda step, total: None, cancelled=cancelled,
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


def bench_b9(ctx: Any, target: Target | None = None) -> None:
    target = target or Target()
    settings = getattr(ctx, "settings", None)
    rounds = getattr(settings, "rounds", None) or (1 if getattr(settings, "quick", False) else 3)
    python = str(getattr(getattr(ctx, "settings", None), "python", "") or sys.executable)
    base = Path(getattr(ctx, "tmp", None) or tempfile.mkdtemp(prefix="b9-")) / "b9"
    base.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), "--child", str(base), "--rounds", str(rounds),
         "--target", json.dumps(dataclasses.asdict(target))],
        capture_output=True, text=True, timeout=1800, env={**os.environ, "PYTHONPATH": str(WORKER)}, check=False,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-800:]}")
    raw = json.loads(lines[-1])
    if hasattr(ctx, "raw"):
        ctx.raw["B9"] = raw
    reload_s = raw["reload"]
    ctx.row("B9", "reload the pipeline (Engine.load: load + warm-up, eager)", f"{reload_s:.2f} s", target.caveat)
    for kind in ("eager", "compiled"):
        figures = raw[kind]
        new, cached = statistics.median(figures["new"]), statistics.median(figures["cached"])
        plain, styled = statistics.median(figures["plain"]), statistics.median(figures["styled"])
        ctx.row("B9", f"{kind}: switch to a new LoRA set (check, hash, read, fill the slot), median of {len(figures['new'])}",
                f"{new * 1000:.1f} ms, {reload_s / new:.0f}x faster than a reload", f"rank {target.lora_rank}, one LoRA")  # fmt: skip
        ctx.row("B9", f"{kind}: switch between cached sets (fill the slot), median of {len(figures['cached'])}",
                f"{cached * 1000:.1f} ms, {reload_s / cached:.0f}x faster than a reload", "")  # fmt: skip
        size = f"{target.width}x{target.height}, {target.frames} frames, {target.steps} steps"
        ctx.row("B9", f"{kind}: job with one LoRA vs none ({size}), median of {len(figures['plain'])}",
                f"{styled:.2f} s vs {plain:.2f} s, ratio {styled / plain:.3f}", f"slot of rank {target.slot_rank} on every linear layer")  # fmt: skip
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
    parser.add_argument("--model-path", help="a real checkpoint (default: the demo model)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (with --model-path)")
    parser.add_argument("--lora-rank", type=int, help="the test LoRAs' rank (default 8; 64 with --model-path)")
    parser.add_argument("--size", help="WIDTHxHEIGHT of the timed job (default 160x96; 480x272 with --model-path)")
    parser.add_argument("--child", metavar="DIR")
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(Path(args.child), args.rounds, Target(**json.loads(args.target)))))
        return 0
    target = Target()
    if args.model_path:
        target = Target(model_path=args.model_path, device=args.device, lora_rank=64, slot_rank=128, width=480,
                        height=272, frames=17, steps=4)  # fmt: skip
    if args.lora_rank:
        target = dataclasses.replace(target, lora_rank=args.lora_rank, slot_rank=2 * args.lora_rank)
    if args.size:
        width, height = (int(part) for part in args.size.lower().split("x"))
        target = dataclasses.replace(target, width=width, height=height)
    table = _Table()
    print("| bench | metric | value | notes |\n|---|---|---|---|")
    settings = type("S", (), {"rounds": args.rounds, "python": sys.executable})()
    table.settings = settings  # type: ignore[attr-defined]
    bench_b9(table, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
