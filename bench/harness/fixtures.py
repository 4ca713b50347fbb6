"""Things several suites use, made once per run: the demo checkpoint and the loopback image server."""

from __future__ import annotations

from pathlib import Path

from harness.assets import demo_model, images
from harness.core import Context
from harness.postgres import PostgresCluster
from harness.servers import ImageServer


def model(ctx: Context) -> Path:
    return ctx.shared_resource("model", lambda: demo_model(ctx.settings.python), lambda _: None)


def image_server(ctx: Context) -> ImageServer:
    directory = images()
    return ctx.shared_resource("images", lambda: ImageServer(ctx, directory), ImageServer.stop)


def postgres(ctx: Context) -> PostgresCluster:
    return ctx.shared_resource("postgres", PostgresCluster, PostgresCluster.stop)
