"""How a job ends without a video. The engine raises these; the main loop turns them into `error` messages."""

from __future__ import annotations

MAX_MESSAGE_CHARS = 2000
OOM_MESSAGE = "out of memory: lower the resolution (image_size) or num_frames"


class JobError(Exception):
    """A job that cannot finish, for a reason the user can be told."""


class BadInput(JobError):
    """The job's input cannot be used (image missing, wrong size, output directory, ...)."""


class Cancelled(JobError):
    """A cancelled job: `step` of `total` denoising steps were done. `phase` names the phase it was stopped in when
    that was not at a step boundary of the denoising (`encode_prompt`, `encode_image`, `decode`, `encode_video`)."""

    def __init__(self, step: int, total: int, phase: str | None = None) -> None:
        where = f" ({phase})" if phase else ""
        super().__init__(f"cancelled at step {step} of {total}{where}")
        self.step = step
        self.total = total
        self.phase = phase


class OutOfMemory(JobError):
    def __init__(self) -> None:
        super().__init__(OOM_MESSAGE)


def describe_failure(exc: BaseException) -> str:
    """The message of an internal error: its type and text, capped."""
    return f"{type(exc).__name__}: {exc}"[:MAX_MESSAGE_CHARS]
