"""LoRAs per request, the parts that need no torch: what a `run` asks for, the checks of a LoRA file made from its
safetensors header alone, and the gate that keeps jobs with different LoRA sets from running at the same time.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (`{"name": {"dtype", "shape",
"data_offsets": [begin, end]}, ..., "__metadata__": {...}}`), then the tensor data, offsets relative to its start.
`check_header` reads only the first 8 + N bytes (N bounded), so a server can run the same checks at submit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

MAX_LORAS = 4
MIN_SCALE, MAX_SCALE = 0.0, 2.0
DEFAULT_MAX_RANK = 128
DEFAULT_CACHE = 8
MAX_HEADER_BYTES = 16 * 1024 * 1024  # real LoRA headers are well under 1 MiB (about 150 bytes per tensor)
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A two-expert model's transformers, in the pipeline's order (`transformer`, `transformer_2`): a LoRA may be for one.
EXPERTS = ("high_noise", "low_noise")

# safetensors' dtypes and their sizes in bytes (sub-byte and 8-bit float types included: a file may hold them).
DTYPE_BYTES: dict[str, float] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75,
}  # fmt: skip
# The down projection (rank x in) and the up projection (out x rank) in the key layouts diffusers reads.
DOWN_SUFFIXES = (".lora_A.weight", ".lora_down.weight")
UP_SUFFIXES = (".lora_B.weight", ".lora_up.weight")


class LoraError(ValueError):
    """A LoRA that cannot be used; the message says why, without the LoRA's name (the caller adds it)."""


@dataclass(frozen=True, kw_only=True)
class LoraRequest:
    """One LoRA a job asks for: the server resolved `name` in its catalog to the absolute `path`."""

    omit_none: ClassVar[frozenset[str]] = frozenset({"expert"})  # a LoRA for every transformer reads as before
    name: str
    path: str
    scale: float
    sha256: str
    expert: str | None = None  # one of EXPERTS: that expert only; None: every transformer

    def applies_to(self, transformer: int) -> bool:
        """Whether the LoRA goes into the model's `transformer`-th transformer (0: the high-noise expert)."""
        return self.expert is None or EXPERTS.index(self.expert) == transformer

    @property
    def adapter_name(self) -> str:
        """Stable across jobs and processes: the same file is the same adapter whatever it is called."""
        return f"lora_{self.sha256[:16]}"


@dataclass(frozen=True, kw_only=True)
class LoraUsed:
    """A LoRA a finished job ran with (`done.loras`)."""

    omit_none: ClassVar[frozenset[str]] = frozenset({"expert"})
    name: str
    scale: float
    sha256: str
    expert: str | None = None  # None: every transformer


@dataclass(frozen=True, kw_only=True)
class LoraHeader:
    """What a LoRA file's header says."""

    tensors: int
    lora_tensors: int  # down and up projections
    rank: int  # the largest
    data_bytes: int


SetKey = tuple[tuple[str, float, str], ...]  # (sha256, scale, expert or "") sorted: the identity of a set of LoRAs


def set_key(loras: tuple[LoraRequest, ...]) -> SetKey:
    return tuple(sorted((lora.sha256, lora.scale, lora.expert or "") for lora in loras))


def describe_set(loras: tuple[LoraRequest, ...]) -> str:
    if not loras:
        return "none"
    return ", ".join(
        f"{lora.name}@{lora.scale:g}{'/' + lora.expert if lora.expert else ''}:{lora.sha256[:12]}"
        for lora in sorted(loras, key=in_set_order)
    )


def in_set_order(lora: LoraRequest) -> tuple[str, str]:
    """One order for every job of a set, so that its LoRAs are always summed the same way."""
    return lora.sha256, lora.expert or ""


