"""B6 queue at depth: `/video/status` latency and claim latency with a deep queue, SQLite and PostgreSQL side by side.

For each store a stub-worker server (the worker holds its one job forever, so nothing else leaves the queue) is
filled through the API with wrk (submit.lua, 16 connections, the small loopback image) until `depth` tasks are queued.
Then, with both filled servers up, `/video/status` on 100 ids spread over each queue (every answer computes its
queue position) at 64 connections, alternating the stores (S P S P …). Last, each server is restarted on its filled
store with the stub answering every job at once (I2V_STUB_HOLD_SECONDS=0), so the dispatcher claims task after task
from the deep queue (1,000 claims; `--quick` 300), and the claim latency is read from its `/metrics` histogram
`i2v_claim_duration_seconds`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from harness import fixtures
from harness.client import Client
from harness.core import HOST, BenchError, Context, median, msec, say
from harness.metrics import Histogram
from harness.servers import STUB_SETTINGS, Server, start_server, stub_python
from harness.wrk import MISSING, have_wrk, run_wrk, spread, submit_env, wrk_notes

IMAGE = "small-320x192.png"
FILL_CONNECTIONS = 16
STATUS_CONNECTIONS = 64
STATUS_IDS = 100
CLAIM_METRIC = "i2v_claim_duration_seconds"
CLAIM_GOAL_S = 0.020
STATUS_GOAL_S = 0.010
CLAIM_CONCURRENCY = 4  # tasks in flight while claiming: claims and result recording overlap, as on a busy node


@dataclass
class Store:
    name: str  # "SQLite" or "PostgreSQL"
    extra: dict[str, str]
    server: Server | None = None
    ids: list[str] | None = None
    queued: int = 0
    fill: dict[str, Any] | None = None


def bench_b6(ctx: Context) -> None:
    if not have_wrk():
        ctx.row("B6", "queue at depth", MISSING)
        return
    postgres = fixtures.postgres(ctx)
    stores = [
        Store("SQLite", {}),
        Store(f"PostgreSQL {postgres.version}", {"I2V_DATABASE_URL": postgres.new_database("b6")}),
    ]
    raw: dict[str, Any] = {"depth": ctx.settings.depth}
    try:
        for store in stores:
            fill(ctx, store)
        status = status_rounds(ctx, stores)
    finally:
        for store in stores:
            if store.server is not None:
                store.server.stop()
    claims = {store.name: claim_latency(ctx, store) for store in stores}
    add_rows(ctx, stores, status, claims)
    raw.update({"fill": {s.name: s.fill for s in stores}, "status": status,
                "claims": dict(claims)})  # fmt: skip
    ctx.raw["B6"] = raw


def start_store_server(ctx: Context, store: Store, label: str, extra: dict[str, str]) -> Server:
    short = store.name.split()[0].lower()
    server = start_server(ctx, f"b6-{short}-{label}", model=fixtures.model(ctx), python=stub_python(ctx),
                          data=ctx.tmp / f"data-b6-{short}",
                          extra={**STUB_SETTINGS, **store.extra, **extra})  # fmt: skip
    server.wait_ready()
    return server


def fill(ctx: Context, store: Store) -> None:
    depth = ctx.settings.depth
    store.server = server = start_store_server(ctx, store, "fill", {})
    image_url = fixtures.image_server(ctx).url(IMAGE)
    say(f"B6: filling the {store.name} queue with {depth:,} tasks through the API ({FILL_CONNECTIONS} connections)")
    with Client(server.port) as client:

        def filled() -> bool:
            return client.metrics().total("i2v_submit_duration_seconds_count") >= depth

        started = time.monotonic()
        result = run_wrk("submit.lua", f"http://{HOST}:{server.port}/video/submit", FILL_CONNECTIONS, 3600,
                         submit_env(image_url, keep_ids=True), submit_limit=depth, done=filled)  # fmt: skip
        elapsed = time.monotonic() - started
        time.sleep(1.5)  # the dispatcher's gauges follow within its 1 s tick
        metrics = client.metrics()
    store.queued = int(metrics.total("i2v_queue_depth"))
    ids = result.pop("ids")
    if store.queued < 0.99 * depth or len(ids) < STATUS_IDS:
        raise BenchError(f"{store.name}: only {store.queued:,} tasks queued ({len(ids)} ids) of {depth:,}")
    store.ids = spread(ids[1:], STATUS_IDS)  # the first may be the one the stub holds
    store.fill = {"seconds": elapsed, "accepted": len(ids), "queued": store.queued, "wrk": result}


def status_rounds(ctx: Context, stores: list[Store]) -> dict[str, list[dict[str, Any]]]:
    seconds = ctx.settings.wrk_seconds
    rounds = 1 if ctx.settings.quick else 3
    results: dict[str, list[dict[str, Any]]] = {store.name: [] for store in stores}
    for store in stores:
        assert store.server is not None and store.ids is not None
        run_wrk("status.lua", status_url(store.server), STATUS_CONNECTIONS, 2, {"I2V_BENCH_IDS": ",".join(store.ids)})
    for index in range(rounds):
        for store in stores:
            assert store.server is not None and store.ids is not None
            say(f"B6: status on the {store.name} queue, {STATUS_CONNECTIONS} connections, {seconds} s "
                f"(round {index + 1}/{rounds})")  # fmt: skip
            result = run_wrk("status.lua", status_url(store.server), STATUS_CONNECTIONS, seconds,
                             {"I2V_BENCH_IDS": ",".join(store.ids)})  # fmt: skip
            results[store.name].append(result)
    return results


def status_url(server: Server) -> str:
    return f"http://{HOST}:{server.port}/video/status"


def claim_latency(ctx: Context, store: Store) -> dict[str, Any]:
    """Claims from the filled queue by a restarted server whose stub worker answers every job at once."""
    claims = 300 if ctx.settings.quick else 1000  # the queue stays ≥ 85 % of its depth
    extra = {"I2V_STUB_HOLD_SECONDS": "0", "I2V_MAX_CONCURRENT": str(CLAIM_CONCURRENCY),
             "I2V_DEVICES": ",".join(["cpu"] * CLAIM_CONCURRENCY)}  # fmt: skip
    say(f"B6: {claims} claims from the {store.name} queue ({store.queued:,} deep)")
    server = start_store_server(ctx, store, "claim", extra)
    try:
        with Client(server.port) as client:
            started = time.monotonic()
            while time.monotonic() - started < 300:
                claimed = client.metrics().histogram(CLAIM_METRIC)
                if claimed is None and time.monotonic() - started > 30:
                    return {"missing": CLAIM_METRIC}  # not even after many claims: not published
                if claimed is not None and claimed.count >= claims:
                    break
                time.sleep(0.5)
            final = client.metrics()
    finally:
        server.stop()
    histogram = final.histogram(CLAIM_METRIC)
    if histogram is None:
        return {"missing": CLAIM_METRIC}
    return {"histogram": histogram, "queue_after": int(final.total("i2v_queue_depth")),
            "outcomes": final.total("i2v_task_outcomes_total", status="Succeed")}  # fmt: skip


def add_rows(
    ctx: Context, stores: list[Store], status: dict[str, list[dict[str, Any]]], claims: dict[str, dict[str, Any]]
) -> None:
    build = ctx.settings.build
    for store in stores:
        assert store.fill is not None
        wrk = store.fill["wrk"]
        ctx.row("B6", f"{store.name}: queue filled through the API", f"{store.queued:,} queued",
                f"{store.fill['seconds']:.0f} s at {wrk['rps']:,.0f} submits/s, {FILL_CONNECTIONS} connections; "
                f"non-2xx {wrk['non_2xx']} · socket errors {wrk['socket_errors']}; {build} build")  # fmt: skip
    verdicts: list[str] = []
    for store in stores:
        runs = status[store.name]
        p50 = median([r["p50_us"] / 1000 for r in runs])
        p99 = median([r["p99_us"] / 1000 for r in runs])
        per_round = "; ".join(f"round {i + 1}: {wrk_notes(r)}, {r['rps']:,.0f} req/s" for i, r in enumerate(runs))
        ctx.row("B6", f"{store.name}: /video/status, {STATUS_CONNECTIONS} connections, {store.queued:,} queued "
                f"(median of {len(runs)})", f"p50 {msec(p50)} · p99 {msec(p99)}",
                f"{STATUS_IDS} ids spread over the queue (answers include queue_position); {per_round}")  # fmt: skip
        verdicts.append(f"{store.name} status p99 {msec(p99)} {'<' if p99 < STATUS_GOAL_S * 1000 else '≥'} 10 ms")
    for store in stores:
        claim = claims[store.name]
        verdicts.append(claim_row(ctx, store, claim))
    missing = any(" n/a" in v for v in verdicts)
    verdict = "misses" if any(" ≥ " in v for v in verdicts) else "incomplete" if missing else "meets"
    ctx.row("B6", "goal: claim p99 < 20 ms and status p99 < 10 ms at 64 connections, both stores", verdict,
            "; ".join(verdicts))  # fmt: skip


def claim_row(ctx: Context, store: Store, claim: dict[str, Any]) -> str:
    if "missing" in claim:
        ctx.row("B6", f"{store.name}: claim latency", "skipped: not published", f"/metrics has no {claim['missing']}")
        return f"{store.name} claim p99 n/a"
    histogram: Histogram = claim["histogram"]
    p50 = histogram.quantile(0.5)
    p99 = histogram.quantile(0.99)
    if p50 is None or p99 is None:
        ctx.row("B6", f"{store.name}: claim latency", "skipped: no claims observed")
        return f"{store.name} claim p99 n/a"
    ctx.row(
        "B6",
        f"{store.name}: claim latency, {int(histogram.count)} claims, queue {store.queued:,} → "
        f"{claim['queue_after']:,}",
        f"p50 {msec(1000 * p50[0])} · p99 {msec(1000 * p99[0])}",
        f"from /metrics {CLAIM_METRIC} (bucket interpolation: p50 in {bounds(p50)}, p99 in {bounds(p99)}); "
        f"mean {msec(1000 * (histogram.mean or 0))}; {CLAIM_CONCURRENCY} jobs in flight, each answered at once",
    )
    return f"{store.name} claim p99 {msec(1000 * p99[0])} {'<' if p99[2] <= CLAIM_GOAL_S else '≥'} 20 ms"


def bounds(estimate: tuple[float, float, float]) -> str:
    _, low, high = estimate
    return f"({1000 * low:g}, {1000 * high:g}] ms"
