"""The i2v-server benchmarks (bench/README.md): B1 service overhead, B2 status and submit throughput, B3 image intake,
B4 GPU step, B5 scaling over worker processes, B6 queue at depth, B7 speed, B8 groups.

    .venv/bin/python bench/run.py --server .build-release/release/i2v-server            # the whole table
    .venv/bin/python bench/run.py --server .build/debug/i2v-server --quick --only B5,B6 # smoke run of a subset

Prints a markdown table (every row measured, or "skipped: <why>") and writes the figures and the raw data as JSON
into bench/results/ (git-ignored). The suites (bench/suites/) read only what the service publishes: its HTTP API and
`/metrics`. Everything listens on and talks to 127.0.0.1 only; every process it starts is stopped when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.core import DEFAULT_SERVER, DEMO_MODELS, REPO, RESULTS, BenchError, Context, Settings, say
from harness.report import cpu_busy, load_average, machine, table
from suites import NAMES, SERVER_SUITES, all_suites


def run(ctx: Context) -> None:
    for suite in all_suites():
        if suite.name not in ctx.settings.only:
            ctx.row(suite.name, "-", "skipped: not selected (--only)")
            continue
        say(f"{suite.name}: {suite.title}")
        try:
            suite.run(ctx)
        except BenchError as exc:
            say(f"{suite.name} failed: {exc}")
            ctx.row(suite.name, suite.title, f"skipped: failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug or an unexpected answer in one suite: report it, run the others
            traceback.print_exc()
            ctx.row(suite.name, suite.title, f"skipped: failed: {type(exc).__name__}: {exc}")


def build_label(server: Path) -> str:
    parts = set(server.parts)
    return "release" if "release" in parts else "debug" if "debug" in parts else "unknown"


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--server", type=Path, default=DEFAULT_SERVER, help="the i2v-server binary (release build)")
    parser.add_argument("--build", help="how the binary was built, for the notes (default: from its path)")
    parser.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"),
                        help="the worker's Python (the venv with i2v_worker)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="short smoke run: fewer jobs, shorter wrk runs")
    parser.add_argument("--only", default=",".join(NAMES), help=f"comma-separated subset of {','.join(NAMES)}")
    parser.add_argument("--jobs", type=int, help="B1 jobs per side (default 5; --quick 2)")
    parser.add_argument("--models", default=",".join(DEMO_MODELS),
                        help=f"B1's demo models, comma-separated (default all: {','.join(DEMO_MODELS)})")  # fmt: skip
    parser.add_argument("--workers", default="1,2,4,8", help="B5 worker counts (default 1,2,4,8; must include 1)")
    parser.add_argument("--hold", type=float, default=2.0, help="B5 seconds the stub worker holds each job (2)")
    parser.add_argument("--jobs-per-worker", type=int, help="B5 jobs per worker (default 6; --quick 3)")
    parser.add_argument("--depth", type=int, help="B6 queued tasks (default 10000; --quick 2000)")
    parser.add_argument(
        "--gpu-smoke-cpu", action="store_true", help="also run B4's code on a 2-layer toy config on the CPU"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (data dirs, logs, videos)")
    args = parser.parse_args(argv)
    only = {part.strip().upper() for part in args.only.split(",") if part.strip()}
    if not only <= set(NAMES):
        parser.error(f"--only takes {','.join(NAMES)}, not {args.only}")
    server = args.server if args.server.is_absolute() else (Path.cwd() / args.server)
    if only & SERVER_SUITES and not server.is_file():
        parser.error(f"no server binary at {server} (build it: swift build -c release --scratch-path .build-release)")
    if not Path(args.python).exists():
        parser.error(f"no Python at {args.python} (make python-env)")
    models = list(dict.fromkeys(part.strip().lower() for part in args.models.split(",") if part.strip()))
    if not models or not set(models) <= set(DEMO_MODELS):
        parser.error(f"--models takes some of {','.join(DEMO_MODELS)}, not {args.models}")
    jobs = args.jobs if args.jobs is not None else (2 if args.quick else 5)
    if not 1 <= jobs <= 50:
        parser.error("--jobs must be 1..50")
    try:
        workers = sorted({int(part) for part in args.workers.split(",") if part.strip()})
    except ValueError:
        parser.error(f"--workers takes numbers, not {args.workers}")
    if 1 not in workers or not all(1 <= n <= 64 for n in workers):
        parser.error("--workers must include 1 and stay within 1..64")
    depth = args.depth if args.depth is not None else (2000 if args.quick else 10_000)
    if depth < 200:
        parser.error("--depth must be at least 200")
    return Settings(
        server=server.resolve(), python=args.python, quick=args.quick, only=only, jobs=jobs,
        wrk_seconds=5 if args.quick else 20, submit_seconds=3 if args.quick else 10,
        intake_submits=3 if args.quick else 10, gpu_steps=2 if args.quick else 3, gpu_smoke_cpu=args.gpu_smoke_cpu,
        keep=args.keep, scale_workers=workers, scale_hold_s=args.hold,
        scale_jobs_per_worker=args.jobs_per_worker or (3 if args.quick else 6), depth=depth,
        build=args.build or build_label(server), models=models,
    )  # fmt: skip


def write_report(ctx: Context, stamp: dt.datetime, elapsed: float, quiet: dict[str, Any], busy_text: str) -> None:
    settings = ctx.settings
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"bench-{stamp.strftime('%Y%m%d-%H%M%S')}"
    logs_dir = RESULTS / f"{name}-logs"
    logs_dir.mkdir(exist_ok=True)
    for log in ctx.logs:
        with contextlib.suppress(OSError):
            shutil.copy(log, logs_dir / log.name)
    report: dict[str, Any] = {
        "started": stamp.isoformat(timespec="seconds"),
        "seconds": round(elapsed, 1),
        "quick": settings.quick,
        "settings": {
            k: (str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v)
            for k, v in asdict(settings).items()
        },
        "machine": machine(),
        "quiet": {**quiet, "load_average_after": load_average()},
        "rows": [asdict(row) for row in ctx.rows],
        "raw": ctx.raw,
    }
    text = json.dumps(report, indent=2, default=str)
    (RESULTS / f"{name}.json").write_text(text)
    (RESULTS / "latest.json").write_text(text)
    markdown = table(ctx.rows)
    (RESULTS / "latest.md").write_text(
        f"{markdown}\n\nMachine: {report['machine'].get('cpu')} ({report['machine'].get('cpus')} CPUs), "
        f"{report['machine'].get('memory_gib')} GiB, {report['started']}; run time {elapsed:.0f} s"
        f"{' (--quick)' if settings.quick else ''}; {settings.build} build; CPUs {busy_text} busy before the run, "
        f"load average {quiet['load_average_before']} before, {report['quiet']['load_average_after']} after.\n"
    )
    print(markdown)
    print(
        f"\nCPUs {busy_text} busy before the run (load average {quiet['load_average_before']}, "
        f"after: {report['quiet']['load_average_after']})"
        + (f"; server: {settings.server} ({settings.build} build)" if settings.only & SERVER_SUITES else "")
    )
    print(f"run time {elapsed:.0f} s; results: {RESULTS / (name + '.json')}; logs: {logs_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    # SIGTERM/SIGHUP end the run through the normal clean-up path (every started process is stopped).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, frame: sys.exit(128 + number))
    started = time.monotonic()
    stamp = dt.datetime.now(dt.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="i2v-bench-"))
    ctx = Context(settings=settings, tmp=tmp)
    uses_server = bool(settings.only & SERVER_SUITES)
    say(f"scratch directory {tmp}" + (f"; server {settings.server} ({settings.build} build)" if uses_server else ""))
    busy = cpu_busy()
    quiet: dict[str, Any] = {"cpu_busy_before": busy, "load_average_before": load_average()}
    busy_text = "?" if busy is None else f"{busy:.0%}"
    if busy is not None and busy > 0.15:
        say(f"warning: the CPUs are already {busy_text} busy; the figures will be skewed")
    status = 0
    try:
        with ctx.cleanups:  # stops every server, cluster and helper the suites started, last first
            run(ctx)
    except BenchError as exc:
        say(f"error: {exc}")
        ctx.row("-", "run aborted", f"failed: {exc}")
        status = 1
    finally:
        write_report(ctx, stamp, time.monotonic() - started, quiet, busy_text)
        if settings.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
