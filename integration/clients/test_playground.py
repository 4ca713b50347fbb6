"""The playground page (`GET /`) in a real browser: Debian's Chromium driven by Playwright, at phone width,
against the session's real server (demo model on the CPU).

Everything is found the way a person using a screen reader would find it, by its label or role, so the test
also shows that the controls are labelled. Waits for jobs are generous (minutes): on a busy 2-core machine a
small demo job takes from seconds to about a minute.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO, QuietFiles, Service, loopback_server, png_bytes, write_demo_loras
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
PROMPT = "A dancing cat in the style of Van Gogh"
# A job ends within this on the busy CPU machine; it bounds a hang, not the speed.
JOB_TIMEOUT_MS = 240_000
PHONE = {"width": 390, "height": 844}
# Demo LoRAs, one more than a job takes, and one whose width fits no model.
LORAS = [f"style-{index}" for index in range(1, 6)]
MISFIT = "too-wide"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium is not installed (scripts/install-system-deps.sh test installs it)")
    # Playwright's own browser download is not used: the system Chromium is the browser under test.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, service: Service) -> Iterator[Page]:
    with _open(browser, service) as page:
        yield page


@contextmanager
def _open(browser: Browser, service: Service) -> Iterator[Page]:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    context.set_default_timeout(60_000)
    page = context.new_page()
    problems: list[str] = []
    # A script or style the page's Content-Security-Policy blocks is reported on the console. (Failed
    # requests are reported there too; those the tests provoke are checked where they happen.)
    page.on(
        "console", lambda message: problems.append(message.text) if "Content Security Policy" in message.text else None
    )
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(service.base_url + "/")
    yield page
    context.close()
    assert not problems, f"the page reported errors: {problems}"


def record_sent_forms(page: Page) -> None:
    """Keeps what the page puts in each form it sends in `window.sent`, as `[name, value or file name]` pairs
    (Playwright does not expose a multipart body's files)."""
    page.evaluate(
        """() => {
            const send = window.fetch;
            window.sent = [];
            window.fetch = (url, init) => {
                if (init?.body instanceof FormData) {
                    window.sent.push([...init.body.entries()].map(([k, v]) => [k, typeof v === "string" ? v : v.name]));
                }
                return send(url, init);
            };
        }"""
    )


def generate_smallest_job(page: Page, image_name: str = "picture.png") -> Locator:
    """Fills the image and prompt and the smallest job the service takes (24 frames, 20 steps), generates it and
    waits for it to finish; the job's article."""
    page.get_by_label("Image file").set_input_files(
        {"name": image_name, "mimeType": "image/png", "buffer": png_bytes()}
    )
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_label("Frames").fill("24")
    page.get_by_text("More options").click()
    page.get_by_label("Steps").fill("20")
    page.get_by_role("button", name="Generate video").click()
    job = page.get_by_role("article", name="Job 1", exact=True)
    expect(job.get_by_text("Finished", exact=True)).to_be_visible(timeout=JOB_TIMEOUT_MS)
    return job


def keep_screenshot(page: Page, tmp_path: Path) -> Path:
    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    kept = REPO / ".build/test-artifacts/playground.png"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, kept)
    print(f"playground screenshot: {shot} (kept as {kept})")
    return kept


