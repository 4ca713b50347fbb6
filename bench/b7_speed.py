"""B7: the speed presets on the demo model on the CPU, and the worker's pipeline call against a plain diffusers call.

Two parts, each run in child processes of the worker's Python (one per configuration, so compiled graphs and
thread settings never leak from one to the next):

- *parity*: the same demo job (160x96, 81 frames, 30 steps, guidance 3.0) as a plain `WanImageToVideoPipeline`
  call on the main thread (what the reference script does) and as the worker runs it (`Engine.generate` on the
  worker's long-lived job thread), alternating A B A B in one process after one untimed run of each; medians and
  their ratio. Also the old way, a fresh thread per job, for comparison.
- *presets*: `quality` eager, `quality` compiled (`I2V_COMPILE=1`), `fast` (step cache at 0.05, eager and compiled)
  and `turbo` (a generated demo LoRA, 4 steps): start-up seconds (load + warm-up, which includes compiling), median
  job seconds and seconds per step, transformer blocks the cache skipped, and PSNR of the frames against `quality`
  eager on the same seed and image.

The demo model has random weights and runs in fp32 on a CPU: the speed-ups say nothing about a GPU, and the PSNR
says nothing about visual quality (turbo's frames differ from quality's by design). The table says so.

    python bench/b7_speed.py [--rounds 3]          # prints the table
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORKER = REPO / "worker"

WIDTH, HEIGHT, FRAMES, STEPS, GUIDANCE, SEED = 160, 96, 81, 30, 3.0, 42
CACHE_THRESHOLD = 0.05
CAVEAT = "demo model: random weights, fp32 on the CPU; says nothing about GPU speed or visual quality"

# name -> worker settings (besides the model and the device)
PRESETS: dict[str, dict[str, Any]] = {
    "quality": {},
    "quality, compiled": {"compile": "on"},
    "fast (cache 0.05)": {"speed": "fast", "cache_threshold": CACHE_THRESHOLD},
    "fast (cache 0.05), compiled": {"speed": "fast", "cache_threshold": CACHE_THRESHOLD, "compile": "on"},
    "turbo (demo LoRA)": {"speed": "turbo"},
}


# --- child side ---------------------------------------------------------------------------------------------------


def _child_setup() -> None:
    sys.path.insert(0, str(WORKER))
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def _image() -> Any:
    from PIL import Image

    image = Image.new("RGB", (WIDTH, HEIGHT))
    image.putdata([((x * 7) % 256, (y * 11) % 256, (x + y) % 256) for y in range(HEIGHT) for x in range(WIDTH)])
    return image


def child_preset(model: str, lora: str, settings: dict[str, Any], rounds: int, frames_out: str) -> dict[str, Any]:
    """Loads an engine with `settings`, runs the job `rounds` times (after the warm-up), saves the last frames."""
    _child_setup()
    import numpy as np

    from i2v_worker.pipeline import Engine
    from i2v_worker.settings import Settings

    if settings.get("speed") == "turbo":
        settings = {**settings, "lora_path": lora}
    started = time.perf_counter()
    engine = Engine.load(Settings(model_path=model, device="cpu", **settings))
    startup = time.perf_counter() - started
    transformer = engine.pipe.transformer
    calls = {"head": 0, "tail": 0}
    # The first and last blocks' attention runs only when the block computes: the cache skips the tail's.
    transformer.blocks[0].attn1.register_forward_pre_hook(lambda m, a: calls.__setitem__("head", calls["head"] + 1))
    transformer.blocks[-1].attn1.register_forward_pre_hook(lambda m, a: calls.__setitem__("tail", calls["tail"] + 1))
    image = _image()
    times: list[float] = []
    step_times: list[float] = []
    steps = engine.job_steps(STEPS)
    frames: Any = None
    for _ in range(rounds):
        calls.update(head=0, tail=0)
        ends: list[float] = []

        def on_step(step: int, total: int, ends: list[float] = ends) -> None:
            ends.append(time.perf_counter())

        started = time.perf_counter()
        frames = engine.generate(
            image=image, prompt="a cat dancing in the style of a painting", negative_prompt="blurry", width=WIDTH,
            height=HEIGHT, num_frames=FRAMES, infer_steps=STEPS, guidance_scale=GUIDANCE, seed=SEED,
            on_step=on_step, cancelled=threading.Event(),
        )  # fmt: skip
        times.append(time.perf_counter() - started)
        # Between step ends: the denoising step alone, without the encoders before it and the VAE decode after.
        step_times += [b - a for a, b in itertools.pairwise(ends)]
    np.save(frames_out, frames)
    return {
        "startup_s": startup,
        "job_s": times,
        "step_s": statistics.median(step_times) if step_times else None,
        "steps": steps,
        "transformer_calls": calls["head"],
        "skipped_blocks": (calls["head"] - calls["tail"]) * (len(transformer.blocks) - 1),
        "blocks": len(transformer.blocks),
    }


def child_parity(model: str, rounds: int) -> dict[str, Any]:
    """Plain pipeline call on the main thread vs the worker's call on a long-lived job thread (and on a fresh one)."""
    _child_setup()
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline

    from i2v_worker.pipeline import Engine
    from i2v_worker.settings import Settings

    engine = Engine.load(Settings(model_path=model, device="cpu", slots=1))
    # The plain script's pipeline, loaded as bench/reference_job.py loads it.
    torch.set_num_threads(1)
    plain = WanImageToVideoPipeline.from_pretrained(model, dtype=torch.float32)
    plain.scheduler = UniPCMultistepScheduler.from_config(
        plain.scheduler.config, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    plain.set_progress_bar_config(disable=True)
    image = _image()
    prompt = "a cat dancing in the style of a painting"

    def timed(call: Any) -> tuple[float, float]:
        """Wall seconds and the calling thread's CPU seconds: with one torch thread all the work is on it, so its
        CPU time is the work done, whatever else shares the machine."""
        wall, cpu = time.perf_counter(), time.thread_time()
        call()
        return time.perf_counter() - wall, time.thread_time() - cpu

    def run_plain() -> tuple[float, float]:
        return timed(
            lambda: plain(
                image=image,
                prompt=prompt,
                negative_prompt="blurry",
                height=HEIGHT,
                width=WIDTH,
                num_frames=FRAMES,
                num_inference_steps=STEPS,
                guidance_scale=GUIDANCE,
                generator=torch.Generator("cpu").manual_seed(SEED),
                output_type="np",
            )
        )

    def run_engine() -> tuple[float, float]:
        return timed(
            lambda: engine.generate(
                image=image,
                prompt=prompt,
                negative_prompt="blurry",
                width=WIDTH,
                height=HEIGHT,
                num_frames=FRAMES,
                infer_steps=STEPS,
                guidance_scale=GUIDANCE,
                seed=SEED,
                on_step=lambda step, total: None,
                cancelled=threading.Event(),
            )
        )

    pool = ThreadPoolExecutor(max_workers=1)  # the worker's job thread, kept for the life of the process

    def on_fresh_thread() -> tuple[float, float]:
        result: list[tuple[float, float]] = []
        thread = threading.Thread(target=lambda: result.append(run_engine()))
        thread.start()
        thread.join()
        return result[0]

    variants = {
        "plain": run_plain,
        "worker": lambda: pool.submit(run_engine).result(),
        "fresh_thread": on_fresh_thread,
    }
    for run in variants.values():
        run()  # untimed: first-call costs on each side
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, run in variants.items():
            wall, cpu = run()
            times.setdefault(name, []).append(wall)
            times.setdefault(f"{name}_cpu", []).append(cpu)
    return times


# --- parent side --------------------------------------------------------------------------------------------------


def _python(ctx: Any) -> str:
    settings = getattr(ctx, "settings", None)
    return str(getattr(settings, "python", "") or sys.executable)


def _run_child(python: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(WORKER)}
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), *args], capture_output=True, text=True, timeout=1800, env=env,
        check=False,
    )  # fmt: skip
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-800:]}")


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def bench_b7(ctx: Any) -> None:
    quick = bool(getattr(getattr(ctx, "settings", None), "quick", False))
    rounds = 1 if quick else 3
    python = _python(ctx)
    base = Path(getattr(ctx, "tmp", None) or tempfile.mkdtemp(prefix="b7-")) / "b7"
    base.mkdir(parents=True, exist_ok=True)
    model, lora = base / "wan2.1-i2v-demo", base / "demo-lora.safetensors"
    env = {**os.environ, "PYTHONPATH": str(WORKER)}
    subprocess.run([python, "-m", "i2v_worker.demo", "--output", str(model), "--lora", str(lora)], env=env,
                   check=True, capture_output=True, timeout=900)  # fmt: skip
    raw: dict[str, Any] = {}
    if hasattr(ctx, "raw"):
        ctx.raw["B7"] = raw
    job = f"{WIDTH}x{HEIGHT}, {FRAMES} frames, {STEPS} steps, guidance {GUIDANCE}"

    parity = _run_child(python, "--child-parity", str(model), "--rounds", str(rounds + 2))
    raw["parity"] = parity
    med = {name: statistics.median(values) for name, values in parity.items()}
    ctx.row("B7", f"parity: plain diffusers call vs the worker's ({job}), median of {rounds + 2}, wall",
            f"{med['plain']:.2f} s vs {med['worker']:.2f} s, ratio {med['worker'] / med['plain']:.3f}",
            f"worker: Engine.generate on its long-lived job thread; on a fresh thread per job (as before): "
            f"{med['fresh_thread']:.2f} s, ratio {med['fresh_thread'] / med['plain']:.3f}; one process, alternating, "
            "after one untimed run of each")  # fmt: skip
    ctx.row("B7", "parity, CPU time of the calling thread (one torch thread: the work itself)",
            f"{med['plain_cpu']:.2f} s vs {med['worker_cpu']:.2f} s, ratio {med['worker_cpu'] / med['plain_cpu']:.3f}",
            f"fresh thread per job: {med['fresh_thread_cpu']:.2f} s, ratio "
            f"{med['fresh_thread_cpu'] / med['plain_cpu']:.3f}; unlike wall time, not inflated by other processes "
            "on the machine")  # fmt: skip

    reference = None
    quality_job = None
    for name, settings in PRESETS.items():
        frames_path = base / f"frames-{len(raw)}.npy"
        try:
            result = _run_child(python, "--child-preset", str(model), "--lora", str(lora), "--settings",
                                json.dumps(settings), "--rounds", str(rounds), "--frames", str(frames_path))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 (one preset failing is a row, not the end of the table)
            ctx.row("B7", name, f"failed: {str(exc)[:200]}")
            continue
        raw[name] = result
        import numpy as np

        frames = np.load(frames_path)
        job_s = statistics.median(result["job_s"])
        if reference is None:
            reference, quality_job = frames, job_s
        quality = "identical" if np.array_equal(frames, reference) else f"PSNR {psnr(frames, reference):.1f} dB"
        speedup = f", {quality_job / job_s:.2f}x quality" if quality_job and name != "quality" else ""
        if result["transformer_calls"]:
            total_blocks = result["transformer_calls"] * result["blocks"]
            blocks = (
                f"{result['transformer_calls']} transformer calls, {result['skipped_blocks']} of {total_blocks} "
                "blocks skipped"
            )
        else:  # hooks added after compiling do not run inside the compiled blocks
            blocks = "blocks skipped: not counted when compiled"
        per_step = f"{result['step_s']:.3f} s/step" if result["step_s"] else "s/step n/a"
        ctx.row(
            "B7",
            f"{name}: job (median of {rounds}); denoising step (median)",
            f"{job_s:.2f} s{speedup}; {per_step}",
            f"{result['steps']} steps; {blocks}; start-up (load + warm-up, compile included) "
            f"{result['startup_s']:.1f} s; frames vs quality: {quality}; {CAVEAT}",
        )


