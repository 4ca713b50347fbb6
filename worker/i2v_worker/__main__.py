"""`python -m i2v_worker`: the inference worker process (protocol on stdin/stdout, logs on stderr)."""

from __future__ import annotations

import logging
import os
import sys

from .loop import Runner, serve


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
    # Importing diffusers imports torchao (for FP8), which warns on every start about optional kernels this worker
    # never uses (builds for other Pythons, Triton, CUTLASS); real errors still get through.
    for name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
        logging.getLogger(name).setLevel(logging.ERROR)

    def load() -> Runner:
        from .pipeline import Engine
        from .settings import Settings

        return Engine.load(Settings.from_env(os.environ))

    status = serve(load, sys.stdin.fileno(), protocol_out)
    # Exit without the interpreter's teardown: a daemon thread still inside torch (the stdin reader, a job past its
    # shutdown grace period) must not be unwound from under C++ frames, which aborts the process.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
