import I2VCore
import I2VGPUNode

extension PlaygroundPage {
    /// The page's behaviour, plain JavaScript with no dependencies. A raw string, so JavaScript's
    /// backslashes stay as written; the page's Content-Security-Policy allows exactly this text (by hash).
    package static let script = #"""
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("create-form");
  const keyInput = $("api-key");
  const remember = $("remember-key");
  const fileInput = $("image-file");
  const modelSelect = $("model");
  const sizeSelect = $("size");
  const framesInput = $("num-frames");
  const lastInput = $("last-image-file");
  const urlInput = $("image-url");
  const preview = $("image-preview");
  const submitButton = $("submit");
  const formError = $("form-error");
  const announcer = $("announcer");
  const jobList = $("jobs");
  const noJobs = $("no-jobs");
  const KEY_NAME = "i2v-api-key";
  const TERMINAL = new Set(["Succeed", "Failed", "Cancelled"]);
  const STATUS_TEXT = {
    InQueue: "In queue", InProgress: "Generating", Succeed: "Finished", Failed: "Failed", Cancelled: "Cancelled",
  };
  let jobCount = 0;
  let submitting = false;

  // The key stays in this tab (sessionStorage) unless the user asks to remember it (localStorage).
  const remembered = localStorage.getItem(KEY_NAME);
  keyInput.value = remembered || sessionStorage.getItem(KEY_NAME) || "";
  remember.checked = remembered !== null;
  function saveKey() {
    const key = keyInput.value.trim();
    sessionStorage.setItem(KEY_NAME, key);
    if (remember.checked) localStorage.setItem(KEY_NAME, key);
    else localStorage.removeItem(KEY_NAME);
  }
  keyInput.addEventListener("change", saveKey);
  remember.addEventListener("change", saveKey);

  function announce(text) {
    announcer.textContent = text;
  }

  // Only the chosen image source is enabled, so the browser validates just that one.
  function showImageSource() {
    const useFile = $("source-file").checked;
    $("file-field").hidden = !useFile;
    $("url-field").hidden = useFile;
    fileInput.disabled = !useFile;
    urlInput.disabled = useFile;
  }
  for (const radio of form.elements["image-source"]) radio.addEventListener("change", showImageSource);
  showImageSource();

  fileInput.addEventListener("change", () => {
    if (preview.src) URL.revokeObjectURL(preview.src);
    const file = fileInput.files[0];
    preview.hidden = !file;
    if (file) preview.src = URL.createObjectURL(file);
    else preview.removeAttribute("src");
  });

  // What each model takes, from GET /models: the picker, and the sizes, frames and last frame that follow it.
  let models = [];
  async function loadModels() {
    try {
      const response = await fetch("/models", { cache: "no-store" });
      models = response.ok ? (await readJSON(response))?.models || [] : [];
    } catch {
      models = [];
    }
    modelSelect.replaceChildren(...models.map((model) => {
      const option = document.createElement("option");
      option.value = model.id;
      option.textContent = model.default ? `${model.id} (default)` : model.id;
      option.selected = Boolean(model.default);
      return option;
    }));
    // None listed (no worker ready yet): the server's default model, whatever it is.
    modelSelect.disabled = models.length === 0;
    if (models.length === 0) $("model-hint").textContent = "No worker is ready yet; the server's default model is used.";
    showModel();
  }

  function sizeLabel(size) {
    const [width, height] = size.split("x").map(Number);
    const shape = width > height ? "landscape" : width < height ? "portrait" : "square";
    return `${width}×${height} (${shape})`;
  }

  function showModel() {
    const model = models.find((candidate) => candidate.id === modelSelect.value);
    const chosen = sizeSelect.value;
    const sizes = [...new Set(["832x480", "480x832", ...(model?.sizes || [])])];
    sizeSelect.replaceChildren(new Option("Auto", "auto"), ...sizes.map((size) => new Option(sizeLabel(size), size)));
    sizeSelect.value = sizes.includes(chosen) ? chosen : "auto";
    // The largest num_frames whose 4k+1 frames the model makes, within what the API takes.
    const most = model?.max_frames ? Math.min(120, Math.floor((model.max_frames - 1) / 4) * 4 + 3) : 120;
    const fps = model?.fps || 16;
    framesInput.max = String(most);
    $("num-frames-hint").textContent = `24 to ${most} at ${fps} per second (81 ≈ ${(81 / fps).toFixed(1)} s).`;
    const last = model?.last_image || "none";
    $("last-field").hidden = last === "none";
    lastInput.disabled = last === "none";
    lastInput.required = last === "required";
    $("last-image-hint").textContent = last === "required"
      ? "Required by this model: the picture the video ends on, cropped to the first image's size."
      : "Optional: the picture the video ends on, cropped to the first image's size.";
  }
  modelSelect.addEventListener("change", showModel);
  loadModels();

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function errorMessage(body, response) {
    return body?.error?.message || body?.detail?.reason || `${response.status} ${response.statusText || "error"}`;
  }