def parse_loras(value: Any) -> tuple[LoraRequest, ...]:
    """The `loras` field of a `run` (absent, null or a list of objects); raises LoraError on a malformed one. The
    limits (count, scale range, duplicates) are `check_request`'s, so that they are refused as `bad_input` too."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise LoraError(f"'loras' must be a list, got {type(value).__name__}")
    loras: list[LoraRequest] = []
    for index, item in enumerate(value):
        where = f"loras[{index}]"
        if not isinstance(item, dict):
            raise LoraError(f"{where} must be an object, got {type(item).__name__}")
        name, path, sha, scale = item.get("name"), item.get("path"), item.get("sha256"), item.get("scale")
        if not isinstance(name, str) or not name:
            raise LoraError(f"{where}: 'name' must be a non-empty string, got {name!r}")
        if not isinstance(path, str) or not path:
            raise LoraError(f"{where} ({name!r}): 'path' must be a non-empty string, got {path!r}")
        if not isinstance(sha, str) or not SHA256.match(sha.lower()):
            raise LoraError(f"{where} ({name!r}): 'sha256' must be 64 hex digits, got {sha!r}")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            raise LoraError(f"{where} ({name!r}): 'scale' must be a number, got {scale!r}")
        expert = item.get("expert")
        if expert == "both":
            expert = None
        if expert is not None and expert not in EXPERTS:
            raise LoraError(f"{where} ({name!r}): 'expert' must be one of {', '.join(EXPERTS)} or both, got {expert!r}")
        loras.append(LoraRequest(name=name, path=path, scale=float(scale), sha256=sha.lower(), expert=expert))
    return tuple(loras)


def check_request(loras: tuple[LoraRequest, ...]) -> None:
    """The limits of a job's LoRA list that need no file: count, scale range, the same file twice on one transformer
    (once for each expert of a two-expert model is two different uses)."""
    if len(loras) > MAX_LORAS:
        raise LoraError(f"loras: at most {MAX_LORAS} LoRAs per job, got {len(loras)}")
    for index, lora in enumerate(loras):
        if not math.isfinite(lora.scale) or not MIN_SCALE <= lora.scale <= MAX_SCALE:
            raise LoraError(f"LoRA {lora.name!r}: scale must be from {MIN_SCALE} to {MAX_SCALE}, got {lora.scale:g}")
        for earlier in loras[:index]:
            both = lora.expert is None or earlier.expert is None
            if earlier.sha256 == lora.sha256 and (both or earlier.expert == lora.expert):
                raise LoraError(f"LoRA {lora.name!r}: the same file as {earlier.name!r} (sha256 {lora.sha256})")


def _rank_of(key: str, shape: list[int]) -> int | None:
    if len(shape) < 2:
        return None
    if key.endswith(DOWN_SUFFIXES):
        return shape[0]
    if key.endswith(UP_SUFFIXES):
        return shape[1]
    return None


def check_header(path: str, *, max_rank: int) -> LoraHeader:
    """Checks a LoRA file from its safetensors header only; raises LoraError saying what is wrong.

    The checks, in order: the file exists and is a regular file; it holds at least the 8-byte header length; the
    length is at most MAX_HEADER_BYTES and within the file (a pickle or zip renamed `.safetensors` fails here); the
    header is a UTF-8 JSON object; every tensor has a known dtype, a shape of non-negative integers and offsets
    [begin, end] with end - begin = its size in bytes; the tensors tile the data region from 0 with no gap or
    overlap; the data region is exactly the rest of the file (shorter: truncated; longer: trailing bytes); there is
    at least one LoRA down/up projection (`lora_A`/`lora_B` or `lora_down`/`lora_up` weights); no rank (the down
    projection's rows, the up projection's columns) is above `max_rank`.
    """
    try:
        size = os.stat(path).st_size
        if not os.path.isfile(path):
            raise LoraError(f"{path} is not a regular file")
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise LoraError(f"not a safetensors file: {size} bytes, too short for a header")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES or length > size - 8:
                raise LoraError(
                    f"not a safetensors file: its first 8 bytes give a header of {length} bytes"
                    f" (the file has {size}; at most {MAX_HEADER_BYTES} allowed)"
                )
            raw = handle.read(length)
    except FileNotFoundError:
        raise LoraError(f"no such file: {path}") from None
    except OSError as exc:
        raise LoraError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraError(f"not a safetensors file: its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise LoraError("not a safetensors file: its header is not a JSON object")
    spans: list[tuple[int, int, str]] = []
    rank = 0
    lora_tensors = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        begin, end, shape = _check_entry(key, entry)
        spans.append((begin, end, key))
        found = _rank_of(key, shape)
        if found is not None:
            lora_tensors += 1
            rank = max(rank, found)
    data_bytes = size - 8 - length
    position = 0
    for begin, end, key in sorted(spans):
        if begin != position:
            what = "overlaps the one before" if begin < position else f"leaves a gap of {begin - position} bytes"
            raise LoraError(f"inconsistent header: tensor {key!r} at bytes {begin}..{end} {what}")
        position = end
    if position > data_bytes:
        raise LoraError(f"truncated: the header places {position} bytes of tensors, the file holds {data_bytes}")
    if position < data_bytes:
        raise LoraError(f"inconsistent header: {data_bytes - position} bytes after the last tensor")
    if lora_tensors == 0:
        raise LoraError(
            f"no LoRA weights in it: {len(spans)} tensors, none a LoRA down/up projection"
            " (lora_A/lora_B or lora_down/lora_up)"
        )
    if rank > max_rank:
        raise LoraError(f"rank {rank} is above this worker's limit of {max_rank} (I2V_LORA_MAX_RANK)")
    return LoraHeader(tensors=len(spans), lora_tensors=lora_tensors, rank=rank, data_bytes=data_bytes)


def _check_entry(key: str, entry: Any) -> tuple[int, int, list[int]]:
    if not isinstance(entry, dict):
        raise LoraError(f"inconsistent header: tensor {key!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise LoraError(f"inconsistent header: tensor {key!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise LoraError(f"inconsistent header: tensor {key!r} has shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise LoraError(f"inconsistent header: tensor {key!r} has data_offsets {offsets!r}")
    expected = math.ceil(math.prod(shape) * DTYPE_BYTES[dtype])
    if offsets[1] - offsets[0] != expected:
        raise LoraError(
            f"inconsistent header: tensor {key!r} ({dtype} {shape}) needs {expected} bytes,"
            f" its offsets give {offsets[1] - offsets[0]}"
        )
    return offsets[0], offsets[1], shape


def read_verified(path: str, sha256: str) -> bytes:
    """The file's bytes, read once, refused unless their sha256 is `sha256` (the checks and the load then see the
    same bytes, whatever happens to the file meanwhile)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise LoraError(f"cannot read {path}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise LoraError(f"sha256 mismatch: the file's is {digest}, the job names {sha256}")
    return data


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SetGate:
    """Admits jobs to the shared pipeline so that only jobs with the same LoRA set run at once.

    First come, first served: a job is admitted when it is the oldest waiting and either no job is running or the
    running ones have its set. A job whose set differs waits until they finish; jobs behind it wait too (even those
    with the running set), so a set is never starved. The set is switched by the first job admitted to it, while no
    job runs.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()
        self._active: SetKey | None = ()  # None: unknown after a failed switch (the next job switches)
        self._running = 0
        self._switching = False

    @property
    def active(self) -> SetKey | None:
        with self._cond:
            return self._active

    @contextmanager
    def admitted(
        self, key: SetKey, *, switch: Callable[[], None], cancelled: threading.Event, on_cancel: Callable[[], None]
    ) -> Iterator[None]:
        """Holds a place among the running jobs of set `key` for the body. `switch()` makes `key` the pipeline's set
        (run while no job is running); if it raises, the set is unknown and the error goes to the caller. A job
        cancelled while it waits leaves the queue and `on_cancel()` raises its Cancelled."""
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
            while not (
                self._waiting[0] is ticket and not self._switching and (self._running == 0 or self._active == key)
            ):
                if cancelled.is_set():
                    self._waiting.remove(ticket)
                    self._cond.notify_all()
                    on_cancel()
                self._cond.wait(timeout=0.1)
            self._waiting.popleft()
            self._running += 1
            needs_switch = self._active != key
            self._switching = needs_switch
            self._cond.notify_all()
        if needs_switch:
            try:
                switch()
            except BaseException:
                with self._cond:
                    self._active = None
                    self._switching = False
                    self._running -= 1
                    self._cond.notify_all()
                raise
            with self._cond:
                self._active = key
                self._switching = False
                self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()
