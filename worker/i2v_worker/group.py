"""Groups: one video on several devices, the transformer's sequence split among them (context parallelism).

`I2V_DEVICE` with devices joined by "+" (`cpu+cpu`, `cuda:0+cuda:1`) makes the launched worker process rank 0 of a
group of that many ranks. Rank 0 starts the other ranks itself, as `python -m i2v_worker` child processes with
`I2V_GROUP_RANK` set: a fresh interpreter each (CUDA and torch.distributed must not be forked from a process that
has loaded them), the same entry point and environment as rank 0, and a pipe for stdin that carries the jobs.
Only rank 0 speaks the protocol; the others write only logs (their stdout goes to stderr).

Every rank loads the whole pipeline and runs every job's whole pipeline call on the same inputs: rank 0 sends each
job's decoded images, prompts, sizes, seed and resolved steps down the pipes, so all ranks make the same text and
image embeddings and the same initial noise. The transformers run under diffusers' context parallelism
(`ContextParallelConfig(ulysses_degree=N)`, `enable_parallelism`): each rank computes 1/N of the sequence and the
attention exchanges heads for sequence (all-to-all), so all ranks hold the same full output after every call.
Only rank 0 decodes the latents with the VAE and writes the MP4; the others stop at the latents.

The ranks stay in step through one agreement before every transformer call: an all-reduce of a status code (go,
cancelled, out of memory, failed). Rank 0 puts its job's cancel there, and a rank whose job failed before the
denoising (say, out of memory in the text encoder) puts its failure there, so every rank ends the job the same
way, at the same call, and the group serves the next one. A failure inside a transformer call (a rank died, hung,
or ran out of memory between two collectives) leaves the ranks at different collectives, which no rank can undo:
rank 0 then writes `fatal` and exits 1 so the server restarts the whole group, and a rank that sees it exits.
Rank 0 also watches its child processes, so a rank that dies while the group is idle takes it down at once; the
children die with rank 0 (`PR_SET_PDEATHSIG`, and the end of their job pipe).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from .errors import Cancelled, OutOfMemory, describe_failure
from .settings import ConfigurationError, Settings

logger = logging.getLogger("i2v_worker")

RANK_ENV = "I2V_GROUP_RANK"
PORT_ENV = "I2V_GROUP_PORT"
# Test-only: the rank named here sleeps for good after the first denoising step of every job (not of the warm-up),
# as a hung rank would.
STALL_ENV = "I2V_TEST_GROUP_STALL_RANK"
# Test-only: the rank named here runs out of memory in its text encoder in its first job, as a rank short of memory
# would before the denoising.
OOM_ENV = "I2V_TEST_GROUP_OOM_RANK"

GO, CANCEL, OOM, FAILED = 0, 1, 2, 3  # the agreement's codes: the highest any rank puts in wins
PR_SET_PDEATHSIG = 1
CLOSE_GRACE_SECONDS = 10.0
STARTUP_TIMEOUT_SECONDS = 3600.0  # how long ranks wait for each other to load a checkpoint
WATCH_INTERVAL_SECONDS = 0.2


class RankFailed(RuntimeError):
    """Another rank of the group failed this job (its log says how); the group goes on."""


def split_devices(value: str | None) -> tuple[str, ...]:
    """The devices of a group named by `I2V_DEVICE` (joined by "+"); () for one device."""
    if value is None or "+" not in value:
        return ()
    devices = tuple(part.strip() for part in value.split("+"))
    if all(device == "cpu" for device in devices):
        return devices
    if not all(device.startswith("cuda:") and device[5:].isdigit() for device in devices):
        raise ConfigurationError(
            f"I2V_DEVICE={value}: a group is cpu+cpu+… or cuda:N+cuda:M+… (each GPU by its index, no mixing)"
        )
    if len(set(devices)) != len(devices):
        raise ConfigurationError(f"I2V_DEVICE={value}: a GPU appears twice in the group")
    return devices


def check(settings: Settings, *, ranks: int, heads: dict[str, int]) -> Settings:
    """Refuses what a group cannot run, saying why; returns the settings a group runs with (one job at a time,
    no compile or offload unless asked for, which is refused)."""
    if settings.speed == "fast":
        raise ConfigurationError(
            "I2V_SPEED=fast does not run in a group: the first-block step cache decides on each rank's own part of"
            " the sequence, so ranks could skip different steps and fall out of step; use quality or turbo"
        )
    if settings.compile == "on":
        raise ConfigurationError(
            "I2V_COMPILE=1 does not run in a group: the compiled blocks are not checked with the context-parallel"
            " hooks and collectives; leave I2V_COMPILE unset (off in a group)"
        )
    if settings.cpu_offload == "on":
        raise ConfigurationError(
            "I2V_CPU_OFFLOAD=1 does not run in a group: every rank keeps the whole pipeline on its own device"
        )
    for name, count in heads.items():
        if count % ranks:
            raise ConfigurationError(
                f"the {name} has {count} attention heads, which do not divide among {ranks} ranks (context"
                f" parallelism gives each rank heads/{ranks} of them); use a group of a size that divides {count}"
            )
    if settings.slots > 1:
        logger.warning("I2V_WORKER_SLOTS=%d: a group runs one job at a time (slots 1)", settings.slots)
    return replace(settings, slots=1, compile="off", cpu_offload="off")


def attention_heads(checkpoint: Path) -> dict[str, int]:
    """The attention head count of each transformer of a checkpoint, from its configs."""
    import json

    heads: dict[str, int] = {}
    for name in ("transformer", "transformer_2"):
        config = checkpoint / name / "config.json"
        if config.is_file():
            heads[name] = int(json.loads(config.read_text(encoding="utf-8"))["num_attention_heads"])
    return heads


def sequence_problem(*, width: int, height: int, frames: int, size_multiple: int, ranks: int) -> str | None:
    """Why a job's transformer sequence does not split evenly among the ranks, or None when it does."""
    latent_frames = (frames - 1) // 4 + 1
    tokens = (width // size_multiple) * (height // size_multiple) * latent_frames
    if tokens % ranks == 0:
        return None
    return (
        f"width, height and num_frames ({width}x{height}, {frames} frames) make {tokens} tokens, which do not"
        f" divide among this worker's {ranks} ranks; choose a size or frame count whose token count does"
    )


@dataclass(frozen=True, kw_only=True)
class GroupJob:
    """What rank 0 sends every other rank for a job: `Engine.generate`'s inputs, resolved."""

    task_id: str
    image: Any  # PIL images, sent decoded so that no other rank reads the job's files
    last_image: Any
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    infer_steps: int
    guidance_scale: float
    guidance_scale_2: float | None
    seed: int


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent (its spawning thread: rank 0's main thread) exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exited with status {code}"


class Group:
    """This process's place in a group: its rank, the devices, the agreement, and (rank 0) the other ranks."""

    def __init__(self, *, rank: int, devices: tuple[str, ...], port: int, timeout: float) -> None:
        self.rank = rank
        self.devices = devices
        self.port = port
        self.timeout = timeout
        self.children: list[subprocess.Popen[bytes]] = []
        self.on_fatal: Callable[[str], None] = lambda reason: None  # rank 0: writes `fatal` to the server
        self._closing = threading.Event()
        self._failing = threading.Lock()
        # The running job's state, on the job's thread (one job at a time in a group).
        self.inside = False  # in a transformer call or an agreement: the ranks are in lockstep collectives
        self.settled = False  # the job's end was agreed by every rank: nobody waits for this rank

    @property
    def ranks(self) -> int:
        return len(self.devices)

    @property
    def device(self) -> str:
        return self.devices[self.rank]

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def joined(self) -> str:
        return "+".join(self.devices)

    # --- processes ------------------------------------------------------------------------------------------------

    def spawn(self) -> None:
        """Rank 0: starts ranks 1..N-1, each with a pipe for its jobs, its stdout on our stderr."""
        for rank in range(1, self.ranks):
            env = {**os.environ, RANK_ENV: str(rank), PORT_ENV: str(self.port)}
            # preexec_fn runs between fork and exec; `prctl` is one system call there, safe even with other threads.
            child = subprocess.Popen(
                [sys.executable, "-m", "i2v_worker"],
                stdin=subprocess.PIPE, stdout=sys.stderr.fileno(), env=env, preexec_fn=_die_with_parent,
            )  # fmt: skip
            self.children.append(child)
            logger.info("group: started rank %d on %s (pid %d)", rank, self.devices[rank], child.pid)

    def watch(self) -> None:
        """Rank 0: a thread that takes the group down when a rank process ends on its own."""
        threading.Thread(target=self._watch, name="group-watch", daemon=True).start()

    def _watch(self) -> None:
        while not self._closing.wait(WATCH_INTERVAL_SECONDS):
            for rank, child in enumerate(self.children, start=1):
                code = child.poll()
                if code is not None and not self._closing.is_set():
                    self.fail(f"rank {rank} ({self.devices[rank]}, pid {child.pid}) {_describe_exit(code)}")

    def dead_rank(self, wait: float = 1.0) -> str | None:
        """Which rank process has ended, if one has (waiting up to `wait` s for a dying one to be reaped)."""
        deadline = time.monotonic() + wait
        while True:
            for rank, child in enumerate(self.children, start=1):
                code = child.poll()
                if code is not None:
                    return f"rank {rank} ({self.devices[rank]}, pid {child.pid}) {_describe_exit(code)}"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def fail(self, reason: str) -> None:
        """Rank 0: the group cannot go on. Tells the server (`fatal`), ends every rank, exits 1: the server's
        supervisor restarts the whole group and re-queues the job it was running. Never returns."""
        with self._failing:
            self._closing.set()
            logger.error("group failed: %s", reason)
            self.on_fatal(f"worker group failed: {reason}; restarting the whole group")
            self._kill()
            logging.shutdown()
            os._exit(1)

    def _kill(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(CLOSE_GRACE_SECONDS)

    def close(self) -> None:
        """Rank 0 at shutdown: the end of the job pipes ends the other ranks; those that linger are killed."""
        self._closing.set()
        for child in self.children:
            if child.stdin is not None:
                with contextlib.suppress(OSError):
                    child.stdin.close()
        deadline = time.monotonic() + CLOSE_GRACE_SECONDS
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(max(0.0, deadline - time.monotonic()))
        self._kill()

    # --- torch.distributed ----------------------------------------------------------------------------------------

    def connect(self) -> None:
        """Joins the process group (gloo on the CPU, NCCL on GPUs), once every rank has loaded its pipeline.

        Loading takes as long as it takes (minutes for a real checkpoint, longer on a shared disk), so the ranks
        first meet at their own store, which waits up to `STARTUP_TIMEOUT_SECONDS` (rank 0's watcher still sees a
        rank that dies meanwhile); only then does the process group start, and its collectives wait up to the
        group timeout."""
        import torch
        import torch.distributed as dist

        cpu = self.device == "cpu"
        if not cpu:
            torch.cuda.set_device(torch.device(self.device))
            # A timed-out NCCL collective should raise in the job's thread, so that rank 0 can say why in `fatal`,
            # rather than have NCCL's watchdog end the process without a word (its default). Not yet run on GPUs.
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
        store = dist.TCPStore(
            "127.0.0.1", self.port, world_size=self.ranks, is_master=self.leader,
            timeout=timedelta(seconds=max(self.timeout, STARTUP_TIMEOUT_SECONDS)), wait_for_workers=False,
        )  # fmt: skip
        store.set(f"loaded/{self.rank}", "1")
        store.wait([f"loaded/{rank}" for rank in range(self.ranks)])
        dist.init_process_group(
            backend="gloo" if cpu else "nccl",
            store=store,
            rank=self.rank,
            world_size=self.ranks,
            timeout=timedelta(seconds=self.timeout),
        )
        logger.info("group: rank %d of %d joined on %s", self.rank, self.ranks, self.device)

    def parallelize(self, pipe: Any) -> None:
        """Context parallelism (Ulysses over all ranks) on each transformer; call on every rank, in step."""
        from diffusers import ContextParallelConfig

        for transformer in (pipe.transformer, getattr(pipe, "transformer_2", None)):
            if transformer is None:
                continue
            with _cpu_ranks_on_one_device(cpu=self.device == "cpu"):
                transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=self.ranks))

    def install(self, pipe: Any) -> None:
        """The agreement before every transformer call, and where the lockstep ends (after it)."""
        for transformer in (pipe.transformer, getattr(pipe, "transformer_2", None)):
            if transformer is not None:
                transformer.register_forward_pre_hook(self._before_call)
                transformer.register_forward_hook(self._after_call)

    # --- a job ----------------------------------------------------------------------------------------------------

    def begin(self) -> None:
        self.inside = False
        self.settled = False

    def agree(self, code: int) -> int:
        """Every rank's code for this point of the job; all get the highest."""
        import torch
        import torch.distributed as dist

        device = "cpu" if self.device == "cpu" else self.device
        flag = torch.tensor([code], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def _before_call(self, module: Any, args: Any) -> None:
        from .phases import current

        context = current()
        self.inside = True  # from here, a failure leaves the ranks at different collectives
        cancelled = context is not None and context.cancelled.is_set()
        agreed = self.agree(CANCEL if cancelled else GO)
        self.inside = False
        if agreed == GO:
            self.inside = True
            return
        self.settled = True
        if agreed == CANCEL:
            if context is None:
                raise Cancelled(0, 0)
            raise Cancelled(context.step, context.total_steps)
        if agreed == OOM:
            raise OutOfMemory()
        raise RankFailed("another rank of the group failed this job (its log says why)")

    def _after_call(self, module: Any, args: Any, output: Any) -> None:
        self.inside = False

    def failed(self, exc: BaseException, phase: str | None) -> None:
        """A job failed on this rank with `exc` in `phase`: tells the others, or takes the group down where
        the ranks can no longer meet at the same collective."""
        if self.inside:
            reason = (
                self.dead_rank() if self.leader else None
            ) or (
                f"rank {self.rank} failed inside a transformer call, between collectives (a rank died, hung past"
                f" I2V_GROUP_TIMEOUT_SECONDS={self.timeout:g}, or ran out of memory): {describe_failure(exc)}"
            )  # fmt: skip
            self.break_down(reason)
        if self.settled or phase in ("decode", "encode_video"):
            return  # the others know, or have finished their part of the job
        from .pipeline import is_out_of_memory

        code = CANCEL if isinstance(exc, Cancelled) else OOM if is_out_of_memory(exc) else FAILED
        self.settled = True
        try:
            self.agree(code)  # where the others wait: before their next transformer call
        except Exception as error:  # noqa: BLE001 (a failed collective: the group is broken whatever it was)
            self.break_down(self.dead_rank() or f"rank {self.rank} could not tell the others: {error}")

    def break_down(self, reason: str) -> None:
        """Never returns: rank 0 fails the group; another rank exits, which rank 0 sees."""
        if self.leader:
            self.fail(reason)
        logger.error("group: rank %d leaves a broken group: %s", self.rank, reason)
        logging.shutdown()
        os._exit(1)

    def send(self, job: GroupJob) -> None:
        """Rank 0: the job's inputs to every other rank."""
        data = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        for rank, child in enumerate(self.children, start=1):
            try:
                assert child.stdin is not None
                child.stdin.write(len(data).to_bytes(8, "little") + data)
                child.stdin.flush()
            except (OSError, ValueError) as exc:
                self.fail(self.dead_rank() or f"cannot send the job to rank {rank}: {exc}")


def receive(channel: IO[bytes]) -> GroupJob | None:
    """Ranks 1..N-1: the next job from rank 0; None when the pipe ends (shutdown, or rank 0 is gone)."""
    header = channel.read(8)
    if len(header) < 8:
        return None
    size = int.from_bytes(header, "little")
    data = channel.read(size)
    if len(data) < size:
        return None
    job = pickle.loads(data)
    if not isinstance(job, GroupJob):
        raise TypeError(f"not a group job: {type(job).__name__}")
    return job


def _run_out_of_memory_once(module: Any) -> None:
    def hook(module: Any, args: Any) -> None:
        handle.remove()
        raise MemoryError(f"{OOM_ENV}: out of memory in the text encoder")

    handle = module.register_forward_pre_hook(hook)


@contextlib.contextmanager
def _cpu_ranks_on_one_device(*, cpu: bool) -> Iterator[None]:
    """diffusers 0.42.1's `ModelMixin._resolve_parallel_config` places rank r on device
    `r % torch.accelerator.device_count()`, a division by zero where there is no accelerator (the count is 0), so
    `enable_parallelism` cannot run on CPU ranks at all. Every CPU rank is on the one CPU: count one device while
    parallelism is enabled, on CPU groups only. Worth reporting upstream (a CPU mesh works once past this line)."""
    import torch

    if not cpu or torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def start(settings: Settings, devices: tuple[str, ...], *, on_fatal: Callable[[str], None]) -> tuple[Any, Group]:
    """Rank 0: checks the group's configuration, starts the other ranks, loads the engine in step with them."""
    from .checkpoint import resolve
    from .pipeline import Engine

    resolved = resolve(settings)  # builds a demo once, here, before the other ranks look for it
    settings = check(settings, ranks=len(devices), heads=attention_heads(resolved.facts.path))
    group = Group(rank=0, devices=devices, port=_free_port(), timeout=settings.group_timeout)
    group.on_fatal = on_fatal
    group.spawn()
    try:
        group.watch()
        engine = Engine.load(settings, group=group)
    except BaseException:
        group.close()
        raise
    return engine, group


def follow(env: dict[str, str]) -> int:
    """Ranks 1..N-1: join the group, load the engine in step with rank 0, then run every job rank 0 sends
    until its pipe ends. Returns the exit status."""
    from .checkpoint import resolve
    from .pipeline import Engine

    rank = int(env[RANK_ENV])
    settings = Settings.from_env(env)
    devices = split_devices(settings.device)
    settings = check(settings, ranks=len(devices), heads=attention_heads(resolve(settings).facts.path))
    group = Group(rank=rank, devices=devices, port=int(env[PORT_ENV]), timeout=settings.group_timeout)
    engine = Engine.load(settings, group=group)
    stall = env.get(STALL_ENV, "").strip() == str(rank)
    if env.get(OOM_ENV, "").strip() == str(rank):
        _run_out_of_memory_once(engine.pipe.text_encoder)
    channel = sys.stdin.buffer
    while (job := receive(channel)) is not None:

        def on_step(step: int, total: int) -> None:
            if stall:
                logger.warning("group: rank %d stalls (%s)", rank, STALL_ENV)
                time.sleep(10**6)

        try:
            engine.generate(
                image=job.image, prompt=job.prompt, negative_prompt=job.negative_prompt, width=job.width,
                height=job.height, num_frames=job.num_frames, infer_steps=job.infer_steps,
                guidance_scale=job.guidance_scale, guidance_scale_2=job.guidance_scale_2, seed=job.seed,
                on_step=on_step, cancelled=threading.Event(), last_image=job.last_image,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 (rank 0 reports the job's end; this rank goes on to the next)
            logger.info("task=%s rank %d: the job ended: %s", job.task_id, rank, describe_failure(exc))
    logger.info("group: rank %d: no more jobs, exiting", rank)
    return 0
