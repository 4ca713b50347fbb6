"""A job's phases, and cancels honoured inside each of them, not only between denoising steps.

A job runs on one thread, through these phases: `encode_prompt` (the text encoder), `encode_image` (the image
encoder and the VAE encode of the first frame), `denoise` (the transformer, step by step), `decode` (the VAE decode
of the latents) and `encode_video` (ffmpeg). Only `denoise` has a natural place to stop (the step callback); the
others are single library calls that can take minutes at large sizes on the CPU.

So forward pre-hooks are put, once, on the models every job shares (`install_hooks`): on each model's root module
and on every module held in one of its `ModuleList`s (the encoder/decoder blocks, the text and image encoder
layers; the VAE calls its encoder once per temporal chunk and its decoder once per latent frame, each call going
through many such blocks). A hook looks up the calling thread's `JobContext` (set by the job thread for the length
of its job, `JobContext.active`): with none (a thread outside a job) it does nothing; otherwise it notes the phase
its model belongs to, reporting a change, and raises `Cancelled` if that job's cancel event is set. Jobs that run
at the same time on the same modules on other threads see only their own context, so a cancel stops only its job.
A hook is a thread-local read and an `Event.is_set()`: nothing next to the work of a block.

With two experts (Wan2.2 A14B) the hooks on `transformer` and `transformer_2` also note which of them the step
runs on, so the switch is reported as it happens rather than worked out again from the scheduler's timesteps.

The transformer gets no cancel check: there a cancel is taken at the step boundary, by the step callback (the step
cache keeps per-step state on the shared blocks, which a stop between a step's two guidance passes would leave half
done, and compiled blocks are best left as the warm-up compiled them). Its root gets the phase hook only.

Imports torch only in `install_hooks`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .errors import Cancelled
from .jobs import ExpertCallback, PhaseCallback
from .messages import Expert, JobPhase

HOOKED = "_i2v_cancel_hooks"  # set on a module once its hooks are in place, so they are never put twice

# The pipeline's models, the phase each belongs to, whether it checks for a cancel (at its root and in its blocks),
# and the expert it is where a model has two.
MODELS: tuple[tuple[str, JobPhase, bool, Expert | None], ...] = (
    ("text_encoder", "encode_prompt", True, None),
    ("image_encoder", "encode_image", True, None),
    ("vae.encoder", "encode_image", True, None),
    ("vae.quant_conv", "encode_image", True, None),
    ("transformer", "denoise", False, "high_noise"),
    ("transformer_2", "denoise", False, "low_noise"),
    ("vae.post_quant_conv", "decode", True, None),
    ("vae.decoder", "decode", True, None),
)


class JobContext:
    """One job's cancel event, its step count, its phase and its expert; `on_phase` hears every change of phase,
    `on_expert` every change of expert (given only where the model has two)."""

    def __init__(
        self,
        cancelled: threading.Event,
        total_steps: int,
        on_phase: PhaseCallback | None = None,
        on_expert: ExpertCallback | None = None,
    ) -> None:
        self.cancelled = cancelled
        self.total_steps = total_steps
        self.step = 0  # denoising steps done
        self.phase: JobPhase | None = None
        self.expert: Expert | None = None
        self._on_phase = on_phase
        self._on_expert = on_expert

    def enter(self, phase: JobPhase) -> None:
        """Notes that the job is in `phase`; reports it if that is a change."""
        if phase == self.phase:
            return
        self.phase = phase
        if self._on_phase is not None:
            self._on_phase(phase)

    def use_expert(self, expert: Expert) -> None:
        """Notes that the job's steps now run on `expert`; reports it if that is a change (and there are two)."""
        if expert == self.expert:
            return
        self.expert = expert
        if self._on_expert is not None:
            self._on_expert(expert)

    def check(self) -> None:
        """Raises `Cancelled` if the job's cancel event is set."""
        if self.cancelled.is_set():
            raise self.cancel_error()

    def cancel_error(self) -> Cancelled:
        return Cancelled(self.step, self.total_steps, None if self.phase == "denoise" else self.phase)

    @contextmanager
    def active(self) -> Iterator[JobContext]:
        """This context is the calling thread's for the length of the block (the hooks of this thread see it)."""
        previous = _local.context
        _local.context = self
        try:
            yield self
        finally:
            _local.context = previous


class _Local(threading.local):
    context: JobContext | None = None


_local = _Local()


def current() -> JobContext | None:
    """The calling thread's job, if it is running one."""
    return _local.context


def _check_hook(module: Any, args: Any) -> None:
    context = _local.context
    if context is not None and context.cancelled.is_set():
        raise context.cancel_error()


def _phase_hook(phase: JobPhase, check: bool, expert: Expert | None) -> Callable[[Any, Any], None]:
    def hook(module: Any, args: Any) -> None:
        context = _local.context
        if context is not None:
            context.enter(phase)
            if expert is not None:
                context.use_expert(expert)
            if check:
                context.check()

    return hook


def _find(pipe: Any, dotted: str) -> Any:
    target = pipe
    for part in dotted.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    return target


def install_hooks(pipe: Any) -> int:
    """Puts the phase and cancel hooks on `pipe`'s models (once: a second call adds none). Views made from the
    pipeline share these modules (the VAE copies share its encoder and decoder), so they share the hooks.
    Returns how many hooks were added."""
    import torch

    added = 0
    for name, phase, check, expert in MODELS:
        root = _find(pipe, name)
        if not isinstance(root, torch.nn.Module) or getattr(root, HOOKED, False):
            continue
        root.register_forward_pre_hook(_phase_hook(phase, check, expert))
        added += 1
        if check:
            for module in root.modules():
                if isinstance(module, torch.nn.ModuleList):
                    for block in module:
                        block.register_forward_pre_hook(_check_hook)
                        added += 1
        setattr(root, HOOKED, True)
    return added