def test_a_job_made_from_an_uploaded_file_plays_and_a_second_is_cancelled(
    page: Page, service: Service, image_server: str, tmp_path: Path
) -> None:
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    expect(page.get_by_role("heading", level=1)).to_have_text("Image-to-video playground")
    # The page fits the phone: nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    page.get_by_label("API key", exact=True).fill(service.api_key)
    page.get_by_label("Image file").set_input_files(
        {"name": "picture.png", "mimeType": "image/png", "buffer": png_bytes()}
    )
    expect(page.get_by_role("img", name="The selected image")).to_be_visible()
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    # The smallest job the service takes: 24 frames (25 made), 20 steps.
    page.get_by_label("Frames").fill("24")
    page.get_by_text("More options").click()
    page.get_by_label("Steps").fill("20")

    # Every state the job list goes through is recorded as it happens, so even a fast job cannot slip
    # between two looks.
    page.evaluate(
        """() => {
            window.seen = [];
            const jobs = document.getElementById("jobs");
            new MutationObserver(() => {
                const article = jobs.querySelector("article");
                if (!article) return;
                const step = /Step ([0-9]+) of ([0-9]+)/.exec(article.querySelector(".job-detail").textContent);
                window.seen.push({ step: step && Number(step[1]), total: step && Number(step[2]),
                                   value: article.querySelector("progress").value });
            }).observe(jobs, { subtree: true, childList: true, characterData: true, attributes: true });
        }"""
    )

    # By keyboard alone: Tab from the last option reaches the submit button, Enter submits.
    page.get_by_label("Guidance").focus()
    for _ in range(5):
        if page.evaluate("document.activeElement.id") == "submit":
            break
        page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Generate video")).to_be_focused()
    page.keyboard.press("Enter")

    job = page.get_by_role("article", name="Job 1", exact=True)
    expect(job).to_be_visible()
    expect(job.get_by_text("Finished", exact=True)).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(job.get_by_role("progressbar", name="Job 1 progress")).to_have_attribute("value", "20")
    expect(page.get_by_role("status")).to_have_text("Job 1: Finished.")
    expect(job.get_by_role("button", name="Cancel job 1")).to_be_hidden()
    # Progress moved: "Step k of 20" (k ≥ 1) was shown on the way, with the bar at k, never going back.
    seen = page.evaluate("window.seen")
    steps = [state["step"] for state in seen if state["step"] is not None]
    print(f"steps shown: {sorted(set(steps))}")
    assert steps and max(steps) >= 1, seen
    assert all(
        state["total"] == 20 and state["value"] == state["step"] for state in seen if state["step"] is not None
    ), seen
    values = [state["value"] for state in seen]
    assert values == sorted(values), values

    # The video loads and plays in the page.
    video = job.get_by_label("Job 1 video")
    source = video.get_attribute("src")
    assert source and re.fullmatch(r"/videos/[0-9a-f]{32}\.mp4", source), source
    video.evaluate(
        """(v) => v.readyState >= 2 || new Promise((resolve, reject) => {
            v.addEventListener("loadeddata", resolve, { once: true });
            v.addEventListener("error", () => reject(new Error(`video error ${v.error?.code}`)), { once: true });
        })"""
    )
    assert video.evaluate("(v) => v.readyState >= 2 && v.duration > 0 && v.videoWidth > 0")
    video.evaluate("(v) => { v.muted = true; return v.play(); }")
    page.wait_for_function("(v) => v.currentTime > 0", arg=video.element_handle())
    download = job.get_by_role("link", name="Download MP4")
    assert download.get_attribute("href") == source
    assert download.get_attribute("download")
    with urllib.request.urlopen(service.base_url + source, timeout=30) as response:
        assert response.headers["Content-Type"] == "video/mp4"
        assert response.read(12)[4:8] == b"ftyp"

    # A second job, from an image URL this time, big enough that it cannot end before it is cancelled.
    page.get_by_label("From a URL").check()
    page.get_by_label("Image URL").fill(image_server)
    page.get_by_label("Frames").fill("120")
    page.get_by_label("Steps").fill("100")
    page.get_by_role("button", name="Generate video").click()
    expect(page.get_by_role("article", name="Job 2", exact=True)).to_be_visible()

    # A reload brings both back: the finished job with its video, the running one followed again (and
    # cancelled from the reloaded page).
    page.reload()
    expect(page.get_by_role("article")).to_have_count(2)
    first = page.get_by_role("article", name="Job 1", exact=True)
    expect(first.get_by_text("Finished", exact=True)).to_be_visible()
    expect(first.get_by_label("Job 1 video")).to_have_attribute("src", source)
    expect(first.get_by_role("button", name="Cancel job 1")).to_be_hidden()
    second = page.get_by_role("article", name="Job 2", exact=True)
    expect(second.locator(".job-state")).to_have_text(re.compile(r"^(In queue|Generating)"))
    cancel = second.get_by_role("button", name="Cancel job 2")
    cancel.click()
    expect(second.get_by_text("Cancelled", exact=True)).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(cancel).to_be_hidden()
    expect(page.get_by_role("status")).to_contain_text("Job 2: Cancelled")
    # Newest first, and the finished job keeps its video.
    expect(page.get_by_role("article")).to_have_count(2)
    expect(page.get_by_role("article").first).to_have_accessible_name("Job 2")
    request_id = second.locator(".job-id").inner_text().removeprefix("video_")
    status, body = service.native("/video/status", {"requestId": request_id})
    assert (status, body["status"]) == (200, "Cancelled"), body

    keep_screenshot(page, tmp_path)
    streamed = [url for url in requests if "/video/stream/" in url]
    polls = [url for url in requests if url.endswith("/video/status")]
    print(f"stream requests: {len(streamed)}, status polls: {len(polls)}")
    # Live status comes from the event stream; the page polls only a server that has no stream route.
    assert streamed and not polls, (streamed, polls)


