"""How a job ends without a video. The engine raises these; the main loop turns them into `error` messages."""

from __future__ import annotations

MAX_MESSAGE_CHARS = 2000
OOM_MESSAGE = "out of memory: lower the resolution (image_size) or num_frames"


class JobError(Exception):
    """A job that cannot finish, for a reason the user can be told."""


class BadInput(JobError):
    """The job's input cannot be used (image missing, wrong size, output directory, ...)."""


class Cancelled(JobError):
    def __init__(self, step: int, total: int) -> None:
        super().__init__(f"cancelled at step {step} of {total}")
        self.step = step
        self.total = total


class OutOfMemory(JobError):
    def __init__(self) -> None:
        super().__init__(OOM_MESSAGE)


def describe_failure(exc: BaseException) -> str:
    """The message of an internal error: its type and text, capped."""
    return f"{type(exc).__name__}: {exc}"[:MAX_MESSAGE_CHARS]
