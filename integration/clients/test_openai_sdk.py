"""The official `openai` Python SDK, unchanged, against the running service's `/v1/videos`.

Every job is small (the demo model, 25–33 frames, 20 steps) so the whole module runs in well under a minute of
model time on a CPU. The SDK marks its videos API deprecated (OpenAI's own service is retiring it); that warning
is about OpenAI's hosted API, not this one.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import Service, png_bytes, write_demo_loras
from openai import OpenAI
from openai.types import Video
from PIL import Image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROMPT = "A dancing cat in the style of Van Gogh"
# The smallest job the service accepts: 20 steps (its minimum).
FAST = {"num_inference_steps": 20}


@pytest.fixture(scope="session")
def client(service: Service) -> OpenAI:
    # No retries: every answer the tests see is the server's first.
    return OpenAI(base_url=service.base_url + "/v1", api_key=service.api_key, max_retries=0)


def wait_until(client: OpenAI, video_id: str, statuses: set[str], timeout: float = 180) -> Video:
    deadline = time.monotonic() + timeout
    while True:
        video = client.videos.retrieve(video_id)
        if video.status in statuses:
            return video
        assert time.monotonic() < deadline, f"{video_id} still {video.status} after {timeout} s"
        time.sleep(0.05)


def ffprobe(path: Path) -> dict[str, Any]:
    ffprobe = shutil.which("ffprobe")
    assert ffprobe, "ffprobe is not on PATH (scripts/install-system-deps.sh test installs it)"
    output = subprocess.run(
        [ffprobe, "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
         "stream=codec_name,width,height,nb_read_frames,r_frame_rate", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    stream: dict[str, Any] = json.loads(output)["streams"][0]
    return stream


def test_create_and_poll_with_an_uploaded_file_then_download_the_video_and_its_thumbnail(
    client: OpenAI, tmp_path: Path
) -> None:
    video = client.videos.create_and_poll(
        prompt=PROMPT,
        input_reference=("cat.png", png_bytes(), "image/png"),
        seconds="2",  # type: ignore[arg-type] # the SDK's literals are Sora's lengths; the API takes any
        extra_body=FAST,
        poll_interval_ms=100,
    )
    assert video.status == "completed", video
    assert video.progress == 100 and video.error is None
    assert video.id.startswith("video_") and video.object == "video"
    assert video.prompt == PROMPT
    # 2 s at 16 fps: 32 frames asked, 33 made (4k+1).
    assert video.seconds == "2.06"
    extra = video.to_dict()
    assert extra["num_frames"] == 33
    assert video.completed_at is not None and video.expires_at is not None and video.expires_at > video.completed_at
    width, height = (int(side) for side in video.size.split("x"))

    mp4 = tmp_path / "video.mp4"
    client.videos.download_content(video.id).write_to_file(mp4)
    probe = ffprobe(mp4)
    assert probe["codec_name"] == "h264"
    assert (probe["width"], probe["height"]) == (width, height)
    assert int(probe["nb_read_frames"]) == 33 and probe["r_frame_rate"] == "16/1"

    thumbnail = client.videos.download_content(video.id, variant="thumbnail")
    still = Image.open(io.BytesIO(thumbnail.content))
    assert still.format == "JPEG"
    assert still.size == (width, height)


def test_create_with_an_image_url_through_extra_body_and_both_apis_see_the_task(
    client: OpenAI, service: Service, image_server: str
) -> None:
    video = client.videos.create(
        prompt=PROMPT, extra_body={"input_reference": {"image_url": image_server}, "num_frames": 24, **FAST}
    )
    assert video.status in ("queued", "in_progress")
    assert client.videos.retrieve(video.id).id == video.id

    request_id = video.id.removeprefix("video_")
    status, body = service.native("/video/status", {"requestId": request_id})
    assert status == 200 and body["status"] in ("InQueue", "InProgress", "Succeed"), body

    done = client.videos.poll(video.id, poll_interval_ms=100)
    assert done.status == "completed", done
    status, body = service.native("/video/status", {"requestId": request_id})
    assert body["status"] == "Succeed" and body["results"]["num_frames"] == 25, body

    # And the other way: a task submitted through the seed's API is a video here.
    status, submitted = service.native(
        "/video/submit", {"image_url": image_server, "prompt": PROMPT, "num_frames": 24, "infer_steps": 20, "seed": 5}
    )
    assert status == 202, submitted
    seen = client.videos.retrieve(f"video_{submitted['requestId']}")
    assert seen.to_dict()["seed"] == 5 and seen.prompt == PROMPT


def test_a_json_create_through_the_sdks_raw_post(client: OpenAI) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(256, 144)).decode()
    video = client.post(
        "/videos",
        cast_to=Video,
        body={"prompt": PROMPT, "input_reference": {"image_url": data_url}, "seconds": 1.5, **FAST},
    )
    assert isinstance(video, Video)
    assert video.status in ("queued", "in_progress")
    # 1.5 s at 16 fps is 24 frames asked, 25 made.
    assert video.to_dict()["num_frames"] == 25 and video.seconds == "1.56"
    assert client.videos.poll(video.id, poll_interval_ms=100).status == "completed"


def test_list_pages_through_the_keys_videos(client: OpenAI, image_server: str) -> None:
    ids = [
        client.videos.create(
            prompt=PROMPT, extra_body={"input_reference": {"image_url": image_server}, "num_frames": 24, **FAST}
        ).id
        for _ in range(3)
    ]
    first = client.videos.list(limit=2)
    assert [video.id for video in first.data] == [ids[2], ids[1]]
    assert first.has_more is True and first.has_next_page()
    second = first.get_next_page()
    assert second.data[0].id == ids[0]

    # Auto-pagination, oldest first, walks every page and meets the three in order.
    every = [video.id for video in client.videos.list(limit=2, order="asc")]
    assert len(every) == len(set(every))
    assert [every.index(video_id) for video_id in ids] == sorted(every.index(video_id) for video_id in ids)
    for video_id in ids:
        client.videos.poll(video_id, poll_interval_ms=100)


def test_deleting_a_running_job_cancels_it_and_the_id_is_gone_on_both_apis(
    client: OpenAI, service: Service, image_server: str
) -> None:
    # The longest job there is (121 frames, 100 steps), so it is still running when the delete arrives.
    video = client.videos.create(
        prompt=PROMPT,
        extra_body={"input_reference": {"image_url": image_server}, "num_frames": 120, "num_inference_steps": 100},
    )
    running = wait_until(client, video.id, {"in_progress", "completed", "failed"})
    assert running.status == "in_progress", running

    deleted = client.videos.delete(video.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (video.id, "video.deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    status, _ = service.native("/video/status", {"requestId": video.id.removeprefix("video_")})
    assert status == 404
    assert video.id not in [listed.id for listed in client.videos.list(limit=100)]
    # The job itself ends cancelled (the only cancel of the session), not completed.
    deadline = time.monotonic() + 120
    while 'i2v_task_outcomes_total{status="Cancelled"} 1' not in service.metrics():
        assert time.monotonic() < deadline, "the deleted job was not cancelled within 120 s"
        time.sleep(0.05)


def test_errors_are_the_sdks_own_classes(client: OpenAI, service: Service) -> None:
    with pytest.raises(openai.BadRequestError) as bad_seconds:
        client.videos.create(prompt=PROMPT, input_reference=("cat.png", png_bytes(), "image/png"), seconds="12")
    assert bad_seconds.value.status_code == 400
    assert bad_seconds.value.param == "seconds" and bad_seconds.value.type == "invalid_request_error"

    stranger = OpenAI(base_url=service.base_url + "/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as wrong_key:
        stranger.videos.list()
    assert wrong_key.value.code == "invalid_api_key"

    unknown = "video_" + "0" * 32
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(unknown)
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content(unknown)
    with pytest.raises(openai.NotFoundError):
        client.videos.delete(unknown)


@pytest.fixture(scope="session")
def a14b_client(a14b_service: Service) -> OpenAI:
    return OpenAI(base_url=a14b_service.base_url + "/v1", api_key=a14b_service.api_key, max_retries=0)


def test_a_last_frame_through_extra_body_and_as_a_second_file(a14b_client: OpenAI, image_server: str) -> None:
    model = "wan2.2-i2v-a14b-demo"
    # JSON: the extension field rides in extra_body.
    video = a14b_client.videos.create(
        prompt=PROMPT,
        model=model,  # type: ignore[arg-type]  # the SDK lists OpenAI's own models
        extra_body={
            "input_reference": {"image_url": image_server},
            "last_image": {"image_url": image_server},
            "num_frames": 24,
            **FAST,
        },
    )
    assert wait_until(a14b_client, video.id, {"completed", "failed"}).status == "completed"
    # Multipart: the last frame as a second file part beside input_reference, through the SDK's own post.
    uploaded = a14b_client.post(
        "/videos",
        cast_to=Video,
        body={"prompt": PROMPT, "model": model, "num_frames": "24", "num_inference_steps": "20"},
        files=[
            ("input_reference", ("first.png", png_bytes(), "image/png")),
            ("last_image", ("last.png", png_bytes(256, 144), "image/png")),
        ],
        options={"headers": {"Content-Type": "multipart/form-data"}},
    )
    assert wait_until(a14b_client, uploaded.id, {"completed", "failed"}).status == "completed"


def test_a_last_frame_for_a_model_without_one_is_the_sdks_bad_request(client: OpenAI, image_server: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.videos.create(
            prompt=PROMPT,
            extra_body={
                "input_reference": {"image_url": image_server},
                "last_image": {"image_url": image_server},
                **FAST,
            },
        )
    assert refused.value.param == "last_image"
    assert "first frame only" in refused.value.message


def test_loras_through_extra_body_are_listed_applied_and_reported(
    a14b_client: OpenAI, a14b_service: Service, image_server: str
) -> None:
    write_demo_loras(a14b_service, ["sdk-ink", "sdk-glow"])
    # The catalog listing is an extension route; the SDK's own GET reads it.
    listed = a14b_client.get("/loras", cast_to=object)
    assert {"sdk-ink", "sdk-glow"} <= {entry["id"] for entry in listed["data"]}, listed

    common = {"input_reference": {"image_url": image_server}, "num_frames": 24, "seed": 3, **FAST}
    loras = [{"name": "sdk-ink", "scale": 1.0}, {"name": "sdk-glow", "scale": 0.5}]
    plain = a14b_client.videos.create(prompt=PROMPT, extra_body=common)
    styled = a14b_client.videos.create(prompt=PROMPT, extra_body={**common, "loras": loras})
    plain_done = a14b_client.videos.poll(plain.id, poll_interval_ms=100)
    styled_done = a14b_client.videos.poll(styled.id, poll_interval_ms=100)
    assert (plain_done.status, styled_done.status) == ("completed", "completed"), (plain_done, styled_done)
    reported = styled_done.to_dict()["loras"]
    assert [(entry["name"], entry["scale"]) for entry in reported] == [("sdk-ink", 1.0), ("sdk-glow", 0.5)], reported
    assert all(len(entry["sha256"]) == 64 for entry in reported), reported
    assert "loras" not in plain_done.to_dict()
    # The same job and seed with LoRAs makes another video.
    assert a14b_client.videos.download_content(plain.id).read() != a14b_client.videos.download_content(styled.id).read()

    # On the A14B a LoRA may be for one expert: the high-noise one only makes a video of its own.
    high = a14b_client.videos.create(
        prompt=PROMPT, extra_body={**common, "loras": [{"name": "sdk-ink", "expert": "high_noise"}]}
    )
    both = a14b_client.videos.create(prompt=PROMPT, extra_body={**common, "loras": [{"name": "sdk-ink"}]})
    high_done = a14b_client.videos.poll(high.id, poll_interval_ms=100)
    both_done = a14b_client.videos.poll(both.id, poll_interval_ms=100)
    assert (high_done.status, both_done.status) == ("completed", "completed"), (high_done, both_done)
    assert [entry.get("expert") for entry in high_done.to_dict()["loras"]] == ["high_noise"], high_done
    assert "expert" not in both_done.to_dict()["loras"][0], both_done
    videos = {a14b_client.videos.download_content(job.id).read() for job in (plain, high, both)}
    assert len(videos) == 3, "the high-noise LoRA alone made the plain or the both-experts video"

    # A name the catalog does not hold is the SDK's own BadRequestError, naming the field.
    with pytest.raises(openai.BadRequestError) as refused:
        a14b_client.videos.create(prompt=PROMPT, extra_body={**common, "loras": [{"name": "no-such-lora"}]})
    assert refused.value.param == "loras", refused.value