def test_a_saved_job_the_server_no_longer_has_is_shown_once_then_dropped(page: Page, service: Service) -> None:
    gone = "0" * 32
    page.evaluate(
        """([key, id]) => sessionStorage.setItem(
            "i2v-playground-jobs", JSON.stringify([{ id: `video_${id}`, key, prompt: "gone", number: 3 }]))""",
        [service.api_key, gone],
    )
    page.reload()
    job = page.get_by_role("article", name="Job 3", exact=True)
    expect(job.locator(".job-error")).to_have_text(f"task {gone} not found")
    assert page.evaluate("""() => sessionStorage.getItem("i2v-playground-jobs")""") == "[]"
    page.reload()
    expect(page.get_by_role("article")).to_have_count(0)
    expect(page.get_by_text("No jobs yet.")).to_be_visible()


def test_every_control_is_reached_by_tab_in_order(page: Page) -> None:
    expected = ["api-key", "remember-key", "source-file", "image-file", "prompt", "model", "size", "num-frames", "summary",
                "negative-prompt", "seed", "steps", "guidance", "submit"]  # fmt: skip
    reached: list[str] = []
    for _ in range(30):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.tagName.toLowerCase()"))
        if reached[-1] == "summary":
            # The optional fields open from the keyboard too.
            page.keyboard.press("Enter")
        if reached[-1] == "submit":
            break
    assert [name for name in reached if name in expected] == expected, reached
    # The control reached by keyboard is visibly marked.
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"


def test_a_refused_submit_shows_the_servers_message_and_the_key_is_kept(page: Page, service: Service) -> None:
    page.get_by_label("API key", exact=True).fill("not-the-key")
    page.get_by_label("Image file").set_input_files(
        {"name": "picture.png", "mimeType": "image/png", "buffer": png_bytes()}
    )
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_role("button", name="Generate video").click()
    alert = page.get_by_role("alert").filter(has_text="Could not submit")
    expect(alert).to_contain_text("invalid API key")
    expect(page.get_by_role("article")).to_have_count(0)

    # The key survives a reload of the tab (sessionStorage), and is remembered beyond it only when asked.
    page.reload()
    expect(page.get_by_label("API key", exact=True)).to_have_value("not-the-key")
    expect(page.get_by_label("Remember the key on this device")).not_to_be_checked()
    assert page.evaluate("localStorage.length") == 0
    page.get_by_label("Remember the key on this device").check()
    assert page.evaluate("localStorage.getItem('i2v-api-key')") == "not-the-key"


def test_the_model_picker_follows_the_served_model_and_hides_the_last_frame_it_cannot_use(
    page: Page, service: Service
) -> None:
    with urllib.request.urlopen(service.base_url + "/models", timeout=30) as response:
        served = json.load(response)["models"]
    model = page.get_by_label("Model", exact=True)
    expect(model).to_have_value(served[0]["id"])
    expect(model.locator("option")).to_have_count(len(served))
    # The demo 480P model ends on no given frame: the last-frame input is neither shown nor reachable.
    expect(page.get_by_label("Last frame")).to_be_hidden()
    sizes = page.get_by_label("Size").locator("option")
    expect(sizes.first).to_have_text("Auto")
    assert set(sizes.evaluate_all("(options) => options.map((o) => o.value)")) >= {"auto", *served[0]["sizes"]}


