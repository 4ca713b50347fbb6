"""MP4 encoding: raw RGB24 frames piped into ffmpeg (libx264, yuv420p, moov atom first), stoppable on cancel."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

CHUNK_BYTES = 1 << 20  # written to ffmpeg between two cancel checks
POLL_SECONDS = 0.1  # how often a cancel is checked while ffmpeg finishes


class EncodeError(RuntimeError):
    pass


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] (as diffusers' `output_type="np"` gives them) to contiguous uint8 RGB."""
    return np.ascontiguousarray(np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8))


def ffmpeg_command(ffmpeg: str, width: int, height: int, fps: int, output: Path) -> list[str]:
    return [
        ffmpeg,
        "-hide_banner",
        "-loglevel", "error",
        "-y",
        "-f", "rawvideo",
        "-pix_fmt", "rgb24",
        "-s", f"{width}x{height}",
        "-r", str(fps),
        "-i", "-",
        "-an",
        "-c:v", "libx264",
        # veryfast encodes a demo job in about half the time of fast for a few percent more bytes at the
        # same CRF; encoding sits on every job's critical path, bytes only on the download.
        "-preset", "veryfast",
        "-crf", "18",
        "-pix_fmt", "yuv420p",
        "-movflags", "+faststart",
        "-f", "mp4",
        str(output),
    ]  # fmt: skip


def encode_mp4(
    frames: np.ndarray, output_path: str | os.PathLike[str], fps: int, check: Callable[[], None] | None = None
) -> None:
    """Writes `frames` (uint8, frames x height x width x 3) as an H.264 MP4 to `output_path`.

    ffmpeg writes to a temporary name in the same directory, which is then renamed into place, so a half-written
    file is never visible under `output_path`. `check` is called between writes of at most `CHUNK_BYTES` to ffmpeg
    and every `POLL_SECONDS` while it finishes; whatever it raises (a job's `Cancelled`) kills ffmpeg and leaves
    nothing behind, then propagates.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise EncodeError(f"expected uint8 frames of shape (F, H, W, 3), got {frames.dtype} {frames.shape}")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise EncodeError("ffmpeg not found on PATH")
    output = Path(output_path)
    _, height, width, _ = frames.shape
    tmp = output.with_name(f".{output.name}.{uuid.uuid4().hex[:12]}.part")
    data = memoryview(np.ascontiguousarray(frames).reshape(-1))
    try:
        proc = subprocess.Popen(
            ffmpeg_command(ffmpeg, width, height, fps, tmp),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stderr is not None
        errors: list[bytes] = []
        # Drained on a thread of its own, so ffmpeg never blocks on a full stderr pipe while we write its stdin.
        drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()), name="ffmpeg-stderr", daemon=True)
        drain.start()
        try:
            try:
                for offset in range(0, len(data), CHUNK_BYTES):
                    if check is not None:
                        check()
                    proc.stdin.write(data[offset : offset + CHUNK_BYTES])
                proc.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg stopped reading: its exit status and stderr say why
            while True:
                try:
                    proc.wait(timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    if check is not None:
                        check()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            drain.join()
            proc.stderr.close()
        if proc.returncode != 0:
            detail = b"".join(errors).decode("utf-8", "replace").strip()[-2000:]
            raise EncodeError(f"ffmpeg exited with status {proc.returncode}: {detail}")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
