import I2VCore
import I2VGPUNode

extension PlaygroundPage {
    /// The page's look: one column that fits a phone (about 375 px) and grows to a readable width,
    /// system colours in light and dark, a focus ring on everything reachable by keyboard.
    package static let style = #"""
        :root {
          color-scheme: light dark;
          --fg: #1b1b1f; --bg: #f6f6f8; --muted: #4f5158; --card: #ffffff; --border: #8d9099;
          --accent: #1a5fb4; --accent-fg: #ffffff; --error: #b3261e; --ok: #1e6b2e;
        }
        @media (prefers-color-scheme: dark) {
          :root {
            --fg: #e6e6ea; --bg: #121214; --muted: #b4b6bd; --card: #1d1d21; --border: #6b6e76;
            --accent: #8ab4f8; --accent-fg: #0b1a33; --error: #ffb4ab; --ok: #8fd694;
          }
        }
        * { box-sizing: border-box; }
        [hidden] { display: none !important; }
        body { margin: 0; font: 1rem/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
        header, main, footer { max-width: 46rem; margin: 0 auto; padding: 0 1rem; }
        h1 { font-size: 1.6rem; line-height: 1.2; margin: 1.25rem 0 .25rem; }
        h2 { font-size: 1.25rem; margin: 1.5rem 0 .75rem; }
        h3 { font-size: 1.05rem; margin: 0; }
        a { color: var(--accent); }
        .lead { margin: 0; color: var(--muted); }
        fieldset { border: 1px solid var(--border); border-radius: .5rem; margin: 0 0 1rem; padding: .5rem 1rem 1rem; min-width: 0; }
        legend { font-weight: 600; padding: 0 .25rem; }
        label { display: block; font-weight: 600; margin: .75rem 0 .25rem; }
        .choice { display: flex; flex-wrap: wrap; gap: .25rem 1.25rem; margin-top: .5rem; }
        .choice label, .check label { display: inline; font-weight: normal; margin: 0 0 0 .4rem; }
        .check { margin-top: .75rem; }
        input[type="radio"], input[type="checkbox"] { width: 1.15rem; height: 1.15rem; vertical-align: -.15rem; margin: 0; accent-color: var(--accent); }
        input[type="password"], input[type="url"], input[type="number"], select, textarea {
          width: 100%; font: inherit; padding: .5rem .6rem; min-height: 2.75rem;
          color: var(--fg); background: var(--card); border: 1px solid var(--border); border-radius: .375rem;
        }
        input[type="file"] { display: block; width: 100%; font: inherit; padding: .4rem 0; }
        textarea { resize: vertical; }
        .hint { color: var(--muted); font-size: .875rem; margin: .25rem 0 0; }
        .grid { display: grid; gap: 0 1rem; grid-template-columns: repeat(auto-fit, minmax(10rem, 1fr)); }
        .loras { list-style: none; margin: .5rem 0 0; padding: 0; display: grid; gap: .75rem; }
        .lora { display: grid; grid-template-columns: minmax(0, 1fr) 6.5rem; gap: 0 .75rem; align-items: center; }
        .lora .check { margin: 0; }
        .lora .check label { overflow-wrap: anywhere; }
        .lora-scale label { font-weight: normal; margin: 0 0 .25rem; }
        .lora-scale select { margin-top: .25rem; width: 100%; }
        #lora-url-field { margin-top: .75rem; }
        input:disabled, input:disabled + label { opacity: .6; }
        details { border: 1px solid var(--border); border-radius: .5rem; margin: 1rem 0; padding: 0 1rem; }
        details[open] { padding-bottom: 1rem; }
        summary { cursor: pointer; font-weight: 600; padding: .6rem 0; }
        button, .button {
          display: inline-flex; align-items: center; justify-content: center; min-height: 2.75rem; padding: .5rem 1.1rem;
          font: inherit; font-weight: 600; text-decoration: none; cursor: pointer;
          color: var(--accent-fg); background: var(--accent); border: 2px solid var(--accent); border-radius: .375rem;
        }
        .secondary { color: var(--accent); background: transparent; }
        [aria-disabled="true"] { opacity: .65; cursor: progress; }
        :focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
        h3:focus { outline: none; }
        h3:focus-visible { outline: 3px solid var(--accent); }
        .error { color: var(--error); font-weight: 600; margin: .75rem 0 0; }
        .error:empty { display: none; }
        .actions { margin-top: 1rem; }
        .preview { display: block; max-width: 100%; max-height: 12rem; margin-top: .5rem; border-radius: .375rem; }
        #jobs { list-style: none; margin: 0; padding: 0; display: grid; gap: 1rem; }
        .job { background: var(--card); border: 1px solid var(--border); border-radius: .5rem; padding: 1rem; }
        .job-head { display: flex; flex-wrap: wrap; justify-content: space-between; align-items: baseline; gap: 0 .75rem; }
        .job-id { font: .8rem ui-monospace, monospace; color: var(--muted); overflow-wrap: anywhere; }
        .job-prompt { margin: .25rem 0 .5rem; overflow-wrap: anywhere; }
        .job-state { font-weight: 600; margin: 0; }
        .job-state[data-status="Succeed"] { color: var(--ok); }
        .job-state[data-status="Failed"], .job-state[data-status="Cancelled"] { color: var(--error); }
        .job-detail { color: var(--muted); margin: .25rem 0 0; min-height: 1.5em; }
        progress { display: block; width: 100%; height: 1rem; margin-top: .25rem; accent-color: var(--accent); }
        video { display: block; width: 100%; max-height: 70vh; margin: .75rem 0 .5rem; background: #000; border-radius: .375rem; }
        .job-facts { color: var(--muted); font-size: .875rem; margin: 0 0 .5rem; }
        .job-cancel { margin-top: .75rem; }
        .visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); white-space: nowrap; }
        footer { color: var(--muted); font-size: .875rem; padding-block: 2rem; }
        """#
}