def test_a_last_frame_is_sent_for_a_model_that_takes_one(browser: Browser, a14b_service: Service) -> None:
    with _open(browser, a14b_service) as page:
        record_sent_forms(page)
        page.get_by_label("API key", exact=True).fill(a14b_service.api_key)
        expect(page.get_by_label("Model", exact=True)).to_have_value("wan2.2-i2v-a14b-demo")
        last = page.get_by_label("Last frame")
        expect(last).to_be_visible()
        expect(page.locator("#last-image-hint")).to_contain_text("Optional")
        last.set_input_files({"name": "last.png", "mimeType": "image/png", "buffer": png_bytes(200, 120)})
        generate_smallest_job(page, "first.png")
        # The form carried the model and the last frame as its own file part.
        sent = page.evaluate("window.sent")
        assert len(sent) == 1, sent
        assert ["model", "wan2.2-i2v-a14b-demo"] in sent[0] and ["last_image", "last.png"] in sent[0], sent


@pytest.fixture(scope="module")
def lora_catalog(service: Service) -> Path:
    return write_demo_loras(service, LORAS, misfit=MISFIT)


def test_loras_that_fit_the_model_are_listed_and_a_fifth_cannot_be_chosen(
    page: Page, service: Service, lora_catalog: Path
) -> None:
    hint = page.locator("#lora-hint")
    expect(hint).to_contain_text("Enter the API key")
    page.get_by_label("API key", exact=True).fill(service.api_key)
    boxes = page.locator("#lora-list").get_by_role("checkbox")
    expect(boxes).to_have_count(len(LORAS))
    # The LoRA no demo model is as wide as is in the catalog, but not offered for the chosen model.
    with urllib.request.urlopen(
        urllib.request.Request(service.base_url + "/loras", headers={"Authorization": f"Bearer {service.api_key}"}),
        timeout=30,
    ) as response:
        assert MISFIT in [lora["name"] for lora in json.load(response)["loras"]]
    expect(page.get_by_label(MISFIT, exact=True)).to_have_count(0)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    # By keyboard: Space chooses a LoRA, and its scale (disabled until then) is the next stop.
    first = page.get_by_label(LORAS[0], exact=True)
    scale = page.get_by_label(f"Scale of {LORAS[0]}")
    expect(scale).to_be_disabled()
    first.focus()
    page.keyboard.press("Space")
    expect(first).to_be_checked()
    page.keyboard.press("Tab")
    expect(scale).to_be_focused()
    expect(scale).to_have_value("1")

    for name in LORAS[1:4]:
        page.get_by_label(name, exact=True).check()
    count = page.locator("#lora-count")
    expect(count).to_contain_text("4 of 4 chosen")
    fifth = page.get_by_label(LORAS[4], exact=True)
    expect(fifth).to_be_disabled()
    expect(page.get_by_role("status")).to_contain_text("clear one to choose another")
    page.get_by_label(LORAS[1], exact=True).uncheck()
    expect(fifth).to_be_enabled()
    expect(count).to_contain_text("3 of 4 chosen")

    # A key the server refuses: a hint instead of the list, and no choice is sent from it.
    page.get_by_label("API key", exact=True).fill("not-the-key")
    expect(hint).to_contain_text("Could not list the LoRAs: invalid API key")
    expect(boxes).to_have_count(0)


def test_a_job_made_with_a_lora_sends_it_and_reports_it(page: Page, service: Service, lora_catalog: Path) -> None:
    record_sent_forms(page)
    name = LORAS[0]
    page.get_by_label("API key", exact=True).fill(service.api_key)
    page.get_by_label(name, exact=True).check()
    page.get_by_label(f"Scale of {name}").fill("1.5")
    job = generate_smallest_job(page)
    expect(job.locator(".job-facts")).to_contain_text(f"LoRA {name} at 1.5")
    sent = page.evaluate("window.sent")
    assert len(sent) == 1, sent
    fields = dict(sent[0])
    assert json.loads(fields["loras"]) == [{"name": name, "scale": 1.5}], sent

    request_id = job.locator(".job-id").inner_text().removeprefix("video_")
    status, body = service.native("/video/status", {"requestId": request_id})
    assert (status, body["status"]) == (200, "Succeed"), body
    digest = hashlib.sha256((lora_catalog / f"{name}.safetensors").read_bytes()).hexdigest()
    results = body["results"]
    assert isinstance(results, dict) and results.get("loras") == [{"name": name, "scale": 1.5, "sha256": digest}], body


