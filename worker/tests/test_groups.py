"""Groups: `I2V_DEVICE=cpu+cpu` runs one job on two CPU ranks (gloo), spoken to over the protocol like the server."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_ffmpeg
from test_e2e import Worker, run_message

from i2v_worker.errors import OOM_MESSAGE
from i2v_worker.group import split_devices
from i2v_worker.settings import ConfigurationError

# Ulysses computes the same per-head attention and per-token layers, only split among ranks: on the CPU in float32
# the frames agree to within rounding of a few ulp (they have come out identical here).
FRAME_TOLERANCE = 1e-5
LONG_JOB_STEPS = 400  # long enough to be caught mid-way on a slow machine


def rank_pid(worker: Worker, rank: int = 1, timeout: float = 30) -> int:
    """The pid of a rank process, from rank 0's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(rf"started rank {rank} on \S+ \(pid (\d+)\)", worker.log_text())
        if found:
            return int(found.group(1))
        time.sleep(0.1)
    raise AssertionError(f"rank {rank} never started; log:\n{worker.log_text()}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@pytest.fixture()
def start(tmp_path: Path, demo_checkpoint: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def make(**env: str) -> Worker:
        w = Worker(tmp_path, **{"I2V_MODEL_PATH": str(demo_checkpoint), **env})
        started.append(w)
        return w

    yield make
    for w in started:
        if w.proc.poll() is None:
            w.send({"type": "shutdown"})
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(20)
        w.close()


def test_devices_split() -> None:
    assert split_devices("cpu") == ()
    assert split_devices("cuda:1") == ()
    assert split_devices("cpu+cpu") == ("cpu", "cpu")
    assert split_devices("cuda:0+cuda:1") == ("cuda:0", "cuda:1")
    for bad in ("cpu+cuda:0", "cuda+cuda", "cuda:0+cuda:0", "cpu+"):
        with pytest.raises(ConfigurationError):
            split_devices(bad)


@needs_ffmpeg
def test_group_matches_one_process_and_goes_on_after_oom_and_cancel(
    start: Callable[..., Worker], image_file: Callable[..., Path], tmp_path: Path
) -> None:
    """An out-of-memory on rank 1 fails only its job; then the same job and seed make the same frames on a group
    of 2 as in one process; progress comes once per step; a cancel stops both ranks (the next job still runs in step); a sequence that does not split evenly
    is refused as bad input."""
    frames = tmp_path / "frames"
    frames.mkdir()
    image = image_file()
    single = start(I2V_DEVICE="cpu", I2V_TEST_FRAMES_DIR=str(frames))
    assert single.next(timeout=120)["type"] == "ready"
    single.send(run_message("one", image, tmp_path / "one.mp4"))
    assert single.until(lambda m: m["type"] in ("done", "error"))[-1]["type"] == "done"
    single.send({"type": "shutdown"})
    assert single.wait() == 0

    # Rank 1 runs out of memory in its text encoder in its first job (test-only hook): that job fails as usual.
    group = start(I2V_DEVICE="cpu+cpu", I2V_TEST_FRAMES_DIR=str(frames), I2V_TEST_GROUP_OOM_RANK="1")
    ready = group.next(timeout=120)
    assert ready["type"] == "ready", ready
    assert (ready["device"], ready["ranks"], ready["devices"], ready["slots"]) == ("cpu+cpu", 2, ["cpu", "cpu"], 1)
    group.send(run_message("oom", image, tmp_path / "oom.mp4"))
    end = group.until(lambda m: m["type"] in ("done", "error"))[-1]
    assert (end["kind"], end["message"]) == ("oom", OOM_MESSAGE), end

    group.send(run_message("two", image, tmp_path / "two.mp4"))
    seen = group.until(lambda m: m["type"] in ("done", "error"))
    assert seen[-1]["type"] == "done", seen
    assert [m["step"] for m in seen if m["type"] == "progress"] == [1, 2, 3]
    one, two = np.load(frames / "one.npy"), np.load(frames / "two.npy")
    assert one.shape == two.shape == (17, 96, 160, 3)
    assert float(np.abs(one - two).max()) <= FRAME_TOLERANCE

    group.send(run_message("long", image, tmp_path / "long.mp4", infer_steps=LONG_JOB_STEPS))
    group.until(lambda m: m["type"] == "progress")
    group.send({"type": "cancel", "task_id": "long"})
    end = group.until(lambda m: m["type"] in ("done", "error"))[-1]
    assert end["kind"] == "cancelled", end
    assert re.fullmatch(rf"cancelled at step \d+ of {LONG_JOB_STEPS}", end["message"]), end
    group.send(run_message("after", image, tmp_path / "after.mp4", seed=7))
    assert group.until(lambda m: m["type"] in ("done", "error"))[-1]["type"] == "done"

    # A sequence that does not split evenly: 144x80 is 9x5 patches, and 1 frame is 1 latent frame: 45 tokens.
    group.send(run_message("odd", image_file(144, 80, "odd.png"), tmp_path / "odd.mp4", width=144, height=80,
                           num_frames=1))  # fmt: skip
    end = group.until(lambda m: m["type"] in ("done", "error"))[-1]
    assert end["kind"] == "bad_input" and "do not divide among this worker's 2 ranks" in end["message"], end
    pid = rank_pid(group)
    group.send({"type": "shutdown"})
    assert group.wait() == 0
    assert gone(pid)


def test_killed_rank_takes_the_group_down(
    start: Callable[..., Worker], image_file: Callable[..., Path], tmp_path: Path
) -> None:
    w = start(I2V_DEVICE="cpu+cpu")
    assert w.next(timeout=120)["type"] == "ready"
    pid = rank_pid(w)
    w.send(run_message("t", image_file(), tmp_path / "t.mp4", infer_steps=LONG_JOB_STEPS))
    w.until(lambda m: m["type"] == "progress")
    os.kill(pid, 9)
    fatal = w.until(lambda m: m["type"] == "fatal", timeout=30)[-1]
    assert "rank 1" in fatal["message"] and "restarting the whole group" in fatal["message"], fatal
    assert w.wait() == 1
    assert gone(pid)


def test_hung_rank_times_out(start: Callable[..., Worker], image_file: Callable[..., Path], tmp_path: Path) -> None:
    timeout = 5
    w = start(I2V_DEVICE="cpu+cpu", I2V_GROUP_TIMEOUT_SECONDS=str(timeout), I2V_TEST_GROUP_STALL_RANK="1")
    assert w.next(timeout=120)["type"] == "ready"
    pid = rank_pid(w)
    w.send(run_message("t", image_file(), tmp_path / "t.mp4"))
    w.until(lambda m: m["type"] == "progress")
    started = time.monotonic()
    fatal = w.until(lambda m: m["type"] == "fatal", timeout=timeout + 30)[-1]
    assert time.monotonic() - started < timeout + 20
    assert "I2V_GROUP_TIMEOUT_SECONDS=5" in fatal["message"], fatal
    assert w.wait() == 1
    assert gone(pid)


def test_heads_that_do_not_divide_are_refused(start: Callable[..., Worker]) -> None:
    w = start(I2V_DEVICE="cpu+cpu+cpu")  # the demo transformer has 2 heads
    fatal = w.next(timeout=120)
    assert fatal["type"] == "fatal", fatal
    assert fatal["message"].startswith("cannot start: the transformer has 2 attention heads"), fatal
    assert "3 ranks" in fatal["message"]
    assert "started rank" not in w.log_text()  # refused before any other rank started
    w.send({"type": "shutdown"})
    assert w.wait() == 1


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"I2V_SPEED": "fast"}, "I2V_SPEED=fast does not run in a group"),
        ({"I2V_COMPILE": "1"}, "I2V_COMPILE=1 does not run in a group"),
    ],
)
def test_presets_a_group_cannot_run_are_refused(start: Callable[..., Worker], env: dict[str, str], reason: str) -> None:
    w = start(I2V_DEVICE="cpu+cpu", **env)
    fatal = w.next(timeout=120)
    assert fatal["type"] == "fatal" and fatal["message"].startswith(f"cannot start: {reason}"), fatal
    w.send({"type": "shutdown"})
    assert w.wait() == 1