  async function readJSON(response) {
    try { return await response.json(); } catch { return null; }
  }

  function formatSeconds(total) {
    if (total < 60) return `${total} s`;
    return `${Math.floor(total / 60)} min ${String(total % 60).padStart(2, "0")} s`;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (submitting) return;
    formError.textContent = "";
    saveKey();
    const key = keyInput.value.trim();
    const prompt = $("prompt").value;
    const data = new FormData();
    data.append("prompt", prompt);
    if ($("source-file").checked) data.append("input_reference", fileInput.files[0]);
    else data.append("input_reference[image_url]", urlInput.value.trim());
    if (!modelSelect.disabled && modelSelect.value) data.append("model", modelSelect.value);
    if (sizeSelect.value !== "auto") data.append("size", sizeSelect.value);
    if (!lastInput.disabled && lastInput.files[0]) data.append("last_image", lastInput.files[0]);
    const optional = {
      num_frames: "num-frames", negative_prompt: "negative-prompt", seed: "seed",
      num_inference_steps: "steps", guidance_scale: "guidance",
    };
    for (const [field, id] of Object.entries(optional)) {
      const value = $(id).value.trim();
      if (value !== "") data.append(field, value);
    }
    // aria-disabled rather than disabled: a disabled button drops keyboard focus.
    submitting = true;
    submitButton.setAttribute("aria-disabled", "true");
    announce("Submitting…");
    try {
      const response = await fetch("/v1/videos", { method: "POST", headers: { Authorization: `Bearer ${key}` }, body: data });
      const body = await readJSON(response);
      if (!response.ok) throw new Error(errorMessage(body, response));
      const job = addJob(body.id, key, prompt);
      announce(`${job.name} submitted: in queue.`);
      follow(job);
    } catch (error) {
      formError.textContent = `Could not submit: ${error.message}`;
      announce(formError.textContent);
    } finally {
      submitting = false;
      submitButton.removeAttribute("aria-disabled");
    }
  });

  function addJob(videoId, key, prompt) {
    jobCount += 1;
    const item = $("job-template").content.firstElementChild.cloneNode(true);
    const job = {
      name: `Job ${jobCount}`,
      requestId: videoId.replace(/^video_/, ""),
      key,
      status: null,
      done: false,
      item,
      part: (name) => item.querySelector(`.job-${name}`),
    };
    const titleId = `job-${jobCount}-title`;
    item.querySelector("article").setAttribute("aria-labelledby", titleId);
    job.part("title").id = titleId;
    job.part("title").textContent = job.name;
    job.part("id").textContent = videoId;
    job.part("prompt").textContent = prompt;
    job.part("progress").setAttribute("aria-label", `${job.name} progress`);
    job.part("video").setAttribute("aria-label", `${job.name} video`);
    const cancelButton = job.part("cancel");
    cancelButton.setAttribute("aria-label", `Cancel ${job.name.toLowerCase()}`);
    cancelButton.addEventListener("click", () => cancel(job));
    noJobs.hidden = true;
    jobList.prepend(item);
    update(job, { status: "InQueue" });
    return job;
  }

  function update(job, body) {
    if (job.done) return;
    const changed = body.status !== job.status;
    job.status = body.status;
    const state = job.part("state");
    const progress = job.part("progress");
    const detail = [];
    let line = STATUS_TEXT[body.status] || body.status;
    state.dataset.status = body.status;
    if (body.status === "InQueue" && body.queue_position != null) line += `, position ${body.queue_position}`;
    if (body.progress) {
      progress.max = body.progress.total_steps;
      progress.value = body.progress.step;
      detail.push(`Step ${body.progress.step} of ${body.progress.total_steps}`);
    }
    if (body.eta_seconds != null && !TERMINAL.has(body.status)) detail.push(`about ${formatSeconds(body.eta_seconds)} left`);
    // A reason that only repeats the status ("cancelled") says nothing more.
    const reason = body.reason && body.reason.toLowerCase() !== body.status.toLowerCase() ? body.reason : null;
    if (reason) detail.push(reason);
    state.textContent = line;
    job.part("detail").textContent = detail.join(" · ");
    if (body.status === "Succeed") {
      progress.value = progress.max;
      showVideo(job, body.results);
    }
    if (TERMINAL.has(body.status)) finish(job);
    if (changed) announce(`${job.name}: ${line}${reason ? ` (${reason})` : ""}.`);
  }

  function showVideo(job, results) {
    const url = results?.videos?.[0]?.url;
    if (!url) return;
    // The server that serves this page serves its videos too; a same-origin path keeps the page's strict
    // Content-Security-Policy (media from 'self' only) whatever public URL the server reports.
    const src = new URL(url, location.href).pathname;
    const video = job.part("video");
    video.src = src;
    const download = job.part("download");
    download.href = src;
    download.download = `${job.requestId}.mp4`;
    const facts = [`${results.width}×${results.height}`, `${results.num_frames} frames at ${results.fps} fps`, `seed ${results.seed}`];
    if (results.timings?.inference != null) facts.push(`made in ${results.timings.inference.toFixed(1)} s`);
    job.part("facts").textContent = facts.join(" · ");
    job.part("result").hidden = false;
  }

  function finish(job) {
    job.done = true;
    const cancelButton = job.part("cancel");
    const hadFocus = document.activeElement === cancelButton;
    cancelButton.hidden = true;
    // The control the user was on is gone; the job's heading is the nearest place to keep them.
    if (hadFocus) job.part("title").focus();
  }

  function fail(job, message) {
    job.part("error").textContent = message;
    announce(`${job.name}: ${message}`);
  }

  function authHeaders(job, extra = {}) {
    return { Authorization: `Bearer ${job.key}`, ...extra };
  }

  // Live status from the server-sent event stream. EventSource cannot send an Authorization header, so the
  // stream is read with fetch; a dropped connection resumes after the last event seen (Last-Event-ID).
  async function follow(job) {
    let lastEventId = null;
    let delay = 1000;
    while (!job.done) {
      const headers = authHeaders(job, { Accept: "text/event-stream" });
      if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
      try {
        const response = await fetch(`/video/stream/${job.requestId}`, { headers, cache: "no-store" });
        // A server without the stream route: fall back to asking for the status.
        if (response.status === 404) return poll(job);
        if (!response.ok) {
          const message = errorMessage(await readJSON(response), response);
          if (response.status < 500 && response.status !== 408 && response.status !== 429) return fail(job, message);
          throw new Error(message);
        }
        await readEvents(response.body, (event) => {
          lastEventId = event.id;
          delay = 1000;
          update(job, JSON.parse(event.data));
        });
      } catch (error) {
        // A dropped connection or a busy server: try again below.
      }
      if (!job.done) {
        await sleep(delay);
        delay = Math.min(delay * 2, 15000);
      }
    }
  }

  // A small parser for text/event-stream: "field: value" lines, a blank line ends an event, ":" starts a comment.
  async function readEvents(body, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let data = [];
    let id = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      // A CR at the very end may be the first half of a CRLF still on its way.
      const lines = buffer.split(/\r\n|\r(?!$)|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (data.length) onEvent({ id, data: data.join("\n") });
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "data") data.push(text);
        else if (field === "id" && !text.includes("\0")) id = text;
      }
    }
  }

  async function poll(job) {
    while (!job.done) {
      try {
        const response = await fetch("/video/status", {
          method: "POST",
          headers: authHeaders(job, { "Content-Type": "application/json" }),
          body: JSON.stringify({ requestId: job.requestId }),
        });
        const body = await readJSON(response);
        if (response.ok) update(job, body);
        else if (response.status < 500 && response.status !== 429) return fail(job, errorMessage(body, response));
      } catch (error) {
        // Not reachable just now: ask again below.
      }
      if (!job.done) await sleep(1000);
    }
  }

  async function cancel(job) {
    const button = job.part("cancel");
    if (job.done || button.getAttribute("aria-disabled") === "true") return;
    button.setAttribute("aria-disabled", "true");
    try {
      const response = await fetch("/video/cancel", {
        method: "POST",
        headers: authHeaders(job, { "Content-Type": "application/json" }),
        body: JSON.stringify({ requestId: job.requestId }),
      });
      if (!response.ok) throw new Error(errorMessage(await readJSON(response), response));
      // The stream reports Cancelled once the job has stopped (a running one stops at its next step),
      // which may already have happened.
      if (!job.done) {
        job.part("detail").textContent = "Cancelling…";
        announce(`${job.name}: cancelling.`);
      }
    } catch (error) {
      if (!job.done) button.removeAttribute("aria-disabled");
      fail(job, `Could not cancel: ${error.message}`);
    }
  }
})();
"""#
}
