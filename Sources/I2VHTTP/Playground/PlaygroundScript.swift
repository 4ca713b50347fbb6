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
          const loraHint = $("lora-hint");
          const loraList = $("lora-list");
          const loraCount = $("lora-count");
          const loraUrlField = $("lora-url-field");
          const loraUrl = $("lora-url");
          const loraUrlScale = $("lora-url-scale");
          const loraUrlExpertField = $("lora-url-expert-field");
          const loraUrlExpert = $("lora-url-expert");
          const KEY_NAME = "i2v-api-key";
          // This tab's jobs, oldest first, so a reload shows them again and follows those still running. They sit
          // in sessionStorage beside the key (each with the key it was submitted with) and end with the tab.
          const JOBS_NAME = "i2v-playground-jobs";
          const MAX_SAVED_JOBS = 20;
          // What the API takes per job; a 5th choice would only be refused on submit.
          const MAX_LORAS = 4;
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

          // The catalog is behind the key, so it is listed once a key is there and again whenever the key or the
          // model changes. Choices are kept by name (name -> scale text) so that listing again (a new key, a file
          // added to the catalog) keeps what is still listed; a failed listing forgets nothing.
          const loraChoices = new Map();
          // On a model with two experts each LoRA may go to one of them (name -> "both", "high_noise", "low_noise").
          const loraExperts = new Map();
          let loraTicket = 0;
          let loraKeyTimer = null;
          let urlsAccepted = false;

          function showLoraHint(text) {
            loraHint.textContent = text;
            loraList.hidden = true;
            loraList.replaceChildren();
            showLoraCount(false);
          }

          // Offered only where the server takes LoRAs by URL (the listing's `urls`); hidden, it is disabled too, so
          // the browser's URL check never blocks a submit over a field the user cannot see.
          function showLoraUrl(accepted, twoExperts) {
            loraUrlField.hidden = !accepted;
            loraUrlExpertField.hidden = !twoExperts;
            showLoraCount(false);
          }

          function loraUrlChosen() {
            return !loraUrlField.hidden && loraUrl.value.trim() !== "";
          }

          async function loadLoras() {
            // Only the latest listing is shown: a slower answer for an older key or model must not replace it.
            const ticket = ++loraTicket;
            // Only groups of devices serve it, and they take no LoRAs: the server would refuse any.
            const served = models.find((candidate) => candidate.id === modelSelect.value);
            if (!modelSelect.disabled && served?.loras === false) {
              loraChoices.clear();
              showLoraUrl(false, false);
              return showLoraHint(`${served.id} is served by groups of devices, which take no LoRAs.`);
            }
            const key = keyInput.value.trim();
            if (!key) {
              showLoraUrl(false, false);
              return showLoraHint("Enter the API key to see the LoRAs for this model.");
            }
            let listed;
            try {
              const response = await fetch("/loras", { headers: { Authorization: `Bearer ${key}` }, cache: "no-store" });
              const body = await readJSON(response);
              if (!response.ok) throw new Error(errorMessage(body, response));
              listed = Array.isArray(body?.loras) ? body.loras : [];
              urlsAccepted = body?.urls === true;
            } catch (error) {
              if (ticket !== loraTicket) return;
              showLoraUrl(false, false);
              showLoraHint(`Could not list the LoRAs: ${error.message}`);
              return;
            }
            if (ticket !== loraTicket) return;
            showLoraUrl(urlsAccepted, served?.experts === 2);
            // No model listed (no worker ready): which one the server uses is not known here, so every LoRA is shown
            // and the server refuses one that does not fit.
            const model = modelSelect.disabled ? null : modelSelect.value;
            const fitting = model ? listed.filter((lora) => Array.isArray(lora.models) && lora.models.includes(model)) : listed;
            if (fitting.length === 0) {
              loraChoices.clear();
              const byUrl = urlsAccepted ? " A LoRA can be given by its URL below." : "";
              return showLoraHint(listed.length === 0
                ? `This server's LoRA catalog is empty.${byUrl}`
                : `None of this server's LoRAs fits ${model}.${byUrl}`);
            }
            const names = new Set(fitting.map((lora) => lora.name));
            for (const name of loraChoices.keys()) if (!names.has(name)) loraChoices.delete(name);
            loraHint.textContent = `Up to ${MAX_LORAS} per job, each at a scale from 0 to 2 (1 is as trained).`;
            const twoExperts = served?.experts === 2;
            loraList.replaceChildren(...fitting.map((lora, index) => loraItem(lora, index, twoExperts)));
            loraList.hidden = false;
            showLoraCount(false);
          }

          function formatBytes(bytes) {
            if (bytes < 1000) return `${bytes} B`;
            if (bytes < 1e6) return `${(bytes / 1e3).toFixed(1)} kB`;
            if (bytes < 1e9) return `${(bytes / 1e6).toFixed(1)} MB`;
            return `${(bytes / 1e9).toFixed(2)} GB`;
          }

          function loraItem(lora, index, twoExperts) {
            const id = `lora-${index}`;
            const item = document.createElement("li");
            item.className = "lora";
            const name = document.createElement("div");
            const check = document.createElement("div");
            check.className = "check";
            const box = document.createElement("input");
            box.type = "checkbox";
            box.id = id;
            box.value = lora.name;
            box.setAttribute("aria-describedby", `${id}-facts lora-count`);
            const label = document.createElement("label");
            label.htmlFor = id;
            label.textContent = lora.name;
            check.append(box, label);
            const facts = document.createElement("p");
            facts.className = "hint";
            facts.id = `${id}-facts`;
            facts.textContent = `rank ${lora.rank} · ${formatBytes(lora.size_bytes)}`;
            name.append(check, facts);

            const scaleField = document.createElement("div");
            scaleField.className = "lora-scale";
            const scaleLabel = document.createElement("label");
            scaleLabel.htmlFor = `${id}-scale`;
            // Every row has a "Scale": the hidden words tell a screen reader whose scale it is.
            const whose = document.createElement("span");
            whose.className = "visually-hidden";
            whose.textContent = ` of ${lora.name}`;
            scaleLabel.append("Scale", whose);
            const scale = document.createElement("input");
            scale.type = "number";
            scale.id = `${id}-scale`;
            scale.inputMode = "decimal";
            scale.min = "0";
            scale.max = "2";
            scale.step = "0.05";
            scale.value = loraChoices.get(lora.name) ?? "1";
            scaleField.append(scaleLabel, scale);

            // Two experts (the Wan2.2 A14B): its LoRAs are often published one file per expert.
            let expert = null;
            if (twoExperts) {
              const expertLabel = document.createElement("label");
              expertLabel.htmlFor = `${id}-expert`;
              const whoseExpert = document.createElement("span");
              whoseExpert.className = "visually-hidden";
              whoseExpert.textContent = ` of ${lora.name}`;
              expertLabel.append("Expert", whoseExpert);
              expert = document.createElement("select");
              expert.id = `${id}-expert`;
              for (const [value, text] of [["both", "both"], ["high_noise", "high-noise"], ["low_noise", "low-noise"]]) {
                expert.append(new Option(text, value));
              }
              expert.value = loraExperts.get(lora.name) ?? "both";
              expert.addEventListener("change", () => loraExperts.set(lora.name, expert.value));
              scaleField.append(expertLabel, expert);
            }

            // Unchosen, the scale is disabled, so the browser's checks (0 to 2, steps of 0.05) apply only to what is sent.
            box.checked = loraChoices.has(lora.name);
            scale.disabled = !box.checked;
            if (expert) expert.disabled = !box.checked;
            box.addEventListener("change", () => {
              scale.disabled = !box.checked;
              if (expert) expert.disabled = !box.checked;
              if (box.checked) loraChoices.set(lora.name, scale.value);
              else loraChoices.delete(lora.name);
              showLoraCount(true);
            });
            scale.addEventListener("input", () => {
              if (box.checked) loraChoices.set(lora.name, scale.value);
            });
            item.append(name, scaleField);
            return item;
          }

          function chosenLoraBoxes() {
            return [...loraList.querySelectorAll('input[type="checkbox"]')].filter((box) => box.checked);
          }

          // At the limit the other boxes are disabled rather than refused after the fact, and the count says why.
          function showLoraCount(byUser) {
            const count = chosenLoraBoxes().length + (loraUrlChosen() ? 1 : 0);
            const full = count >= MAX_LORAS;
            for (const box of loraList.querySelectorAll('input[type="checkbox"]')) box.disabled = full && !box.checked;
            loraUrl.disabled = loraUrlField.hidden || (full && !loraUrlChosen());
            loraUrlScale.disabled = !loraUrlChosen();
            loraUrlExpert.disabled = !loraUrlChosen();
            loraCount.hidden = count === 0;
            loraCount.textContent = full
              ? `${count} of ${MAX_LORAS} chosen, the most a job takes: clear one to choose another.`
              : `${count} of ${MAX_LORAS} chosen.`;
            if (byUser && full) announce(loraCount.textContent);
          }

          function loraChoice(source, scaleInput, expertSelect) {
            const scale = scaleInput.value.trim();
            const chosen = { ...source, scale: scale === "" ? 1 : Number(scale) };
            if (expertSelect && !expertSelect.closest("[hidden]") && expertSelect.value !== "both") chosen.expert = expertSelect.value;
            return chosen;
          }

          function chosenLoras() {
            const chosen = chosenLoraBoxes().map((box) => loraChoice({ name: box.value }, $(`${box.id}-scale`), $(`${box.id}-expert`)));
            if (loraUrlChosen()) chosen.push(loraChoice({ url: loraUrl.value.trim() }, loraUrlScale, loraUrlExpert));
            return chosen;
          }

          loraUrl.addEventListener("input", () => showLoraCount(true));

          keyInput.addEventListener("input", () => {
            clearTimeout(loraKeyTimer);
            loraKeyTimer = setTimeout(loadLoras, 400);
          });
          modelSelect.addEventListener("change", loadLoras);
          loadModels().then(loadLoras);

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
            const loras = chosenLoras();
            if (loras.length) data.append("loras", JSON.stringify(loras));
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
              saveJobs([...savedJobs(), { id: body.id, key, prompt, number: job.number }]);
              update(job, { status: "InQueue" });
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

          function savedJobs() {
            try {
              const list = JSON.parse(sessionStorage.getItem(JOBS_NAME) || "[]");
              return Array.isArray(list) ? list.filter((saved) => typeof saved?.id === "string") : [];
            } catch {
              return [];
            }
          }

          function saveJobs(list) {
            sessionStorage.setItem(JOBS_NAME, JSON.stringify(list.slice(-MAX_SAVED_JOBS)));
          }

          // A job the server no longer knows (deleted, or past its retention) is not shown again.
          function forget(job) {
            saveJobs(savedJobs().filter((saved) => saved.id !== job.videoId));
          }

          function addJob(videoId, key, prompt, number = jobCount + 1) {
            jobCount = Math.max(jobCount, number);
            const item = $("job-template").content.firstElementChild.cloneNode(true);
            const job = {
              number,
              name: `Job ${number}`,
              videoId,
              requestId: videoId.replace(/^video_/, ""),
              key,
              status: null,
              done: false,
              item,
              part: (name) => item.querySelector(`.job-${name}`),
            };
            const titleId = `job-${number}-title`;
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
            if (changed && !job.quiet) announce(`${job.name}: ${line}${reason ? ` (${reason})` : ""}.`);
            job.quiet = false;
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
            if (results.loras?.length) {
              const expertOf = (lora) => (lora.expert ? ` on the ${lora.expert.replace("_", "-")} expert` : "");
              const used = results.loras.map((lora) => `${lora.name} at ${lora.scale}${expertOf(lora)}`).join(", ");
              facts.push(`${results.loras.length === 1 ? "LoRA" : "LoRAs"} ${used}`);
            }
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
                else if (response.status < 500 && response.status !== 429) {
                  if (response.status === 404) forget(job);
                  return fail(job, errorMessage(body, response));
                }
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

          // Restored quietly: the user saw these jobs before the reload, so only what changes from now on is announced.
          for (const saved of savedJobs()) {
            const number = Number.isInteger(saved.number) && saved.number > 0 ? saved.number : jobCount + 1;
            const job = addJob(saved.id, String(saved.key ?? ""), String(saved.prompt ?? ""), number);
            job.quiet = true;
            job.part("state").textContent = "Checking…";
            follow(job);
          }
        })();
        """#
}
