"""The benchmarks' HTTP client: keep-alive JSON requests to one server on 127.0.0.1, and its API calls."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from harness.core import HOST, KEY, BenchError
from harness.metrics import Metrics

PROMPT = "a cat dancing in the style of a painting"
FINAL = ("Succeed", "Failed", "Cancelled")


class Client:
    """Keep-alive HTTP/1.1 client for 127.0.0.1:port."""

    def __init__(self, port: int, timeout_s: float = 120.0) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self.conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                return response.status, response.read()
            except (
                http.client.RemoteDisconnected,
                ConnectionResetError,
                BrokenPipeError,
                http.client.CannotSendRequest,
            ):
                self.conn.close()
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout_s)
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def post_json(self, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, data = self.request(
            "POST", path, json.dumps(payload).encode(),
            {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )  # fmt: skip
        return status, parse_json(data)

    def get_json(self, path: str) -> tuple[int, dict[str, Any]]:
        status, data = self.request("GET", path)
        return status, parse_json(data)

    def metrics(self) -> Metrics:
        status, data = self.request("GET", "/metrics")
        if status != 200:
            raise BenchError(f"/metrics answered {status}")
        return Metrics.parse(data.decode("utf-8", "replace"))

    def submit(self, body: dict[str, Any]) -> str:
        status, answer = self.post_json("/video/submit", body)
        if status != 202:
            raise BenchError(f"submit answered {status}: {answer}")
        return str(answer["requestId"])

    def status(self, request_id: str) -> dict[str, Any]:
        status, answer = self.post_json("/video/status", {"requestId": request_id})
        if status != 200:
            raise BenchError(f"status answered {status}: {answer}")
        return answer

    def wait_final(self, request_id: str, timeout_s: float, poll_s: float = 0.1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.status(request_id)
            if state.get("status") in FINAL:
                return state
            if time.monotonic() > deadline:
                raise BenchError(f"task {request_id} not finished within {timeout_s:.0f} s: {state.get('status')}")
            time.sleep(poll_s)


def parse_json(data: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(data) if data else {}
    except ValueError:
        parsed = {"raw": data[:300].decode("utf-8", "replace")}
    return parsed if isinstance(parsed, dict) else {"raw": parsed}


def small_job(image_url: str, **overrides: Any) -> dict[str, Any]:
    """A submit body for stub-worker benches: the smallest job the API accepts (24 frames, 20 steps)."""
    return {"image_url": image_url, "prompt": PROMPT, "image_size": "auto", "num_frames": 24, "infer_steps": 20,
            "seed": 42, **overrides}  # fmt: skip
