"""One real `i2v-server serve` (debug build, demo model on the CPU, SQLite in a temporary data dir) for the whole
session, on loopback, with a loopback image server beside it. Clients under test talk to it as any user would.

Environment:
  I2V_SERVER_BIN   the server binary (default .build/debug/i2v-server)
  I2V_TEST_PYTHON  the worker's interpreter (default .venv/bin/python, built by scripts/python-env.sh)
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
API_KEY = "client-test-key-0123456789"
# Signs the server's webhook deliveries; receivers verify them with it (Standard Webhooks' `whsec_` form).
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"client-test-webhook-key-0123456789").decode()


@dataclass(frozen=True)
class Service:
    base_url: str
    api_key: str
    data_dir: Path
    log: Path
    webhook_secret: str = WEBHOOK_SECRET

    def metrics(self) -> str:
        with urllib.request.urlopen(self.base_url + "/metrics", timeout=30) as response:
            return str(response.read().decode())

    def native(self, path: str, body: dict[str, object], key: str | None = None) -> tuple[int, dict[str, object]]:
        """A call to the seed's JSON API, to see the same task from the other side."""
        request = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key or self.api_key}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _log_tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-4000:] if log.exists() else ""


@pytest.fixture(scope="session")
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from _serve(request, tmp_path_factory, {})


@pytest.fixture(scope="session")
def a14b_service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A second server for the Wan2.2 A14B demo, the model that takes a last frame; started only by the tests
    that ask for it."""
    yield from _serve(request, tmp_path_factory, {"I2V_MODEL": "wan2.2-i2v-a14b-demo"})


def _serve(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, extra: dict[str, str]
) -> Iterator[Service]:
    binary = Path(os.environ.get("I2V_SERVER_BIN", REPO / ".build/debug/i2v-server"))
    python = Path(os.environ.get("I2V_TEST_PYTHON", REPO / ".venv/bin/python"))
    assert binary.is_file(), f"no server binary at {binary}: run `swift build` first"
    assert python.exists(), f"no worker interpreter at {python}: run scripts/python-env.sh first"
    data_dir = tmp_path_factory.mktemp("i2v-data")
    log = data_dir / "server.log"
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    environment = {
        **os.environ,
        "I2V_HOST": "127.0.0.1",
        "I2V_PORT": str(port),
        "I2V_PUBLIC_URL": base_url,
        "I2V_API_KEYS": API_KEY,
        "I2V_DATA_DIR": str(data_dir),
        "I2V_PYTHON": str(python),
        "I2V_WORKER_DIR": str(REPO / "worker"),
        "I2V_DEVICES": "cpu",
        "I2V_ALLOW_PRIVATE_IMAGE_HOSTS": "true",
        # LoRAs by URL, from the tests' loopback servers (private hosts are allowed just above).
        "I2V_LORA_URLS": "true",
        "I2V_SUBMITS_PER_MINUTE": "0",
        "I2V_LOG_LEVEL": "info",
        "I2V_WEBHOOK_SECRET": WEBHOOK_SECRET,
        # Short, so a stream whose client left is noticed (and counted closed) within seconds.
        "I2V_STREAM_KEEPALIVE_SECONDS": "2",
        **extra,
    }
    environment.pop("I2V_DATABASE_URL", None)
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [str(binary), "serve"], stdout=output, stderr=subprocess.STDOUT, env=environment, cwd=REPO
        )
    try:
        # The first start builds the demo checkpoint and loads it in the worker.
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, f"the server exited with {server.returncode}:\n{_log_tail(log)}"
            try:
                with urllib.request.urlopen(base_url + "/ready", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"the server was not ready within 300 s:\n{_log_tail(log)}"
            time.sleep(0.25)
        yield Service(base_url=base_url, api_key=API_KEY, data_dir=data_dir, log=log)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if request.session.testsfailed:
            print(f"server log ({log}), last lines:\n{_log_tail(log)}")


def png_bytes(width: int = 320, height: int = 180) -> bytes:
    """A picture with some structure (not flat), so the model and encoder see real content."""
    image = Image.new("RGB", (width, height))
    image.putdata([((x * 7) % 256, (y * 11) % 256, (x + y) % 256) for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def image_server() -> Iterator[str]:
    """Serves /image.png on loopback (the server is started with private image hosts allowed)."""
    body = png_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the standard library's name
            if self.path != "/image.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the standard library's name
            pass

    with loopback_server(Handler) as base:
        yield f"{base}/image.png"


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    """Serves a directory's files (give it `directory=`), without logging each request."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the standard library's name
        pass


@contextmanager
def loopback_server(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server on a free loopback port, in a thread, for as long as the block runs; its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def write_demo_loras(service: Service, names: list[str], *, misfit: str | None = None) -> Path:
    """Writes demo LoRAs for the demo transformer into the service's catalog (`I2V_LORA_DIR` is not set, so
    `<data dir>/loras`) with the worker's own builder, in the worker's interpreter (the test venv has no torch);
    `misfit`, if given, is one of another width, which fits no model of the table. The catalog is read at each
    listing, so no restart is needed."""
    catalog = service.data_dir / "loras"
    python = os.environ.get("I2V_TEST_PYTHON", str(REPO / ".venv/bin/python"))
    script = (
        "import sys; from pathlib import Path; from i2v_worker import demo\n"
        "catalog = Path(sys.argv[1])\n"
        "for index, name in enumerate(sys.argv[3:]):\n"
        "    demo.build_style_lora(catalog / f'{name}.safetensors', seed=10 + index)\n"
        "if sys.argv[2]:\n"
        "    demo.build_style_lora(catalog / f'{sys.argv[2]}.safetensors', dim=32, ffn_dim=64)\n"
    )
    subprocess.run(
        [python, "-c", script, str(catalog), misfit or "", *names],
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "worker")},
        timeout=300,
    )
    return catalog
