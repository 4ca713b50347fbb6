"""What every suite shares: paths, the run's settings, the context rows are added to, and number formatting."""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent.parent
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
CACHE = RESULTS / "cache"
DEFAULT_SERVER = REPO / ".build-release" / "release" / "i2v-server"
HOST = "127.0.0.1"  # the only address anything here binds to or connects to
KEY = "benchkey"
READY_TIMEOUT_S = 600.0
# The demo models B1 measures by default, the 480P one (whose server B2 reuses) first.
DEMO_MODELS = (
    "wan2.1-i2v-14b-480p-demo",
    "wan2.1-i2v-14b-720p-demo",
    "wan2.1-flf2v-14b-720p-demo",
    "wan2.2-i2v-a14b-demo",
    "wan2.2-ti2v-5b-demo",
)
JOB_TIMEOUT_S = 600.0

T = TypeVar("T")


class BenchError(RuntimeError):
    pass


@dataclass
class Row:
    bench: str
    metric: str
    value: str
    notes: str = ""


@dataclass
class Settings:
    server: Path
    python: str
    quick: bool
    only: set[str]
    jobs: int
    wrk_seconds: int
    submit_seconds: int
    intake_submits: int
    gpu_steps: int
    gpu_smoke_cpu: bool
    keep: bool
    scale_workers: list[int]
    scale_hold_s: float
    scale_jobs_per_worker: int
    depth: int
    build: str  # how the server binary was built, for the table's notes ("release", "debug", …)
    models: list[str] = field(default_factory=list)  # B1's demo models, in the order they run


@dataclass
class Context:
    """Handed to every suite. `row` adds a table row (a suite's whole output); `raw` keeps what it measured for the
    JSON report; `shared` holds what one suite leaves for a later one (B1's server and tasks for B2); `cleanups` runs
    at the end of the run, last in first out, even after an error."""

    settings: Settings
    tmp: Path
    logs: list[Path] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    cleanups: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def row(self, bench: str, metric: str, value: str, notes: str = "") -> None:
        self.rows.append(Row(bench, metric, value, notes))

    def shared_resource(self, name: str, start: Callable[[], T], stop: Callable[[T], None]) -> T:
        """`name` started once per run and stopped at its end (or earlier, with `release`)."""
        if name not in self.shared:
            resource = start()
            self.shared[name] = resource
            self.cleanups.callback(self.release, name, stop)
        return self.shared[name]  # type: ignore[no-any-return]

    def release(self, name: str, stop: Callable[[Any], None]) -> None:
        resource = self.shared.pop(name, None)
        if resource is not None:
            stop(resource)


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    if not values:
        raise BenchError("no values")
    return float(statistics.median(values))


def secs(value: float) -> str:
    if value >= 100:
        return f"{value:.0f} s"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1000:.1f} ms"


def msec(value_ms: float) -> str:
    return f"{value_ms:.2f} ms" if value_ms < 10 else f"{value_ms:.1f} ms"
