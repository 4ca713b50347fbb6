"""The benchmark suites, in the order they run. Each is `run(ctx)`: it adds its rows with `ctx.row(bench, metric,
value, notes)` and may raise BenchError, which becomes a "skipped: failed: …" row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.core import Context


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    run: Callable[[Context], None]


def all_suites() -> list[Suite]:
    from suites.b1_overhead import bench_b1
    from suites.b2_throughput import bench_b2
    from suites.b3_intake import bench_b3
    from suites.b4_gpu import bench_b4
    from suites.b5_scaling import bench_b5
    from suites.b6_depth import bench_b6
    from suites.b7 import bench_b7
    from suites.b8_groups import bench_b8
    from suites.b9 import bench_b9

    return [
        Suite("B1", "service overhead", bench_b1),
        Suite("B2", "status and submit throughput", bench_b2),
        Suite("B3", "image intake", bench_b3),
        Suite("B4", "GPU step", bench_b4),
        Suite("B5", "scaling over worker processes on PostgreSQL", bench_b5),
        Suite("B6", "queue at depth, SQLite and PostgreSQL", bench_b6),
        Suite("B7", "speed (bench/b7_speed.py)", bench_b7),
        Suite("B8", "groups: one job on several devices vs one process", bench_b8),
        Suite("B9", "LoRA set switches and LoRA job cost (bench/b9_loras.py)", bench_b9),
    ]


NAMES = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9")
SERVER_SUITES = {"B1", "B2", "B3", "B5", "B6"}  # need the i2v-server binary
