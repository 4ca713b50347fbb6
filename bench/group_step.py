"""B8: groups (one job on several devices, context parallelism) against one process.

Two measurements, each printing one JSON line (then, for people, a markdown table on stderr):

    python bench/group_step.py --demo-cpu [--steps 20]
        The demo model through the real worker (`python -m i2v_worker` over the protocol), one process and a group of
        2 CPU ranks (`I2V_DEVICE=cpu+cpu`, gloo), the same job and seed: seconds per step (median interval between
        `progress` messages), the encoders' time (from `encode_prompt` to `denoise`), inference and total seconds, and
        the largest difference between the two runs' frames. On a machine of a few cores the two ranks share the
        cores, so this shows correctness and the group's overhead, not a speed-up.

    python bench/group_step.py --gpu [--steps 3] [--ranks 1,2,4,8]
        The full-size Wan2.1-I2V-14B-480P transformer with random weights (bench/gpu_step.py's build), one denoising
        step (two forwards, CFG) at 832x480x81, on 1, 2, 4 and 8 GPUs under `ContextParallelConfig(ulysses_degree=N)`
        (NCCL): seconds per step and scaling efficiency (step time on 1 / (N x step time on N)). Counts with more GPUs
        than the machine has are "not yet measured". `--smoke-cpu` runs the same code on a toy config with 2 CPU
        ranks (gloo) to check the code path.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
WORKER = BENCH.parent / "worker"
sys.path.insert(0, str(WORKER))
sys.path.insert(0, str(BENCH))

NOT_MEASURED = "not yet measured"


# --- the demo model through the worker --------------------------------------------------------------------------


class Worker:
    """`python -m i2v_worker` with its protocol lines timestamped as they arrive."""

    def __init__(self, env: dict[str, str], log: IO[bytes]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "i2v_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            env={**os.environ, "PYTHONPATH": str(WORKER), **env},
        )  # fmt: skip
        self.lines: queue.Queue[tuple[float, dict[str, Any]] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put((time.perf_counter(), json.loads(raw)))
        self.lines.put(None)

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def until(self, kinds: tuple[str, ...], timeout: float = 600) -> list[tuple[float, dict[str, Any]]]:
        seen: list[tuple[float, dict[str, Any]]] = []
        while True:
            item = self.lines.get(timeout=timeout)
            if item is None:
                raise RuntimeError(f"the worker ended; last messages {seen[-3:]}")
            seen.append(item)
            if item[1]["type"] in kinds:
                return seen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.send({"type": "shutdown"})
            self.proc.wait(60)


def demo_run(device: str, *, checkpoint: Path, image: Path, tmp: Path, steps: int) -> dict[str, Any]:
    frames = tmp / "frames"
    frames.mkdir(exist_ok=True)
    env = {"I2V_MODEL_PATH": str(checkpoint), "I2V_DEVICE": device, "I2V_TEST_FRAMES_DIR": str(frames)}
    with open(tmp / f"worker-{device}.log", "wb") as log:
        started = time.perf_counter()
        worker = Worker(env, log)
        try:
            ready = worker.until(("ready", "fatal"), timeout=300)[-1][1]
            if ready["type"] != "ready":
                raise RuntimeError(ready["message"])
            start_s = time.perf_counter() - started
            task = device.replace("+", "_")
            sent = time.perf_counter()
            worker.send({
                "type": "run", "task_id": task, "image_path": str(image), "prompt": "a dancing cat",
                "negative_prompt": "blurry", "width": 160, "height": 96, "num_frames": 17, "infer_steps": steps,
                "guidance_scale": 3.0, "seed": 42, "output_path": str(tmp / f"{task}.mp4"),
            })  # fmt: skip
            seen = worker.until(("done", "error"))
        finally:
            worker.stop()
    end = seen[-1][1]
    if end["type"] != "done":
        raise RuntimeError(end["message"])
    phases = {m["phase"]: t for t, m in seen if m["type"] == "phase"}
    progress = [t for t, m in seen if m["type"] == "progress"]
    intervals = [b - a for a, b in itertools.pairwise(progress)]
    return {
        "device": device,
        "start_s": round(start_s, 2),
        "encoders_s": round(phases["denoise"] - phases["encode_prompt"], 4),
        "step_s": round(statistics.median(intervals), 4),
        "inference_s": end["inference_seconds"],
        "total_s": round(seen[-1][0] - sent, 3),
        "progress_messages": len(progress),
        "frames": str(frames / f"{task}.npy"),
    }


def demo_cpu(steps: int) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    from i2v_worker import demo

    with tempfile.TemporaryDirectory(prefix="b8-") as name:
        tmp = Path(name)
        checkpoint = tmp / "demo"
        demo.ensure(checkpoint)
        image = tmp / "in.png"
        Image.new("RGB", (160, 96), (90, 140, 200)).save(image)
        one = demo_run("cpu", checkpoint=checkpoint, image=image, tmp=tmp, steps=steps)
        two = demo_run("cpu+cpu", checkpoint=checkpoint, image=image, tmp=tmp, steps=steps)
        difference = float(np.abs(np.load(one.pop("frames")) - np.load(two.pop("frames"))).max())
    return {"ok": True, "cores": os.cpu_count(), "steps": steps, "one": one, "group_2": two,
            "max_frame_difference": difference}  # fmt: skip


def demo_table(result: dict[str, Any]) -> str:
    one, two = result["one"], result["group_2"]
    rows = [
        ("seconds per step (median)", "step_s"),
        ("encoders (text, image, VAE encode)", "encoders_s"),
        ("inference (done.inference_seconds)", "inference_s"),
        ("job total (run to done)", "total_s"),
        ("start (process to ready)", "start_s"),
        ("progress messages", "progress_messages"),
    ]
    lines = [
        f"B8 (CPU, demo model, {result['steps']} steps, {result['cores']} cores): a group of 2 vs 1 process."
        " Both ranks share these cores: this shows correctness and overhead, not a speed-up.",
        "",
        "| metric | 1 process | group of 2 (cpu+cpu) |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {one[key]} | {two[key]} |" for label, key in rows]
    lines.append(f"| largest frame difference (float32, 0..1) | - | {result['max_frame_difference']:.2e} |")
    return "\n".join(lines)


# --- the full-size transformer on GPUs --------------------------------------------------------------------------


def _rank_main(rank: int, ranks: int, port: int, args: argparse.Namespace, out: Any) -> None:
    import torch
    import torch.distributed as dist
    from diffusers import ContextParallelConfig
    from gpu_step import SMOKE, WAN21_I2V_14B_480P, build, inputs, step

    from i2v_worker.group import _cpu_ranks_on_one_device

    cpu = args.smoke_cpu
    device = torch.device("cpu") if cpu else torch.device("cuda", rank)
    if not cpu:
        torch.cuda.set_device(device)
    dtype = torch.float32 if cpu else torch.bfloat16
    config = SMOKE if cpu else WAN21_I2V_14B_480P
    height, width, frames = (64, 64, 5) if cpu else (args.height, args.width, args.frames)
    if ranks > 1:
        dist.init_process_group(
            "gloo" if cpu else "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=ranks
        )
    model = build(config, device, dtype)  # the same seed on every rank: the same weights
    if ranks > 1:
        with _cpu_ranks_on_one_device(cpu=cpu):
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=ranks))
    x = inputs(config, height, width, frames, device, dtype)
    timestep = torch.tensor([999.0], device=device)

    def sync() -> None:
        if not cpu:
            torch.cuda.synchronize(device)
        if ranks > 1:
            dist.barrier()

    times: list[float] = []
    with torch.inference_mode():
        step(model, x, timestep, 3.0)
        sync()
        for _ in range(args.steps):
            started = time.perf_counter()
            step(model, x, timestep, 3.0)
            sync()
            times.append(time.perf_counter() - started)
    if rank == 0:
        peak = None if cpu else round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        out.put({"ranks": ranks, "step_s": round(statistics.median(times), 4), "peak_gib_rank0": peak})
    if ranks > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gpu(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.multiprocessing as mp

    available = 2 if args.smoke_cpu else torch.cuda.device_count()
    counts = [int(part) for part in args.ranks.split(",")]
    rows: list[dict[str, Any]] = []
    context = mp.get_context("spawn")
    for ranks in counts:
        if ranks > available:
            here = f"{available} CPU ranks in the smoke run" if args.smoke_cpu else f"{available} GPUs here"
            rows.append({"ranks": ranks, "step_s": None, "note": f"{NOT_MEASURED}: {here}"})
            continue
        out = context.SimpleQueue()
        port = _free_port()
        procs = [context.Process(target=_rank_main, args=(r, ranks, port, args, out)) for r in range(ranks)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        if any(proc.exitcode != 0 for proc in procs) or out.empty():
            rows.append({"ranks": ranks, "step_s": None, "note": f"failed (exit codes {[p.exitcode for p in procs]})"})
            continue
        rows.append(out.get())
    base = next((row["step_s"] for row in rows if row["ranks"] == 1 and row["step_s"]), None)
    for row in rows:
        if base and row["step_s"]:
            row["efficiency"] = round(base / (row["ranks"] * row["step_s"]), 3)
    if args.smoke_cpu:
        where, size = "toy config, CPU ranks (gloo): code path only, not GPU figures", "64x64x5"
    else:
        where, size = (
            "Wan2.1-I2V-14B-480P transformer, random weights, bf16, NCCL",
            f"{args.width}x{args.height}x{args.frames}",
        )
    return {"ok": True, "what": where, "size": size, "rows": rows}


def gpu_table(result: dict[str, Any]) -> str:
    lines = [
        f"B8 (GPU): {result['what']}, {result['size']}, seconds per denoising step (2 forwards, CFG)",
        "",
        "| GPUs | s/step | scaling efficiency | peak GiB (rank 0) |",
        "|---|---|---|---|",
    ]
    for row in result["rows"]:
        if row["step_s"] is None:
            lines.append(f"| {row['ranks']} | {row['note']} | - | - |")
        else:
            lines.append(
                f"| {row['ranks']} | {row['step_s']} | {row.get('efficiency', '-')} | {row['peak_gib_rank0'] or '-'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--demo-cpu", action="store_true", help="the demo model through the worker, 1 vs 2 CPU ranks")
    mode.add_argument("--gpu", action="store_true", help="the full-size transformer on 1, 2, 4, 8 GPUs")
    parser.add_argument("--steps", type=int, help="steps (demo: 20; GPU: 3 timed after one warm-up)")
    parser.add_argument("--ranks", default="1,2,4,8", help="GPU counts (--gpu)")
    parser.add_argument("--smoke-cpu", action="store_true", help="--gpu's code on a toy config, 2 CPU ranks")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    args = parser.parse_args(argv)
    if args.demo_cpu:
        result = demo_cpu(args.steps or 20)
        table = demo_table(result)
    else:
        args.steps = args.steps or 3
        if args.smoke_cpu:
            args.ranks = "1,2,4,8"
        result = gpu(args)
        table = gpu_table(result)
    print(json.dumps(result), flush=True)
    print(table, file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
