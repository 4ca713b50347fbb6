"""B3 image intake: large JPEG and PNG submits, one at a time, on a stub-worker server. The server-side figures are
the per-submit change of its `/metrics` histograms (one submit between two scrapes: the `_sum` moves by exactly
that submit's value)."""

from __future__ import annotations

import time
from typing import Any

from harness import fixtures
from harness.assets import images
from harness.client import PROMPT, Client
from harness.core import BenchError, Context, median, msec, say
from harness.metrics import histogram_delta
from harness.servers import STUB_SETTINGS, start_server, stub_python

KINDS = (("photo-4000x3000.jpg", "12 MP JPEG 4000x3000"), ("photo-3840x2160.png", "4K PNG 3840x2160"))
# (key, label, histogram): the intake phases where the server publishes them, and its whole submit handling.
SERVER_FIGURES = (
    ("fetch", "fetch", "i2v_intake_fetch_duration_seconds"),
    ("decode", "decode + resize", "i2v_intake_decode_duration_seconds"),
    ("png", "PNG encode", "i2v_intake_png_duration_seconds"),
    ("server", "submit handled by the server (intake, input file, store insert)", "i2v_submit_duration_seconds"),
)


def bench_b3(ctx: Context) -> None:
    server = start_server(ctx, "intake", model=fixtures.model(ctx), python=stub_python(ctx), extra=STUB_SETTINGS)
    try:
        server.wait_ready()
        say(f"B3: {ctx.settings.intake_submits} submits of each large image, alternating")
        with Client(server.port) as client:
            submits = alternate(ctx, client)
    finally:
        server.stop()
    directory = images()
    for name, label in KINDS:
        size_mb = (directory / name).stat().st_size / 1e6
        add_rows(ctx, f"{label} ({size_mb:.1f} MB)", submits[name])
    ctx.raw["B3"] = {name: {"bytes": (directory / name).stat().st_size, "runs": runs} for name, runs in submits.items()}


def alternate(ctx: Context, client: Client) -> dict[str, list[dict[str, Any]]]:
    """One untimed submit of each first (connection set-up, libvips start-up), then A B A B."""
    images_server = fixtures.image_server(ctx)
    submits: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in KINDS}
    for index in range(-1, ctx.settings.intake_submits):
        for name, _ in KINDS:
            body = {"image_url": images_server.url(name), "prompt": PROMPT, "image_size": "auto", "seed": 42}
            before = client.metrics()
            started = time.perf_counter()
            request_id = client.submit(body)
            elapsed = time.perf_counter() - started
            after = client.metrics()
            if index < 0:
                continue
            run: dict[str, Any] = {"id": request_id, "submit_s": elapsed}
            for key, _, metric in SERVER_FIGURES:
                delta = histogram_delta(before, after, metric)
                if delta is not None and round(delta.count) == 1:
                    run[f"{key}_s"] = delta.total
            submits[name].append(run)
    return submits


def add_rows(ctx: Context, label: str, runs: list[dict[str, Any]]) -> None:
    if not runs:
        raise BenchError(f"no submits of {label}")
    n = len(runs)
    for key, what, metric in SERVER_FIGURES:
        values = [run[f"{key}_s"] for run in runs if f"{key}_s" in run]
        if values:
            ctx.row("B3", f"{label}: {what} (median of {len(values)})", msec(1000 * median(values)),
                    f"/metrics {metric}, per-submit _sum change")  # fmt: skip
        else:
            ctx.row("B3", f"{label}: {what}", "skipped: not published", f"/metrics has no {metric}")
    ctx.row("B3", f"{label}: whole submit, client side (median of {n})",
            msec(1000 * median([r["submit_s"] for r in runs])),
            "runs " + ", ".join(f"{1000 * r['submit_s']:.0f}" for r in runs)
            + f" ms; {ctx.settings.build} build")  # fmt: skip
