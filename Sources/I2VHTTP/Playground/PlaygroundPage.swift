import Crypto
import Foundation
import HTTPTypes
import I2VCore
import I2VGPUNode

/// The playground at `GET /`: one self-contained page (HTML, CSS and JavaScript, nothing fetched from
/// elsewhere) from which a person tries the service with their key: upload an image or give its URL, follow
/// the job live, watch and download the video, cancel. The model picker and what depends on it (sizes, the
/// longest clip, a last frame) come from `GET /models`; the LoRAs that fit the chosen model from `GET /loras`.
package enum PlaygroundPage {
    package static let html = """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>i2v-server playground</title>
        <link rel="icon" href="data:,">
        <style>\(style)</style>
        </head>
        <body>
        <header>
          <h1>Image-to-video playground</h1>
          <p class="lead">Turn a picture and a prompt into a short video on this server. The API behind it is described in the <a href="/docs">API docs</a>.</p>
        </header>
        <main>
          <section aria-labelledby="create-title">
            <h2 id="create-title">New video</h2>
            <form id="create-form">
              <fieldset>
                <legend>Authentication</legend>
                <label for="api-key">API key</label>
                <input id="api-key" name="api-key" type="password" required autocomplete="off" spellcheck="false" aria-describedby="api-key-hint">
                <p id="api-key-hint" class="hint">The key the server printed on its first start. It is sent only to this server.</p>
                <div class="check">
                  <input id="remember-key" type="checkbox"><label for="remember-key">Remember the key on this device (otherwise it is forgotten when the tab closes)</label>
                </div>
              </fieldset>

              <fieldset>
                <legend>Image</legend>
                <div class="choice">
                  <span><input id="source-file" name="image-source" type="radio" value="file" checked><label for="source-file">Upload a file</label></span>
                  <span><input id="source-url" name="image-source" type="radio" value="url"><label for="source-url">From a URL</label></span>
                </div>
                <div id="file-field">
                  <label for="image-file">Image file</label>
                  <input id="image-file" type="file" accept="image/png,image/jpeg,image/webp" required aria-describedby="image-file-hint">
                  <p id="image-file-hint" class="hint">PNG, JPEG or WebP. The video keeps its shape unless you pick a size below.</p>
                  <img id="image-preview" class="preview" alt="The selected image" hidden>
                </div>
                <div id="url-field" hidden>
                  <label for="image-url">Image URL</label>
                  <input id="image-url" type="url" required placeholder="https://example.com/picture.jpg" aria-describedby="image-url-hint">
                  <p id="image-url-hint" class="hint">An http or https address the server can download (or a data: URL).</p>
                </div>
              </fieldset>

              <label for="prompt">Prompt</label>
              <textarea id="prompt" rows="3" required minlength="10" maxlength="500" aria-describedby="prompt-hint"></textarea>
              <p id="prompt-hint" class="hint">What should happen in the video, 10 to 500 characters.</p>

              <div class="grid">
                <div>
                  <label for="model">Model</label>
                  <select id="model" aria-describedby="model-hint"></select>
                  <p id="model-hint" class="hint">What this server's workers serve.</p>
                </div>
                <div>
                  <label for="size">Size</label>
                  <select id="size" aria-describedby="size-hint">
                    <option value="auto" selected>Auto</option>
                    <option value="832x480">832×480 (landscape)</option>
                    <option value="480x832">480×832 (portrait)</option>
                  </select>
                  <p id="size-hint" class="hint">Auto keeps the image's shape.</p>
                </div>
                <div>
                  <label for="num-frames">Frames</label>
                  <input id="num-frames" type="number" inputmode="numeric" min="24" max="120" step="1" placeholder="81" aria-describedby="num-frames-hint">
                  <p id="num-frames-hint" class="hint">24 to 120 at 16 per second (81 ≈ 5 s).</p>
                </div>
              </div>

              <div id="last-field" hidden>
                <label for="last-image-file">Last frame</label>
                <input id="last-image-file" type="file" accept="image/png,image/jpeg,image/webp" disabled aria-describedby="last-image-hint">
                <p id="last-image-hint" class="hint">The picture the video ends on. It is cropped to the first image's size.</p>
              </div>

              <fieldset id="lora-field" aria-describedby="lora-hint">
                <legend>LoRAs</legend>
                <p id="lora-hint" class="hint">Enter the API key to see the LoRAs for this model.</p>
                <ul id="lora-list" class="loras" hidden></ul>
                <div id="lora-url-field" class="lora" hidden>
                  <div>
                    <label for="lora-url">LoRA URL</label>
                    <input id="lora-url" type="url" inputmode="url" placeholder="https://…/style.safetensors" disabled aria-describedby="lora-url-hint lora-count">
                    <p id="lora-url-hint" class="hint">A .safetensors LoRA the server downloads and keeps in its catalog.</p>
                  </div>
                  <div class="lora-scale">
                    <label for="lora-url-scale">Scale<span class="visually-hidden"> of the LoRA URL</span></label>
                    <input id="lora-url-scale" type="number" inputmode="decimal" min="0" max="2" step="0.05" value="1" disabled>
                    <div id="lora-url-expert-field" hidden>
                      <label for="lora-url-expert">Expert<span class="visually-hidden"> of the LoRA URL</span></label>
                      <select id="lora-url-expert" disabled>
                        <option value="both">both</option>
                        <option value="high_noise">high-noise</option>
                        <option value="low_noise">low-noise</option>
                      </select>
                    </div>
                  </div>
                </div>
                <p id="lora-count" class="hint" hidden></p>
              </fieldset>

              <details>
                <summary>More options</summary>
                <label for="negative-prompt">Negative prompt</label>
                <textarea id="negative-prompt" rows="2" maxlength="500" aria-describedby="negative-prompt-hint"></textarea>
                <p id="negative-prompt-hint" class="hint">What to avoid; empty uses the model's recommended one.</p>
                <div class="grid">
                  <div>
                    <label for="seed">Seed</label>
                    <input id="seed" type="number" inputmode="numeric" min="0" max="2147483647" step="1" placeholder="random">
                  </div>
                  <div>
                    <label for="steps">Steps</label>
                    <input id="steps" type="number" inputmode="numeric" min="20" max="100" step="1" placeholder="30">
                  </div>
                  <div>
                    <label for="guidance">Guidance</label>
                    <input id="guidance" type="number" inputmode="decimal" min="1" max="20" step="0.1" placeholder="3">
                  </div>
                </div>
              </details>

              <p id="form-error" class="error" role="alert"></p>
              <div class="actions">
                <button id="submit" type="submit">Generate video</button>
              </div>
            </form>
          </section>

          <section aria-labelledby="jobs-title">
            <h2 id="jobs-title">Jobs</h2>
            <p id="no-jobs">No jobs yet. Submitted jobs appear here, newest first.</p>
            <ol id="jobs"></ol>
          </section>
          <div id="announcer" class="visually-hidden" role="status" aria-live="polite" aria-atomic="true"></div>
        </main>
        <footer>
          <p>Videos are kept for a limited time; download the ones you want to keep.</p>
        </footer>

        <template id="job-template">
          <li>
            <article class="job">
              <div class="job-head">
                <h3 class="job-title" tabindex="-1"></h3>
                <span class="job-id"></span>
              </div>
              <p class="job-prompt"></p>
              <p class="job-state"></p>
              <progress class="job-progress" max="100" value="0"></progress>
              <p class="job-detail"></p>
              <p class="job-error error"></p>
              <div class="job-result" hidden>
                <video class="job-video" controls playsinline preload="auto"></video>
                <p class="job-facts"></p>
                <a class="job-download button secondary" download>Download MP4</a>
              </div>
              <button class="job-cancel secondary" type="button">Cancel</button>
            </article>
          </li>
        </template>
        <script>\(script)</script>
        </body>
        </html>
        """

    /// Inline script and style are allowed by their hashes, so nothing else (injected markup, other origins)
    /// can run or style the page; images and media come from this server or from the browser itself (the
    /// preview of a chosen file is a blob: URL).
    package static let contentSecurityPolicy = [
        "default-src 'none'",
        "script-src \(hashSource(script))",
        "style-src \(hashSource(style))",
        "img-src 'self' blob: data:",
        "media-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ].joined(separator: "; ")

    package static let headers: HTTPFields = [
        .contentType: "text/html; charset=utf-8",
        .cacheControl: "no-cache",
        HTTPField.Name("Content-Security-Policy")!: contentSecurityPolicy,
        HTTPField.Name("X-Content-Type-Options")!: "nosniff",
        HTTPField.Name("Referrer-Policy")!: "no-referrer",
    ]

    package static func hashSource(_ text: String) -> String {
        "'sha256-\(Data(SHA256.hash(data: Data(text.utf8))).base64EncodedString())'"
    }
}
