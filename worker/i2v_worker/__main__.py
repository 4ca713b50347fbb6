"""`python -m i2v_worker`: the inference worker process (protocol on stdin/stdout, logs on stderr)."""

from __future__ import annotations

import logging
import os
import sys

from .protocol import Runner, serve


def main() -> None:
    # Keep the real stdout for the protocol; everything else that writes to stdout (stray prints from libraries,
    # at the Python or the C level) goes to stderr instead.
    protocol_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(
        level=os.environ.get("I2V_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)

    def load() -> Runner:
        from .pipeline import Engine, Settings

        return Engine.load(Settings.from_env(os.environ))

    status = serve(load, sys.stdin.fileno(), protocol_out)
    # Exit without the interpreter's teardown: a daemon thread still inside torch (the stdin reader, a job past its
    # shutdown grace period) must not be unwound from under C++ frames, which aborts the process.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