def test_killed_rank_0_leaves_no_rank_behind(
    start: Callable[..., Worker], image_file: Callable[..., Path], tmp_path: Path
) -> None:
    w = start(I2V_DEVICE="cpu+cpu")
    assert w.next(timeout=120)["type"] == "ready"
    pid = rank_pid(w)
    w.send(run_message("t", image_file(), tmp_path / "t.mp4", infer_steps=LONG_JOB_STEPS))
    w.until(lambda m: m["type"] == "progress")
    w.proc.kill()
    w.proc.wait(10)
    assert gone(pid)  # PR_SET_PDEATHSIG: the kernel ends it with its parent


def test_group_timeout_setting() -> None:
    from i2v_worker.settings import DEFAULT_GROUP_TIMEOUT_SECONDS, Settings

    assert Settings.from_env({"I2V_MODEL": "x"}).group_timeout == DEFAULT_GROUP_TIMEOUT_SECONDS == 120
    assert Settings.from_env({"I2V_MODEL": "x", "I2V_GROUP_TIMEOUT_SECONDS": "2.5"}).group_timeout == 2.5
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(ConfigurationError, match="I2V_GROUP_TIMEOUT_SECONDS"):
            Settings.from_env({"I2V_MODEL": "x", "I2V_GROUP_TIMEOUT_SECONDS": bad})
