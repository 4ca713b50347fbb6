"""The MP4 as ffprobe sees it, and the atomic write."""

from __future__ import annotations

import json
import struct
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import HEIGHT, WIDTH, Recorder, make_job, needs_ffmpeg, needs_ffprobe

from i2v_worker.encode import EncodeError, encode_mp4, to_uint8
from i2v_worker.pipeline import Engine


def top_level_boxes(path: Path) -> list[str]:
    """The types of an MP4 file's top-level boxes, in file order."""
    data = path.read_bytes()
    boxes: list[str] = []
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        elif size == 0:
            size = len(data) - offset
        boxes.append(kind.decode("latin-1"))
        offset += size
    return boxes


def ffprobe(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_streams", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    streams = json.loads(out)["streams"]
    assert len(streams) == 1
    return streams[0]


@needs_ffmpeg
@needs_ffprobe
def test_job_video_is_h264_yuv420p_16fps_with_moov_first(
    engine: Engine, image_file: Callable[..., Path], tmp_path: Path
) -> None:
    output = tmp_path / "video.mp4"
    result = engine.run(make_job(image_file(), output, num_frames=17, infer_steps=2), on_step=Recorder(),
                        cancelled=threading.Event())  # fmt: skip
    stream = ffprobe(output)
    assert stream["codec_name"] == "h264"
    assert stream["pix_fmt"] == "yuv420p"
    assert (stream["width"], stream["height"]) == (WIDTH, HEIGHT)
    assert stream["r_frame_rate"] == "16/1" and stream["avg_frame_rate"] == "16/1"
    assert int(stream["nb_read_frames"]) == 17 == result.num_frames  # type: ignore[call-overload]
    boxes = top_level_boxes(output)
    assert "moov" in boxes and "mdat" in boxes
    assert boxes.index("moov") < boxes.index("mdat"), boxes


@needs_ffmpeg
@needs_ffprobe
def test_encode_mp4_frame_count_and_size(tmp_path: Path) -> None:
    frames = to_uint8(np.random.default_rng(0).random((9, 32, 48, 3), dtype=np.float32))
    output = tmp_path / "clip.mp4"
    encode_mp4(frames, output, fps=16)
    stream = ffprobe(output)
    assert (stream["width"], stream["height"], int(stream["nb_read_frames"])) == (48, 32, 9)  # type: ignore[call-overload]
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


@needs_ffmpeg
def test_failed_encode_leaves_nothing_behind(tmp_path: Path) -> None:
    frames = np.zeros((3, 31, 33, 3), dtype=np.uint8)  # odd sizes: libx264 refuses yuv420p
    output = tmp_path / "clip.mp4"
    with pytest.raises(EncodeError, match="ffmpeg exited"):
        encode_mp4(frames, output, fps=16)
    assert list(tmp_path.iterdir()) == []


@needs_ffmpeg
def test_existing_output_is_replaced_whole(tmp_path: Path) -> None:
    output = tmp_path / "clip.mp4"
    output.write_bytes(b"old")
    encode_mp4(np.zeros((5, 16, 16, 3), dtype=np.uint8), output, fps=16)
    assert output.read_bytes()[4:8] == b"ftyp"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_missing_ffmpeg_is_an_encode_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EncodeError, match="ffmpeg not found"):
        encode_mp4(np.zeros((1, 16, 16, 3), dtype=np.uint8), tmp_path / "x.mp4", fps=16)


def test_to_uint8_rounds_and_clips() -> None:
    frames = np.array([[[[-0.1, 0.0, 0.5]], [[0.999, 1.0, 1.5]]]], dtype=np.float32)
    assert to_uint8(frames).tolist() == [[[[0, 0, 128]], [[255, 255, 255]]]]


def test_rejects_wrong_frame_arrays(tmp_path: Path) -> None:
    with pytest.raises(EncodeError, match="uint8"):
        encode_mp4(np.zeros((1, 16, 16, 3), dtype=np.float32), tmp_path / "x.mp4", fps=16)
