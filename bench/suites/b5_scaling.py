"""B5 scaling: jobs per hour with 1, 2, 4 and 8 worker processes on one PostgreSQL queue, each job held a fixed
time by the stub worker (bench/stub_worker.py, I2V_STUB_HOLD_SECONDS) so the machine's cores are not the limit.

A cluster of N workers is either one `serve` node with `I2V_DEVICES=cpu×N` (one supervised worker per entry), or
one `api` node plus N `worker` nodes (one device each) where the binary has those roles. Each scenario gets a fresh
database; N×K jobs are submitted through the API at once, and the rate is read from the stub workers' own record
of when each job reached a worker and when it left it (I2V_STUB_EVENTS_DIR): the jobs finished after the first N,
divided by the time from the N-th to the last finish (the start-up ramp left out). The API and `/metrics` confirm
that every job ended Succeed. efficiency(N) = rate(N) / (N × rate(1))."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import fixtures
from harness.client import Client, small_job
from harness.core import READY_TIMEOUT_S, BenchError, Context, median, say
from harness.servers import Server, role_available, start_server, stub_python

IMAGE = "small-320x192.png"
GOAL = 0.95  # efficiency at N = 8
# The stub reports progress about once a second, as a real worker on a large model does (one message per step).
PROGRESS_S = "1.0"


@dataclass
class Cluster:
    """The nodes of one scenario: where clients talk (`api`) and the nodes holding the workers."""

    api: Server
    worker_nodes: list[Server]
    nodes: list[Server] = field(default_factory=list)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


def bench_b5(ctx: Context) -> None:
    s = ctx.settings
    postgres = fixtures.postgres(ctx)
    unavailable = role_available(ctx, "worker") or role_available(ctx, "api")
    mode = "serve" if unavailable else "nodes"
    layout = ("one `serve` node with I2V_DEVICES=cpu×N" if mode == "serve"
              else "one `api` node + N `worker` nodes")  # fmt: skip
    rounds = 1 if s.quick else 2
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in s.scale_workers}
    for index in range(rounds):
        order = s.scale_workers if index % 2 == 0 else list(reversed(s.scale_workers))  # A B C D D C B A
        for n in order:
            say(f"B5: round {index + 1}/{rounds}, {n} worker(s), {layout}, {n * s.scale_jobs_per_worker} jobs "
                f"held {s.scale_hold_s:g} s each")  # fmt: skip
            runs[n].append(scenario(ctx, n, mode, postgres.new_database(f"b5_{n}_{index}")))
    add_rows(ctx, runs, layout, postgres.version, rounds, unavailable)
    ctx.raw["B5"] = {"mode": mode, "layout": layout, "role_probe": unavailable, "hold_s": s.scale_hold_s,
                     "jobs_per_worker": s.scale_jobs_per_worker,
                     "runs": {str(n): r for n, r in runs.items()}}  # fmt: skip


def scenario(ctx: Context, n: int, mode: str, database_url: str) -> dict[str, Any]:
    events = ctx.tmp / f"b5-events-{n}-{time.monotonic_ns()}"
    events.mkdir()
    cluster = start_cluster(ctx, n, mode, database_url, events)
    try:
        ready_s = wait_all_ready(cluster, n)
        image_url = fixtures.image_server(ctx).url(IMAGE)
        total = n * ctx.settings.scale_jobs_per_worker
        with Client(cluster.api.port) as client:
            before = succeeded(cluster)
            ids = [client.submit(small_job(image_url)) for _ in range(total)]
            timeout_s = 60 + 4 * total * ctx.settings.scale_hold_s / n
            states = [client.wait_final(request_id, timeout_s, poll_s=0.25)["status"] for request_id in ids]
        counted = succeeded(cluster) - before
    finally:
        cluster.stop()
    failed = [state for state in states if state != "Succeed"]
    if failed:
        raise BenchError(f"{len(failed)} of {total} jobs did not succeed with {n} workers: {sorted(set(failed))}")
    result = rate_from_events(read_events(events), n)
    result.update({"workers": n, "jobs": total, "ready_s": ready_s, "succeed_counted": counted})
    return result


def start_cluster(ctx: Context, n: int, mode: str, database_url: str, events: Path) -> Cluster:
    s = ctx.settings
    common = {
        "I2V_DATABASE_URL": database_url, "I2V_STUB_HOLD_SECONDS": f"{s.scale_hold_s:g}",
        "I2V_STUB_PROGRESS_SECONDS": PROGRESS_S, "I2V_STUB_EVENTS_DIR": str(events),
        "I2V_SHUTDOWN_GRACE_SECONDS": "1", "I2V_CANCEL_GRACE_SECONDS": "1",
    }  # fmt: skip
    stub = stub_python(ctx)
    model = fixtures.model(ctx)
    if mode == "serve":
        extra = {**common, "I2V_DEVICES": ",".join(["cpu"] * n), "I2V_MAX_CONCURRENT": str(n)}
        node = start_server(ctx, f"b5-serve-{n}", model=model, python=stub, extra=extra)
        return Cluster(api=node, worker_nodes=[node], nodes=[node])
    data = ctx.tmp / f"data-b5-{n}-{time.monotonic_ns()}"  # the storage root all nodes share
    api = start_server(ctx, f"b5-api-{n}", model=model, python=stub, role="api", extra=common, data=data)
    workers = [
        start_server(
            ctx,
            f"b5-worker-{n}-{i}",
            model=model,
            python=stub,
            role="worker",
            data=data,
            extra={**common, "I2V_DEVICES": "cpu", "I2V_MAX_CONCURRENT": "1"},
        )
        for i in range(n)
    ]
    return Cluster(api=api, worker_nodes=workers, nodes=[api, *workers])


def wait_all_ready(cluster: Cluster, n: int) -> float:
    """Seconds until every node answers, all N workers say `ready` (a node is ready with one) and, with separate
    nodes, the API node's own `/ready` lists all N worker nodes: an API node answers 503 (`/ready` and submits,
    "no worker node has registered") until a worker node's heartbeat is in the store, which a worker node writes
    up to a second after its worker became ready, so the submits wait for the API node, not the worker nodes."""
    started = time.monotonic()
    for node in cluster.nodes:
        node.wait_ready()  # an API node: /health (its /ready waits for the worker nodes, checked below)
    deadline = started + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready_workers(cluster) >= n and api_sees_workers(cluster, n):
            return time.monotonic() - started
        time.sleep(0.2)
    raise BenchError(f"not all {n} workers ready (on their nodes and in the API node's /ready) within "
                     f"{READY_TIMEOUT_S:.0f} s: {api_ready_answer(cluster)}")  # fmt: skip


def api_ready_answer(cluster: Cluster) -> tuple[int, dict[str, Any]]:
    with Client(cluster.api.port, timeout_s=10) as client:
        return client.get_json("/ready")


def api_sees_workers(cluster: Cluster, n: int) -> bool:
    """True when the API node's `/ready` answers 200 and, on an API node (one without workers of its own), lists
    N live worker nodes (`worker_nodes`, from their heartbeats in the store)."""
    if cluster.api in cluster.worker_nodes:
        return True  # `serve`: its /ready is its own workers', already counted
    status, ready = api_ready_answer(cluster)
    if status != 200:
        return False
    nodes = ready.get("worker_nodes")
    return not isinstance(nodes, list) or len(nodes) >= n


def ready_workers(cluster: Cluster) -> int:
    count = 0
    for node in cluster.worker_nodes:
        with Client(node.port, timeout_s=10) as client:
            status, ready = client.get_json("/ready")
        workers = ready.get("workers")
        if isinstance(workers, list):
            count += sum(1 for worker in workers if isinstance(worker, dict) and worker.get("state") == "ready")
        elif status == 200:
            count += 1
    return count


def succeeded(cluster: Cluster) -> float:
    """Succeed outcomes counted on the worker nodes' `/metrics`."""
    total = 0.0
    for node in cluster.worker_nodes:
        with Client(node.port, timeout_s=10) as client:
            total += client.metrics().total("i2v_task_outcomes_total", status="Succeed")
    return total


