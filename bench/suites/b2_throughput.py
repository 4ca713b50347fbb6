"""B2 status and submit throughput with wrk: `/video/status` on finished tasks (B1's, or a few short demo jobs when
B1 did not run), `/video/submit` on a stub-worker server, and `/video/status` on the tasks that submit run left queued
(ids taken from the submit answers, spread over the queue)."""

from __future__ import annotations

from typing import Any

from harness import fixtures
from harness.client import PROMPT, Client
from harness.core import HOST, JOB_TIMEOUT_S, BenchError, Context, msec, say
from harness.servers import STUB_SETTINGS, Server, start_server, stub_python
from harness.wrk import MISSING, have_wrk, run_wrk, spread, submit_env, wrk_notes
from suites import b1_overhead

SUBMIT_IMAGE = "small-320x192.png"
SUBMIT_CONNECTIONS = 16
QUEUED_IDS = 50  # ids kept from the submit run for the queued-status run


def bench_b2(ctx: Context) -> None:
    if not have_wrk():
        ctx.row("B2", "status and submit throughput", MISSING)
        return
    try:
        status_on_finished(ctx)
    except BenchError as exc:
        ctx.row("B2", "status throughput", f"skipped: failed: {exc}")
    finally:
        ctx.release(b1_overhead.MAIN_SERVER, Server.stop)
    server = start_server(ctx, "submit", model=fixtures.model(ctx), python=stub_python(ctx), extra=STUB_SETTINGS)
    try:
        server.wait_ready()
        submit_then_queued_status(ctx, server, fixtures.image_server(ctx).url(SUBMIT_IMAGE))
    except BenchError as exc:
        ctx.row("B2", "submit rate", f"skipped: failed: {exc}")
    finally:
        server.stop()


def status_on_finished(ctx: Context) -> None:
    server = b1_overhead.main_server(ctx)
    ids = ctx.shared.get("b1_task_ids") or finished_ids(server, fixtures.image_server(ctx).url(b1_overhead.IMAGE))
    url = f"http://{HOST}:{server.port}/video/status"
    env = {"I2V_BENCH_IDS": ",".join(ids)}
    seconds = ctx.settings.wrk_seconds
    build = ctx.settings.build
    run_wrk("status.lua", url, 64, 2, env)  # warm-up, not recorded
    results: dict[str, Any] = {}
    for connections in (64, 256):
        say(f"B2: wrk status, {connections} connections, {seconds} s")
        result = run_wrk("status.lua", url, connections, seconds, env)
        results[str(connections)] = result
        ctx.row("B2", f"/video/status, {connections} connections, {seconds} s (Succeed tasks, worker idle)",
                f"{result['rps']:,.0f} req/s", f"{wrk_notes(result)}; {build} build")  # fmt: skip
    health_seconds = max(2, seconds // 4)
    say(f"B2: wrk GET /health, 256 connections, {health_seconds} s (reference: no key, no database)")
    health = run_wrk("get.lua", f"http://{HOST}:{server.port}/health", 256, health_seconds, {})
    results["health_256"] = health
    ctx.row("B2", f"reference: GET /health, 256 connections, {health_seconds} s (no key, no database, no body)",
            f"{health['rps']:,.0f} req/s", wrk_notes(health))  # fmt: skip
    at256 = results["256"]
    ok = at256["p99_us"] < 5000 and at256["non_2xx"] == 0 and at256["socket_errors"] == 0
    ctx.row("B2", "target: p99 < 5 ms at 256 connections, zero errors", "meets" if ok else "misses",
            f"p99 {msec(at256['p99_us'] / 1000)}, non-2xx {at256['non_2xx']}, socket errors {at256['socket_errors']}; "
            "wrk is a closed loop: mean latency = 256 / throughput, so p99 < 5 ms needs > 51,200 req/s")  # fmt: skip
    ctx.raw["B2_status"] = {"ids": ids, "runs": results}


def finished_ids(server: Server, image_url: str) -> list[str]:
    """Tasks for the status benchmark when B1 did not run: a few short demo jobs, run to the end."""
    with Client(server.port) as client:
        body = {"image_url": image_url, "prompt": PROMPT, "num_frames": 24, "infer_steps": 20, "seed": 42}
        ids = [client.submit(body) for _ in range(3)]
        for request_id in ids:
            client.wait_final(request_id, JOB_TIMEOUT_S)
    return ids


def submit_then_queued_status(ctx: Context, server: Server, image_url: str) -> None:
    url = f"http://{HOST}:{server.port}/video/submit"
    seconds = ctx.settings.submit_seconds
    say(f"B2: wrk submit, {SUBMIT_CONNECTIONS} connections, {seconds} s (stub worker)")
    result = run_wrk("submit.lua", url, SUBMIT_CONNECTIONS, seconds, submit_env(image_url, keep_ids=True))
    ctx.row("B2", f"/video/submit, {SUBMIT_CONNECTIONS} connections, {seconds} s "
            "(320x192 PNG from loopback; stub worker)",
            f"{result['rps']:,.0f} req/s", f"{wrk_notes(result)}; {ctx.settings.build} build")  # fmt: skip
    raw: dict[str, Any] = {"submit": result}
    queued = spread(result.pop("ids"), QUEUED_IDS)
    if len(queued) < 10:  # a slow server: too few ids sampled; take more from a few extra submits at the queue's end
        with Client(server.port) as client:
            queued += [client.submit({"image_url": image_url, "prompt": PROMPT}) for _ in range(10 - len(queued))]
    with Client(server.port) as client:
        total = int(client.metrics().total("i2v_queue_depth"))
    say(f"B2: wrk status on {len(queued)} of the queued tasks, 64 connections, {ctx.settings.wrk_seconds} s")
    status = run_wrk("status.lua", f"http://{HOST}:{server.port}/video/status", 64, ctx.settings.wrk_seconds,
                     {"I2V_BENCH_IDS": ",".join(queued)})  # fmt: skip
    ctx.row("B2", f"/video/status, 64 connections, {ctx.settings.wrk_seconds} s (InQueue tasks, {total:,} queued)",
            f"{status['rps']:,.0f} req/s", wrk_notes(status) + " · answers include queue_position")  # fmt: skip
    raw.update({"status_queued": status, "queued_tasks": total, "queued_ids": queued})
    ctx.raw["B2_submit"] = raw