def test_a_lora_for_one_expert_of_a_two_expert_model(browser: Browser, a14b_service: Service) -> None:
    """The A14B's LoRAs come one file per expert: each row offers the expert, sent only when not both."""
    name = "pg-high-noise"
    write_demo_loras(a14b_service, [name])
    with _open(browser, a14b_service) as page:
        record_sent_forms(page)
        page.get_by_label("API key", exact=True).fill(a14b_service.api_key)
        expect(page.get_by_label("Model", exact=True)).to_have_value("wan2.2-i2v-a14b-demo")
        expert = page.get_by_label(f"Expert of {name}")
        expect(expert).to_be_disabled()
        # The URL field offers the expert too, usable once a URL is entered (none is here).
        expect(page.get_by_label("Expert of the LoRA URL")).to_be_visible()
        expect(page.get_by_label("Expert of the LoRA URL")).to_be_disabled()
        page.get_by_label(name, exact=True).check()
        expect(expert).to_have_value("both")
        expert.select_option("high_noise")
        job = generate_smallest_job(page, "first.png")
        expect(job.locator(".job-facts")).to_contain_text(f"LoRA {name} at 1 on the high-noise expert")
        sent = page.evaluate("window.sent")
        assert len(sent) == 1, sent
        assert json.loads(dict(sent[0])["loras"]) == [{"name": name, "scale": 1, "expert": "high_noise"}], sent


def test_a_model_with_one_transformer_offers_no_expert(page: Page, service: Service, lora_catalog: Path) -> None:
    page.get_by_label("API key", exact=True).fill(service.api_key)
    expect(page.locator("#lora-list").get_by_role("checkbox")).to_have_count(len(LORAS))
    expect(page.locator("#lora-list select")).to_have_count(0)


# Last in the file: the LoRA it downloads joins the session server's catalog, which the tests above count.
def test_a_lora_given_by_its_url_is_sent_downloaded_and_reported(page: Page, service: Service, tmp_path: Path) -> None:
    catalog = write_demo_loras(service, ["pg-by-url"])
    served = tmp_path / "by-url.safetensors"
    shutil.move(catalog / "pg-by-url.safetensors", served)
    stored = catalog / f"url-{hashlib.sha256(served.read_bytes()).hexdigest()[:16]}.safetensors"
    try:
        with loopback_server(functools.partial(QuietFiles, directory=str(tmp_path))) as base:
            url = f"{base}/by-url.safetensors"
            record_sent_forms(page)
            expect(page.get_by_label("LoRA URL", exact=True)).to_be_hidden()
            page.get_by_label("API key", exact=True).fill(service.api_key)
            field = page.get_by_label("LoRA URL", exact=True)
            expect(field).to_be_visible()
            scale = page.get_by_label("Scale of the LoRA URL")
            expect(scale).to_be_disabled()
            field.fill(url)
            expect(scale).to_be_enabled()
            scale.fill("0.8")
            expect(page.locator("#lora-count")).to_have_text("1 of 4 chosen.")
            # A one-transformer model: no expert to choose.
            expect(page.get_by_label("Expert of the LoRA URL")).to_be_hidden()
            job = generate_smallest_job(page)
            expect(job.locator(".job-facts")).to_contain_text(f"LoRA {stored.stem} at 0.8")
            sent = page.evaluate("window.sent")
            assert len(sent) == 1, sent
            assert json.loads(dict(sent[0])["loras"]) == [{"url": url, "scale": 0.8}], sent
            assert stored.read_bytes() == served.read_bytes()
    finally:
        stored.unlink(missing_ok=True)