def read_events(directory: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for path in sorted(directory.glob("stub-*.jsonl")):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            event["worker"] = path.stem
            events.append(event)
    return sorted(events, key=lambda e: float(e["t"]))


def rate_from_events(events: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Jobs per second in the steady state, and how long a worker waited between a done and its next job."""
    done = [float(e["t"]) for e in events if e["event"] == "done"]
    if len(done) <= n:
        raise BenchError(f"only {len(done)} jobs finished with {n} workers; need more than {n}")
    window_s = done[-1] - done[n - 1]
    rate = (len(done) - n) / window_s
    gaps: list[float] = []
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_worker.setdefault(event["worker"], []).append(event)
    for worker_events in by_worker.values():
        for earlier, later in itertools.pairwise(worker_events):
            if earlier["event"] == "done" and later["event"] == "run":
                gaps.append(float(later["t"]) - float(earlier["t"]))
    return {"rate_per_s": rate, "window_s": window_s, "finished": len(done), "workers_seen": len(by_worker),
            "handoff_gap_s": sorted(gaps)}  # fmt: skip


def add_rows(
    ctx: Context, runs: dict[int, list[dict[str, Any]]], layout: str, pg_version: str, rounds: int, note: str | None
) -> None:
    s = ctx.settings
    rates = {n: median([r["rate_per_s"] for r in results]) for n, results in runs.items() if results}
    base = rates.get(1)
    where = (f"PostgreSQL {pg_version}; {layout}; stub worker holding each job {s.scale_hold_s:g} s; "
             f"{s.scale_jobs_per_worker} jobs per worker; {ctx.settings.build} build")  # fmt: skip
    if note:
        where += f" ({note})"
    for n, rate in rates.items():
        gaps = [gap for r in runs[n] for gap in r["handoff_gap_s"]]
        gap_note = (f"hand-off done → next job on the same worker: median {1000 * median(gaps):.0f} ms, "
                    f"max {1000 * max(gaps):.0f} ms" if gaps else "no hand-offs")  # fmt: skip
        per_round = ", ".join(f"{3600 * r['rate_per_s']:,.0f}" for r in runs[n])
        ideal = n * 3600 / s.scale_hold_s
        ctx.row("B5", f"{n} worker{'s' if n > 1 else ''}: jobs/hour (median of {len(runs[n])})", f"{3600 * rate:,.0f}",
                f"ideal {ideal:,.0f}; rounds {per_round}; {gap_note}" + (f"; {where}" if n == 1 else ""))  # fmt: skip
    for n, rate in rates.items():
        if n == 1 or base is None:
            continue
        efficiency = rate / (n * base)
        verdict = "" if n != 8 else (" — meets goal ≥ 0.95" if efficiency >= GOAL else " — misses goal ≥ 0.95")
        ctx.row("B5", f"efficiency at {n} workers: rate({n}) / ({n} × rate(1))", f"{efficiency:.3f}",
                f"medians of {rounds} round(s), order 1,2,4,8 then reversed{verdict}")  # fmt: skip
