"""The "plain script" side of benchmark B1: one image-to-video job done the way the reference FastAPI service does it.

The model is loaded once (as that service does at start-up) with diffusers' `WanImageToVideoPipeline.from_pretrained`,
with the same settings as the worker (`worker/i2v_worker/pipeline.py`) on the CPU: float32, the UniPC flow-matching
scheduler with the model's flow shift (`--flow-shift`; without it, the one in the checkpoint's scheduler config),
`torch.set_num_threads(1)`, progress bars off, and the same warm-up run (a square of `--warm-size`, 2 x the model's
size multiple, 5 frames, 2 steps, guidance 3.0 on both experts of a two-expert model, the same image as last frame
where the model needs one: `--warm-last-image`). Each job then does what the reference service does per request:
download the image (and the last image, where the job has one) over HTTP, open it with PIL, resize it to the job's
size, call the pipeline (with `last_image` and `guidance_scale_2` where the job gives them), and write the MP4 with
`diffusers.utils.export_to_video(frames, path, fps=fps)` at the model's frame rate (`--fps`). Only the jobs are timed.

Every demo model loads through the same call: Wan2.1 I2V and FLF2V (CLIP image encoder), Wan2.2 I2V-A14B
(`transformer_2` and `boundary_ratio` from its model_index.json) and Wan2.2 TI2V-5B (saved as `WanPipeline`, loaded
into the image-to-video pipeline with its `expand_timesteps`), as the worker loads them.

`export_to_video` needs `imageio` + `imageio-ffmpeg`. Where they are missing (they are not in the worker's lock
file), `bench/run.py` installs them into `bench/results/cache/pydeps` and puts that on PYTHONPATH; failing that, this
script runs the very ffmpeg command line imageio-ffmpeg would run (libx264, yuv420p, crf 25 = quality 5, preset
medium) on the system ffmpeg, and says so in its answer (`"export": "ffmpeg-cli"`).

Two ways to run it:

    python bench/reference_job.py --model DIR --image-url URL --output out.mp4      # one job, prints JSON
    python bench/reference_job.py --model DIR --serve                               # JSON jobs on stdin, one a line

In `--serve` mode it prints `{"ready": true, ...}` once loaded (with what it loaded: pipeline class, scheduler,
flow shift, experts, expand_timesteps, fps), then one JSON answer per job line:
job line: {"image_url", "prompt", "negative_prompt", "width", "height", "num_frames", "infer_steps",
"guidance_scale", "seed", "output"} and optionally "last_image_url", "guidance_scale_2"; answer: {"ok", "seconds",
"fetch_s", "prepare_s", "inference_s", "export_s", "frames", "bytes"} or {"ok": false, "error"}.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

WARM_UP_FRAMES = 5  # the worker's warm-up clip


@dataclass(frozen=True)
class Job:
    image_url: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    infer_steps: int
    guidance_scale: float
    seed: int
    output: str
    last_image_url: str | None = None
    guidance_scale_2: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(
            image_url=str(data["image_url"]),
            prompt=str(data["prompt"]),
            negative_prompt=str(data.get("negative_prompt", "")),
            width=int(data["width"]),
            height=int(data["height"]),
            num_frames=int(data["num_frames"]),
            infer_steps=int(data["infer_steps"]),
            guidance_scale=float(data.get("guidance_scale", 3.0)),
            seed=int(data["seed"]),
            output=str(data["output"]),
            last_image_url=str(data["last_image_url"]) if data.get("last_image_url") else None,
            guidance_scale_2=float(data["guidance_scale_2"]) if data.get("guidance_scale_2") is not None else None,
        )


def load(model_path: str, threads: int, flow_shift: float | None, warm_size: int, warm_last_image: bool) -> Any:
    """The pipeline, loaded as the worker loads it on the CPU, then warmed up as the worker warms it up."""
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    pipe = WanImageToVideoPipeline.from_pretrained(model_path, dtype=torch.float32)
    if flow_shift is None:
        flow_shift = float(pipe.scheduler.config.get("flow_shift", 1.0))
    pipe.scheduler = UniPCMultistepScheduler.from_config(
        pipe.scheduler.config, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift
    )
    pipe.to("cpu")
    pipe.set_progress_bar_config(disable=True)
    # The worker's warm-up: a square of 2 x the size multiple, 5 frames, 2 steps (with two experts, one on each).
    image = Image.new("RGB", (warm_size, warm_size), (127, 127, 127))
    extra: dict[str, Any] = {}
    if _experts(pipe) > 1:
        extra["guidance_scale_2"] = 3.0
    if warm_last_image:
        extra["last_image"] = image
    pipe(
        image=image, prompt="warm-up", negative_prompt="", height=warm_size, width=warm_size,
        num_frames=WARM_UP_FRAMES, num_inference_steps=2, guidance_scale=3.0,
        generator=torch.Generator("cpu").manual_seed(0), output_type="np", **extra,
    )  # fmt: skip
    return pipe


def _experts(pipe: Any) -> int:
    return 2 if getattr(pipe, "transformer_2", None) is not None else 1


def describe(pipe: Any, fps: int) -> dict[str, Any]:
    """What was loaded, for the benchmark's record (and to check it is the model the worker serves)."""
    return {
        "pipeline": type(pipe).__name__,
        "scheduler": type(pipe.scheduler).__name__,
        "flow_shift": float(pipe.scheduler.config.flow_shift),
        "experts": _experts(pipe),
        "boundary_ratio": pipe.config.get("boundary_ratio"),
        "expand_timesteps": bool(pipe.config.get("expand_timesteps", False)),
        "image_encoder": getattr(pipe, "image_encoder", None) is not None,
        "dtype": str(pipe.transformer.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "fps": fps,
    }


def _has_imageio() -> bool:
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def _export_ffmpeg_cli(frames: np.ndarray, path: str, fps: int) -> None:
    """What `export_to_video(frames, path, fps)` makes imageio-ffmpeg run (quality 5 -> crf 25), on the system ffmpeg."""
    uint8 = np.ascontiguousarray(np.stack([(frame * 255).astype(np.uint8) for frame in frames]))
    _, height, width, _ = uint8.shape
    command = [
        "ffmpeg", "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}", "-pix_fmt", "rgb24",
        "-r", f"{fps:.02f}", "-i", "-", "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", "25",
        "-v", "warning", path,
    ]  # fmt: skip
    subprocess.run(command, input=uint8.tobytes(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return bytes(response.read())


def run_job(pipe: Any, job: Job, exporter: str, fps: int) -> dict[str, Any]:
    started = time.perf_counter()
    data = _fetch(job.image_url)
    last_data = _fetch(job.last_image_url) if job.last_image_url else None
    fetched = time.perf_counter()
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((job.width, job.height))
    extra: dict[str, Any] = {}
    if last_data is not None:
        extra["last_image"] = Image.open(io.BytesIO(last_data)).convert("RGB").resize((job.width, job.height))
    if job.guidance_scale_2 is not None:
        extra["guidance_scale_2"] = job.guidance_scale_2
    prepared = time.perf_counter()
    output = pipe(
        image=image,
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        height=job.height,
        width=job.width,
        num_frames=job.num_frames // 4 * 4 + 1,
        num_inference_steps=job.infer_steps,
        guidance_scale=job.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(job.seed),
        output_type="np",
        **extra,
    ).frames[0]
    inferred = time.perf_counter()
    if exporter == "export_to_video":
        from diffusers.utils import export_to_video

        export_to_video(list(output), job.output, fps=fps)
    else:
        _export_ffmpeg_cli(output, job.output, fps)
    finished = time.perf_counter()
    return {
        "ok": True,
        "seconds": finished - started,
        "fetch_s": fetched - started,
        "prepare_s": prepared - fetched,
        "inference_s": inferred - prepared,
        "export_s": finished - inferred,
        "frames": int(output.shape[0]),
        "bytes": Path(job.output).stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="diffusers checkpoint directory")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the worker uses 1 per job on the CPU)")
    parser.add_argument("--serve", action="store_true", help="read JSON jobs from stdin, one a line")
    parser.add_argument("--flow-shift", type=float, help="the scheduler's flow shift (default: the checkpoint's)")
    parser.add_argument("--fps", type=int, default=16, help="the MP4's frame rate: the model's (16; TI2V-5B 24)")
    parser.add_argument("--warm-size", type=int, default=32, help="warm-up frame side: 2 x the size multiple (32)")
    parser.add_argument("--warm-last-image", action="store_true", help="warm up with a last image (FLF2V needs one)")
    parser.add_argument("--image-url")
    parser.add_argument("--output", default="reference.mp4")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--num-frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    exporter = "export_to_video" if _has_imageio() else "ffmpeg-cli"
    started = time.perf_counter()
    pipe = load(args.model, args.threads, args.flow_shift, args.warm_size, args.warm_last_image)
    load_s = time.perf_counter() - started
    if not args.serve:
        if not args.image_url:
            parser.error("--image-url is required without --serve")
        job = Job(
            image_url=args.image_url, prompt="a cat dancing in the style of a painting", negative_prompt="",
            width=args.width, height=args.height, num_frames=args.num_frames, infer_steps=args.steps,
            guidance_scale=3.0, seed=args.seed, output=args.output,
        )  # fmt: skip
        print(json.dumps({"load_s": load_s, "export": exporter, **run_job(pipe, job, exporter, args.fps)}))
        return 0

    print(
        json.dumps({"ready": True, "load_s": load_s, "export": exporter, **describe(pipe, args.fps)}),
        flush=True,
    )
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = run_job(pipe, Job.from_dict(json.loads(line)), exporter, args.fps)
        except Exception as exc:  # noqa: BLE001 (one bad job must not end the session; run.py reports it)
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
