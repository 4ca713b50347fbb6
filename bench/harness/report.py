"""The run's surroundings and its output: how busy the machine was, what it is, and the markdown table."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.core import REPO, Row


def cpu_busy(seconds: float = 2.0) -> float | None:
    """The fraction of all CPUs busy over `seconds` (anything else running on the machine skews every figure)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return round(1 - (idle1 - idle0) / max(1, total1 - total0), 3)


def load_average() -> str | None:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return None


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        info["cpu"] = model.group(1).strip() if model else platform.processor()
    with contextlib.suppress(OSError, AttributeError):
        meminfo = Path("/proc/meminfo").read_text()
        total = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
        info["memory_gib"] = round(int(total.group(1)) / 2**20, 1) if total else None
    for package in ("torch", "diffusers", "transformers"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[package] = importlib.metadata.version(package)
    info["gpu"] = "none (CUDA not available)" if shutil.which("nvidia-smi") is None else "see B4"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                            text=True, timeout=10, check=False).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
        )
        info["git_dirty_files"] = len(dirty.stdout.splitlines())
    return info


def table(rows: Sequence[Row]) -> str:
    lines = ["| bench | measurement | value | notes |", "|---|---|---|---|"]
    for row in rows:
        cells = [row.bench, row.metric, row.value, row.notes]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)