@dataclass
class _Row:
    bench: str
    metric: str
    value: str
    notes: str


class _PrintContext:
    """Stands in for bench/run.py's Context when this file runs alone."""

    def __init__(self, rounds: int) -> None:
        self.rows: list[_Row] = []
        self.raw: dict[str, Any] = {}
        self.settings = argparse.Namespace(python=sys.executable, quick=rounds == 1)
        self.tmp = Path(tempfile.mkdtemp(prefix="b7-"))

    def row(self, bench: str, metric: str, value: str, notes: str = "") -> None:
        self.rows.append(_Row(bench, metric, value, notes))
        print(f"| {bench} | {metric} | {value} | {notes} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child-parity", metavar="MODEL")
    parser.add_argument("--child-preset", metavar="MODEL")
    parser.add_argument("--lora", default="")
    parser.add_argument("--settings", default="{}")
    parser.add_argument("--frames", default="")
    args = parser.parse_args(argv)
    if args.child_parity:
        print(json.dumps(child_parity(args.child_parity, args.rounds)))
        return 0
    if args.child_preset:
        result = child_preset(args.child_preset, args.lora, json.loads(args.settings), args.rounds, args.frames)
        print(json.dumps(result))
        return 0
    ctx = _PrintContext(max(1, args.rounds))
    print("| bench | metric | value | notes |\n|---|---|---|---|", flush=True)
    bench_b7(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
