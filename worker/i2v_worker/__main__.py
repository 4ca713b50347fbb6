"""`python -m i2v_worker`: the inference worker process (protocol on stdin/stdout, logs on stderr).

With `I2V_GROUP_RANK` set it is not a worker but one of the other ranks of a group, started by rank 0 (group.py).
"""

from __future__ import annotations

import logging
import os
import sys

from .group import RANK_ENV, Group
from .loop import LineWriter, Runner, serve


def main() -> None:
    # Keep the real stdout for the protocol; everything else that writes to stdout (stray prints from libraries,
    # at the Python or the C level) goes to stderr instead.
    protocol_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    rank = os.environ.get(RANK_ENV)
    logging.basicConfig(
        level=os.environ.get("I2V_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s" + (f" rank={rank}" if rank else "") + ": %(message)s",
    )
    logging.captureWarnings(True)
    # Importing diffusers imports torchao (for FP8), which warns on every start about optional kernels this worker
    # never uses (builds for other Pythons, Triton, CUTLASS); real errors still get through.
    for name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
        logging.getLogger(name).setLevel(logging.ERROR)

    if rank:
        from .group import follow

        protocol_out.close()  # another rank never speaks the protocol
        _exit(follow(dict(os.environ)))

    writer = LineWriter(protocol_out)
    groups: list[Group] = []

    def load() -> Runner:
        from . import group
        from .messages import Fatal
        from .pipeline import Engine
        from .settings import Settings

        settings = Settings.from_env(os.environ)
        devices = group.split_devices(settings.device)
        if not devices:
            return Engine.load(settings)
        engine, started = group.start(settings, devices, on_fatal=lambda reason: writer.send(Fatal(message=reason)))
        groups.append(started)
        return engine

    status = serve(load, sys.stdin.fileno(), writer)
    for started in groups:
        started.close()
    _exit(status)


def _exit(status: int) -> None:
    # Exit without the interpreter's teardown: a daemon thread still inside torch (the stdin reader, a job past its
    # shutdown grace period) must not be unwound from under C++ frames, which aborts the process.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
