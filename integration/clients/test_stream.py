"""The live status stream read with a real SSE client (`httpx-sse`), and idempotent submits from concurrent clients.

Jobs are the smallest the service accepts (the demo model, 25 frames, 20 steps).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import httpx_sse
import pytest
from conftest import Service

PROMPT = "A dancing cat in the style of Van Gogh"
TERMINAL = {"Succeed", "Failed", "Cancelled"}


def submit_body(image_url: str, **extra: object) -> dict[str, object]:
    return {"image_url": image_url, "prompt": PROMPT, "num_frames": 24, "infer_steps": 20, **extra}


@pytest.fixture()
def http(service: Service) -> httpx.Client:
    with httpx.Client(
        base_url=service.base_url, headers={"Authorization": f"Bearer {service.api_key}"}, timeout=60
    ) as client:
        yield client


def submit(http: httpx.Client, image_url: str, **extra: object) -> str:
    response = http.post("/video/submit", json=submit_body(image_url, **extra))
    assert response.status_code == 202, response.text
    request_id: str = response.json()["requestId"]
    return request_id


def read_stream(
    http: httpx.Client, request_id: str, last_event_id: str | None = None
) -> list[httpx_sse.ServerSentEvent]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    # No read timeout: a queued job may wait; the stream ends by itself after the terminal event.
    with httpx_sse.connect_sse(
        http, "GET", f"/video/stream/{request_id}", headers=headers, timeout=httpx.Timeout(60, read=300)
    ) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return list(source.iter_sse())


def step_of(event: httpx_sse.ServerSentEvent) -> int | None:
    body: dict[str, Any] = event.json()
    progress = body.get("progress")
    return int(progress["step"]) if body["status"] == "InProgress" and progress else None


def test_a_stream_carries_a_whole_job_in_order_and_resumes_without_loss(http: httpx.Client, image_server: str) -> None:
    request_id = submit(http, image_server)
    events = read_stream(http, request_id)

    ids = [int(event.id) for event in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), f"event ids must rise: {ids}"
    bodies = [event.json() for event in events]
    assert all(body["requestId"] == request_id for body in bodies)
    statuses = [body["status"] for body in bodies]
    assert statuses[-1] == "Succeed", statuses
    assert not TERMINAL & set(statuses[:-1]), statuses
    assert bodies[-1]["results"]["videos"][0]["url"].endswith(".mp4")
    steps = [step for step in map(step_of, events) if step is not None]
    total = bodies[-1]["results"]["infer_steps"]
    assert steps == list(range(total + 1)), f"one event per step, none missed: {steps}"
    # The waiting and running events carry an ETA once a job of this size has finished (the first job of the
    # session may have none); a terminal one never does.
    assert "eta_seconds" not in bodies[-1]

    # A client that saw up to step 5 reconnects: it gets every later event, with the same ids and bodies.
    cut = next(index for index, event in enumerate(events) if step_of(event) == 5)
    resumed = read_stream(http, request_id, last_event_id=events[cut].id)
    assert [event.id for event in resumed] == [event.id for event in events[cut + 1 :]]
    assert [event.json()["status"] for event in resumed] == statuses[cut + 1 :]
    # After the terminal event there is nothing more: the stream ends at once.
    assert read_stream(http, request_id, last_event_id=events[-1].id) == []

    # The second job of this size has measurements to go by: while it waits or runs, its events carry an ETA.
    second = read_stream(http, submit(http, image_server))
    assert any(isinstance(event.json().get("eta_seconds"), int) for event in second[:-1]), [e.json() for e in second]


def test_another_keys_task_and_an_unknown_one_are_404(service: Service, http: httpx.Client, image_server: str) -> None:
    request_id = submit(http, image_server)
    with httpx.Client(base_url=service.base_url, headers={"Authorization": "Bearer wrong-key"}) as stranger:
        assert stranger.get(f"/video/stream/{request_id}").status_code == 401
    assert http.get("/video/stream/" + "0" * 32).status_code == 404
    http.post("/video/cancel", json={"requestId": request_id})


def streams_open(service: Service) -> float:
    for line in service.metrics().splitlines():
        if line.startswith("i2v_streams_open"):
            return float(line.split()[-1])
    raise AssertionError("i2v_streams_open is not in /metrics")


def test_a_client_that_leaves_costs_nothing_after_it_goes(
    service: Service, http: httpx.Client, image_server: str
) -> None:
    # A long job keeps the stream open (and the second one waiting) until the client goes.
    long = submit(http, image_server, num_frames=120, infer_steps=100)
    with httpx_sse.connect_sse(http, "GET", f"/video/stream/{long}") as source:
        first = next(source.iter_sse())
        assert first.json()["status"] in {"InQueue", "InProgress"}
        assert streams_open(service) >= 1
    # The next write (a keep-alive at the latest, every 2 s here) finds the client gone and ends the stream.
    deadline = time.monotonic() + 60
    while (count := streams_open(service)) > 0:
        assert time.monotonic() < deadline, f"{count} stream(s) still open 60 s after the client left"
        time.sleep(0.5)
    assert http.post("/video/cancel", json={"requestId": long}).status_code == 200


def test_ten_concurrent_submits_with_one_idempotency_key_make_one_task(service: Service, image_server: str) -> None:
    body = submit_body(image_server, seed=7)
    headers = {"Authorization": f"Bearer {service.api_key}", "Idempotency-Key": f"clients-{time.time_ns()}"}

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=service.base_url, headers=headers, timeout=60) as client:
            return client.post("/video/submit", json=body)

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(post, range(10)))
    assert [answer.status_code for answer in answers] == [202] * 10, [answer.text for answer in answers]
    ids = {answer.json()["requestId"] for answer in answers}
    assert len(ids) == 1, ids
    assert sum(answer.headers.get("idempotent-replayed") == "true" for answer in answers) == 9

    # The same key through OpenAI's API with another request is refused in OpenAI's shape.
    refused = httpx.post(
        service.base_url + "/v1/videos",
        headers=headers,
        json={"prompt": "A sleeping cat in the style of Monet", "input_reference": {"image_url": image_server}},
        timeout=60,
    )
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "idempotency_key_reused", refused.text
    with httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {service.api_key}"}) as client:
        client.post("/video/cancel", json={"requestId": ids.pop()})
