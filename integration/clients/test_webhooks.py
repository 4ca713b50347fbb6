"""Webhooks as a receiver sees them: every delivery is checked with the `standardwebhooks` package (the Standard
Webhooks reference verifier), against the secret the session's server signs with.

The session server allows private hosts, so the receivers here listen on loopback. A failed attempt is retried after
5 s, then 10 s (the default schedule), so the retry test waits about 15 s.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from conftest import Service, loopback_server, png_bytes
from openai import OpenAI
from standardwebhooks import Webhook

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROMPT = "A dancing cat in the style of Van Gogh"
SMALL = {"num_frames": 24, "infer_steps": 20}


@dataclass
class Delivery:
    path: str
    webhook_id: str
    event: dict[str, Any] | None
    error: str | None
    answered: int


@dataclass
class Receiver:
    """Records every POST; `/flaky/…` answers 500 to the first two attempts of each webhook-id, the rest 200."""

    url: str
    secret: str
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def wait_for(self, what: str, condition: Any, timeout: float = 120) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            seen = self.received()
            if condition(seen):
                return seen
            assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s; deliveries: {seen}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def receiver(service: Service) -> Iterator[Receiver]:
    verifier = Webhook(service.webhook_secret)
    state = Receiver(url="", secret=service.webhook_secret)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the standard library's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            event: dict[str, Any] | None = None
            error: str | None = None
            try:
                event = verifier.verify(body, headers)
            except Exception as failure:  # noqa: BLE001 - any failure to verify is what the test reports
                error = f"{type(failure).__name__}: {failure}"
            webhook_id = headers.get("webhook-id", "")
            with state.lock:
                earlier = sum(1 for delivery in state.deliveries if delivery.webhook_id == webhook_id)
                status = 500 if self.path.startswith("/flaky/") and earlier < 2 else 200
                state.deliveries.append(Delivery(self.path, webhook_id, event, error, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the standard library's name
            pass

    with loopback_server(Handler) as base:
        state.url = base
        yield state


@pytest.fixture(scope="module")
def client(service: Service) -> OpenAI:
    return OpenAI(base_url=service.base_url + "/v1", api_key=service.api_key, max_retries=0)


def wait_for_end(service: Service, request_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = service.native("/video/status", {"requestId": request_id})
        assert status == 200, body
        if body["status"] in ("Succeed", "Failed", "Cancelled"):
            return body
        assert time.monotonic() < deadline, f"{request_id} still {body['status']} after {timeout} s"
        time.sleep(0.1)


def of_path(deliveries: list[Delivery], path: str) -> list[Delivery]:
    return [delivery for delivery in deliveries if delivery.path == path]


def test_every_subscribed_event_arrives_once_verified_through_both_apis(
    service: Service, client: OpenAI, receiver: Receiver, image_server: str
) -> None:
    # Native JSON, default events.
    status, native = service.native(
        "/video/submit",
        {"image_url": image_server, "prompt": PROMPT, **SMALL, "webhook_url": receiver.url + "/ok/native"},
    )
    assert status == 202, native
    # OpenAI multipart (an uploaded file), the events as one comma-separated field.
    video = client.videos.create(
        prompt=PROMPT,
        input_reference=("cat.png", png_bytes(), "image/png"),
        extra_body={
            "num_frames": 24,
            "num_inference_steps": 20,
            "webhook_url": receiver.url + "/ok/openai",
            "webhook_events": "started,completed",
        },
    )
    # OpenAI JSON, cancelled through the native API while it waits or runs.
    cancelled = client.post(
        "/videos",
        cast_to=openai.types.Video,
        body={
            "prompt": PROMPT,
            "input_reference": {"image_url": image_server},
            "num_frames": 120,
            "num_inference_steps": 100,
            "webhook_url": receiver.url + "/ok/cancelled",
            "webhook_events": ["completed", "failed", "cancelled"],
        },
    )
    cancelled_id = cancelled.id.removeprefix("video_")
    status, answer = service.native("/video/cancel", {"requestId": cancelled_id})
    assert status == 200, answer

    expected = {
        "/ok/native": (native["requestId"], ["video.completed"]),
        "/ok/openai": (video.id.removeprefix("video_"), ["video.started", "video.completed"]),
        "/ok/cancelled": (cancelled_id, ["video.cancelled"]),
    }
    ends = {path: wait_for_end(service, request_id)["status"] for path, (request_id, _) in expected.items()}
    assert ends == {"/ok/native": "Succeed", "/ok/openai": "Succeed", "/ok/cancelled": "Cancelled"}

    deliveries = receiver.wait_for(
        "every subscribed event",
        lambda seen: all(len(of_path(seen, path)) >= len(types) for path, (_, types) in expected.items()),
    )
    # A little longer: a duplicate, were there one, would come now.
    time.sleep(2)
    deliveries = receiver.received()
    for path, (request_id, types) in expected.items():
        received = of_path(deliveries, path)
        assert [delivery.error for delivery in received] == [None] * len(received), received
        assert sorted(delivery.event["type"] for delivery in received if delivery.event) == sorted(types), received
        assert len({delivery.webhook_id for delivery in received}) == len(types), received
        for delivery in received:
            assert delivery.event is not None and delivery.event["data"]["requestId"] == request_id, delivery
    completed = next(d for d in of_path(deliveries, "/ok/native") if d.event and d.event["type"] == "video.completed")
    assert completed.event is not None
    assert completed.event["data"]["status"] == "Succeed" and completed.event["data"]["results"]["videos"], completed
    cancel = of_path(deliveries, "/ok/cancelled")[0]
    assert cancel.event is not None and cancel.event["data"]["status"] == "Cancelled", cancel


def test_a_receiver_failing_twice_gets_the_event_on_the_third_attempt(
    service: Service, receiver: Receiver, image_server: str
) -> None:
    status, submitted = service.native(
        "/video/submit",
        {"image_url": image_server, "prompt": PROMPT, **SMALL, "webhook_url": receiver.url + "/flaky/one"},
    )
    assert status == 202, submitted
    assert wait_for_end(service, submitted["requestId"])["status"] == "Succeed"
    deliveries = receiver.wait_for(
        "a delivery answered 200", lambda seen: any(d.answered == 200 for d in of_path(seen, "/flaky/one")), timeout=180
    )
    attempts = of_path(deliveries, "/flaky/one")
    assert [delivery.answered for delivery in attempts] == [500, 500, 200], attempts
    assert len({delivery.webhook_id for delivery in attempts}) == 1, attempts
    assert all(delivery.error is None for delivery in attempts), attempts
    assert all(delivery.event and delivery.event["type"] == "video.completed" for delivery in attempts), attempts
    metrics = service.metrics()
    assert 'i2v_webhook_deliveries_total{outcome="retry"}' in metrics and "i2v_webhook_pending" in metrics


def test_a_link_local_webhook_url_is_refused_at_submit_on_both_apis(
    service: Service, client: OpenAI, image_server: str
) -> None:
    # The server allows private hosts (for these loopback receivers); link-local (cloud metadata) stays blocked.
    status, body = service.native(
        "/video/submit",
        {
            "image_url": image_server,
            "prompt": PROMPT,
            **SMALL,
            "webhook_url": "http://169.254.169.254/latest/meta-data",
        },
    )
    assert status == 400, body
    assert body["detail"]["reason"].startswith("webhook_url"), body
    with pytest.raises(openai.BadRequestError) as refused:
        client.videos.create(
            prompt=PROMPT,
            input_reference=("cat.png", png_bytes(), "image/png"),
            extra_body={"webhook_url": "http://169.254.169.254/"},
        )
    error = refused.value.body
    assert isinstance(error, dict) and error.get("param") == "webhook_url", error
    with pytest.raises(openai.BadRequestError) as unknown:
        client.post(
            "/videos",
            cast_to=openai.types.Video,
            body={
                "prompt": PROMPT,
                "input_reference": {"image_url": image_server},
                "webhook_url": "http://127.0.0.1:9/",
                "webhook_events": ["finished"],
            },
        )
    error = unknown.value.body
    assert isinstance(error, dict) and error.get("param") == "webhook_events", error
    assert json.dumps(error).find("finished") >= 0, error
