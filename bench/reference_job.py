"""The "plain script" side of benchmark B1: one image-to-video job done the way the reference FastAPI service does it.

The model is loaded once (as that service does at start-up) with diffusers' `WanImageToVideoPipeline.from_pretrained`,
with the same settings as the worker (`worker/i2v_worker/pipeline.py`) on the CPU: float32, UniPC flow-matching
scheduler with flow_shift 3.0 (5.0 for 720P-area models), `torch.set_num_threads(1)`, progress bars off, and the same
warm-up run (32x32, 5 frames, 2 steps). Each job then does what the reference service does per request: download the
image over HTTP, open it with PIL, resize it to the job's size, call the pipeline, and write the MP4 with
`diffusers.utils.export_to_video(frames, path, fps=16)`. Only the jobs are timed.

`export_to_video` needs `imageio` + `imageio-ffmpeg`. Where they are missing (they are not in the worker's lock
file), `bench/run.py` installs them into `bench/results/cache/pydeps` and puts that on PYTHONPATH; failing that, this
script runs the very ffmpeg command line imageio-ffmpeg would run (libx264, yuv420p, crf 25 = quality 5, preset
medium) on the system ffmpeg, and says so in its answer (`"export": "ffmpeg-cli"`).

Two ways to run it:

    python bench/reference_job.py --model DIR --image-url URL --output out.mp4      # one job, prints JSON
    python bench/reference_job.py --model DIR --serve                               # JSON jobs on stdin, one a line

In `--serve` mode it prints `{"ready": true, ...}` once loaded, then one JSON answer per job line:
job line: {"image_url", "prompt", "negative_prompt", "width", "height", "num_frames", "infer_steps",
"guidance_scale", "seed", "output"}; answer: {"ok", "seconds", "fetch_s", "prepare_s", "inference_s", "export_s",
"frames", "bytes"} or {"ok": false, "error"}.
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

AREA_720P = 1280 * 720
FPS = 16


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
        )


def _native_area(model_path: str) -> int:
    info = Path(model_path) / "i2v_model.json"
    if info.is_file():
        return int(json.loads(info.read_text(encoding="utf-8"))["native_area"])
    return 832 * 480


def load(model_path: str, threads: int) -> Any:
    """The pipeline, loaded as the worker loads it on the CPU, then warmed up as the worker warms it up."""
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    pipe = WanImageToVideoPipeline.from_pretrained(model_path, dtype=torch.float32)
    flow_shift = 5.0 if _native_area(model_path) >= AREA_720P else 3.0
    pipe.scheduler = UniPCMultistepScheduler.from_config(
        pipe.scheduler.config, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift
    )
    pipe.to("cpu")
    pipe.set_progress_bar_config(disable=True)
    # The worker's warm-up: 2 x size_multiple square, 5 frames, 2 steps.
    image = Image.new("RGB", (32, 32), (127, 127, 127))
    pipe(
        image=image, prompt="warm-up", negative_prompt="", height=32, width=32, num_frames=5,
        num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator("cpu").manual_seed(0), output_type="np",
    )  # fmt: skip
    return pipe


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


def run_job(pipe: Any, job: Job, exporter: str) -> dict[str, Any]:
    started = time.perf_counter()
    with urllib.request.urlopen(job.image_url, timeout=60) as response:
        data = response.read()
    fetched = time.perf_counter()
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((job.width, job.height))
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
    ).frames[0]
    inferred = time.perf_counter()
    if exporter == "export_to_video":
        from diffusers.utils import export_to_video

        export_to_video(list(output), job.output, fps=FPS)
    else:
        _export_ffmpeg_cli(output, job.output, FPS)
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
    pipe = load(args.model, args.threads)
    load_s = time.perf_counter() - started
    if not args.serve:
        if not args.image_url:
            parser.error("--image-url is required without --serve")
        job = Job(
            image_url=args.image_url, prompt="a cat dancing in the style of a painting", negative_prompt="",
            width=args.width, height=args.height, num_frames=args.num_frames, infer_steps=args.steps,
            guidance_scale=3.0, seed=args.seed, output=args.output,
        )  # fmt: skip
        print(json.dumps({"load_s": load_s, "export": exporter, **run_job(pipe, job, exporter)}))
        return 0

    print(
        json.dumps({"ready": True, "load_s": load_s, "export": exporter, "threads": torch.get_num_threads()}),
        flush=True,
    )
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = run_job(pipe, Job.from_dict(json.loads(line)), exporter)
        except Exception as exc:  # noqa: BLE001 (one bad job must not end the session; run.py reports it)
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
