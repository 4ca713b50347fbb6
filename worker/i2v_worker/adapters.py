"""LoRAs per request on the loaded pipeline, without reloading or recompiling anything when the set changes.

Each transformer (both experts of a two-expert model) gets one PEFT adapter, the slot: a LoRA of rank
`I2V_LORA_MAX_RANK` on every linear layer, at scaling 1. A job's LoRAs are copied into it side by side along the
rank (LoRA i in rows offset_i..offset_i + r_i of the down projection and the same columns of the up projection),
each LoRA's PEFT scaling and the job's scale folded into its up projection and bias, the rest zero. So

    W x + up_slot (down_slot x) + bias_slot = W x + sum_i scale_i * s_i * (B_i (A_i x) + b_i),

which is what `set_adapters` over one adapter per LoRA computes. The modules, adapter names and scalings never
change after the slot is made, only the values in its tensors (copied in place), so a compiled transformer keeps its
graph: dynamo's guards see the same modules and the same Python values for every set. The cost is the slot itself:
its memory and its matmuls run on every step, LoRAs or not (a compiled worker makes it at start, before its blocks
are compiled, and runs it with zeros when a job has no LoRA; an eager worker makes it at its first LoRA job and
turns it off for jobs without one).

A LoRA is read once through diffusers' loader (which knows the published key layouts), into a temporary adapter
whose per-layer weights are copied out and the adapter deleted; those copies are the LRU cache (`I2V_LORA_CACHE`).
Jobs with different sets never share the pipeline: `LoraAdapters.active_for` admits a job through the set gate of
loras.py, which switches the set only while no job runs.

Why not diffusers' hotswap (`enable_lora_hotswap` + `load_lora_weights(..., hotswap=True)`): it pads one loaded
adapter to a target rank and overwrites it in place, which is the same idea for one LoRA; it keeps no other
LoRA and cannot hold a job's several LoRAs in one adapter, so combining and caching are done here.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import BadInput, Cancelled
from .loras import (
    LoraError,
    LoraRequest,
    LoraUsed,
    SetGate,
    check_header,
    check_request,
    describe_set,
    in_set_order,
    read_verified,
)  # fmt: skip
from .loras import set_key as key_of

logger = logging.getLogger("i2v_worker")

SLOT = "i2v_loras"  # the one adapter every job's LoRAs are copied into
INCOMING = "i2v_incoming"  # a LoRA being read, deleted once its weights are copied out


@dataclass(frozen=True, kw_only=True)
class PreparedSet:
    """A job's LoRAs after the checks that need no model: their state dicts read where not cached yet."""

    loras: tuple[LoraRequest, ...]
    state_dicts: dict[str, dict[str, Any]]  # adapter name -> tensors, for the LoRAs not in the cache when checked

    @property
    def used(self) -> tuple[LoraUsed, ...]:
        return tuple(
            LoraUsed(name=lora.name, scale=lora.scale, sha256=lora.sha256, expert=lora.expert) for lora in self.loras
        )


@dataclass(frozen=True, kw_only=True)
class LayerDelta:
    """One layer of a LoRA, ready to copy into the slot: its PEFT scaling is already in `up` and `bias`."""

    down: Any  # rank x in
    up: Any  # out x rank
    bias: Any | None  # out


@dataclass(frozen=True, kw_only=True)
class CachedLora:
    """A LoRA read and taken apart per layer, for each transformer (module name -> delta)."""

    lora: LoraRequest
    rank: int
    layers: tuple[dict[str, LayerDelta], ...]


def _refuse(lora: LoraRequest, exc: Exception) -> BadInput:
    return BadInput(f"LoRA {lora.name!r}: {exc}")


class LoraAdapters:
    """The pipeline's user LoRAs: the slot adapter, an LRU cache of LoRAs taken apart per layer, and the gate that
    keeps sets apart."""

    def __init__(self, pipe: Any, *, experts: int, max_rank: int, cache_size: int, compiled: bool = False) -> None:
        self.pipe = pipe
        self.compiled = compiled
        self.experts = experts
        self.max_rank = max_rank
        self.cache_size = max(cache_size, 1)
        self.gate = SetGate()
        self._cache: OrderedDict[str, CachedLora] = OrderedDict()  # adapter name -> LoRA, least recent first
        self._lock = threading.Lock()  # guards _cache against the prepare of another job
        self._slots: list[dict[str, Any]] | None = None  # per transformer: module name -> its LoRA layer
        self._unavailable: str | None = None  # why this worker takes no LoRAs, if it cannot
        if compiled:
            try:
                self._make_slots()  # before the first call compiles the blocks: their graph includes it
            except (ValueError, RuntimeError, TypeError, AttributeError, NotImplementedError) as exc:
                # Layers PEFT cannot wrap (quantized weights of some kinds): serve jobs without LoRAs all the same.
                self._drop(SLOT)
                self._slots = None
                self._unavailable = _first_line(exc)
                logger.warning("no LoRA slot, jobs with LoRAs are refused: %s", self._unavailable)

    def loaded(self) -> list[str]:
        """The cached LoRAs' adapter names, least recently used first."""
        with self._lock:
            return list(self._cache)

    def prepare(self, loras: tuple[LoraRequest, ...]) -> PreparedSet:
        """Checks a job's LoRAs before it waits for the pipeline (raises BadInput naming the LoRA): the request's
        limits, then for each LoRA not cached its header, its sha256 and its tensors (read once), then that their
        ranks fit the slot together."""
        try:
            check_request(loras)
        except LoraError as exc:
            raise BadInput(str(exc)) from None
        if loras and self._unavailable is not None:
            raise BadInput(f"loras: this worker cannot hold LoRAs ({self._unavailable})")
        for lora in loras:
            if lora.expert is not None and self.experts < 2:
                raise _refuse(
                    lora, LoraError(f"'expert' {lora.expert} is for a model with two experts; this one has one")
                )
        state_dicts: dict[str, dict[str, Any]] = {}
        ranks: dict[str, int] = {}
        totals = [0] * self.experts  # each transformer's slot holds the LoRAs that apply to it
        for lora in loras:
            with self._lock:
                cached = self._cache.get(lora.adapter_name)
            if cached is not None:
                ranks[lora.adapter_name] = cached.rank  # the file of this sha256: nothing to read
            elif lora.adapter_name not in ranks:  # not the same file as for the other expert, read already
                ranks[lora.adapter_name], state_dicts[lora.adapter_name] = self._read(lora)
            rank = ranks[lora.adapter_name]
            for index in range(self.experts):
                totals[index] += rank if lora.applies_to(index) else 0
        if max(totals, default=0) > self.max_rank:
            raise BadInput(
                f"loras: their ranks add up to {max(totals)}, above this worker's limit of {self.max_rank}"
                " (I2V_LORA_MAX_RANK)"
            )
        return PreparedSet(loras=loras, state_dicts=state_dicts)

    def _read(self, lora: LoraRequest) -> tuple[int, dict[str, Any]]:
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            header = check_header(lora.path, max_rank=self.max_rank)
            data = read_verified(lora.path, lora.sha256)
        except LoraError as exc:
            raise _refuse(lora, exc) from None
        try:
            return header.rank, load(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise _refuse(lora, LoraError(f"not a readable safetensors file ({exc})")) from None

    @contextmanager
    def active_for(self, prepared: PreparedSet, *, cancelled: threading.Event, steps: int) -> Iterator[None]:
        """The body runs with the slot holding the job's LoRAs, and no job of another set runs meanwhile. A job
        cancelled while it waits raises Cancelled (step 0)."""

        def on_cancel() -> None:
            raise Cancelled(0, steps)

        def switch() -> None:
            self._switch(prepared)

        with self.gate.admitted(key_of(prepared.loras), switch=switch, cancelled=cancelled, on_cancel=on_cancel):
            yield

    def _switch(self, prepared: PreparedSet) -> None:
        """Makes `prepared` the slot's set; runs while no job uses the pipeline. Reads what is not cached (evicting
        the least recently used LoRAs outside the set once it is read), then fills the slot."""
        started = time.monotonic()
        wanted = sorted(prepared.loras, key=in_set_order)
        parts: list[tuple[CachedLora, LoraRequest]] = []
        read = 0
        try:
            for lora in wanted:
                with self._lock:
                    cached = self._cache.get(lora.adapter_name)
                    if cached is not None:
                        self._cache.move_to_end(lora.adapter_name)
                if cached is None:
                    state_dict = prepared.state_dicts.get(lora.adapter_name)
                    if state_dict is None:  # evicted since the job was checked: read (and check) it again
                        state_dict = self._read(lora)[1]
                    cached = self._take_apart(lora, state_dict)
                    with self._lock:
                        self._cache[lora.adapter_name] = cached
                    read += 1
                parts.append((cached, lora))
            self._evict(keep={lora.adapter_name for lora in wanted})
            self._fill(parts)
        except BaseException:
            self._fill([])  # whatever was copied, the slot adds nothing now
            raise
        logger.info(
            "lora set: %s (read %d, cached %d) in %.2f s",
            describe_set(prepared.loras), read, len(self._cache), time.monotonic() - started,
        )  # fmt: skip

    def _evict(self, *, keep: set[str]) -> None:
        with self._lock:
            while len(self._cache) > self.cache_size:
                victim = next((name for name in self._cache if name not in keep), None)
                if victim is None:
                    return  # the set itself is larger than the cache: hold it all
                lora = self._cache.pop(victim).lora
                logger.info("lora evicted: %s (%s)", lora.name, lora.sha256[:12])

    def _transformers(self) -> list[Any]:
        return [m for m in (self.pipe.transformer, getattr(self.pipe, "transformer_2", None)) if m is not None]

    def _make_slots(self) -> None:
        """Adds the slot adapter to every linear layer of each transformer, zeroed, and makes it the active one."""
        import torch
        from peft import LoraConfig

        slots: list[dict[str, Any]] = []
        for transformer in self._transformers():
            targets = [name for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)]
            config = LoraConfig(
                r=self.max_rank, lora_alpha=self.max_rank, target_modules=targets, lora_bias=True,
                init_lora_weights=False,
            )  # fmt: skip
            transformer.add_adapter(config, adapter_name=SLOT)
            layers = {name: module for name, module in transformer.named_modules() if SLOT in _lora_a(module)}
            dtype = next(transformer.parameters()).dtype
            for layer in layers.values():
                for part in (layer.lora_A[SLOT], layer.lora_B[SLOT]):
                    part.to(dtype=dtype if dtype.is_floating_point and dtype.itemsize >= 2 else torch.float32)
                    part.requires_grad_(False)
            slots.append(layers)
        self._slots = slots
        self._fill([])
        self._activate()
        logger.info(
            "lora slot: rank %d on %s linear layers", self.max_rank, " + ".join(str(len(layers)) for layers in slots)
        )

    def _activate(self) -> None:
        """The slot alone active at scaling 1, the same Python state after every change (dynamo guards on it)."""
        for transformer in self._transformers():
            transformer.set_adapters([SLOT], weights=[1.0])

    def _fill(self, parts: list[tuple[CachedLora, LoraRequest]]) -> None:
        """Copies `parts` (what was read, the job's use of it) into each transformer's slot side by side along the
        rank, those that apply to it (a LoRA may be for one expert); zero everywhere else."""
        import torch

        if self._slots is None:
            if not parts:
                return  # no slot yet and nothing to hold: the base weights alone
            self._make_slots()
        assert self._slots is not None
        with torch.no_grad():
            for index, layers in enumerate(self._slots):
                for layer in layers.values():
                    layer.lora_A[SLOT].weight.zero_()
                    layer.lora_B[SLOT].weight.zero_()
                    layer.lora_B[SLOT].bias.zero_()
                offset = 0
                for cached, lora in parts:
                    if not lora.applies_to(index):
                        continue
                    scale = lora.scale
                    for name, delta in cached.layers[index].items():
                        layer = layers[name]
                        rank = delta.down.shape[0]
                        layer.lora_A[SLOT].weight[offset : offset + rank].copy_(delta.down)
                        layer.lora_B[SLOT].weight[:, offset : offset + rank].copy_(delta.up * scale)
                        if delta.bias is not None:
                            layer.lora_B[SLOT].bias.add_(delta.bias.to(layer.lora_B[SLOT].bias.dtype) * scale)
                    offset += cached.rank
        if not self.compiled:
            # Eager: a job without LoRAs runs the base weights alone (bit-identical to a worker without LoRAs).
            for transformer in self._transformers():
                (transformer.enable_adapters if parts else transformer.disable_adapters)()

    def _take_apart(self, lora: LoraRequest, state_dict: dict[str, Any]) -> CachedLora:
        """Reads a LoRA through diffusers' loader into a temporary adapter and copies its layers out; refuses,
        leaving nothing of it behind, a LoRA none of whose layers, or not all of whose shapes, fit the model, or
        one with layers the slot does not cover (not linear) or of a kind it cannot hold (DoRA)."""
        if self._slots is None:
            self._make_slots()
        assert self._slots is not None
        with warnings.catch_warnings():
            # PEFT warns that the model already has an adapter (the slot) and, at the delete, that the slot is the
            # active one again: both are the point here.
            warnings.filterwarnings(
                "ignore", message=r".*(peft_config|was active which is now deleted)", category=UserWarning
            )
            return self._read_through_loader(lora, state_dict)

    def _read_through_loader(self, lora: LoraRequest, state_dict: dict[str, Any]) -> CachedLora:
        try:
            try:
                # diffusers converts the layout it reads in place: each expert gets its own copy of the dict.
                self.pipe.load_lora_weights(dict(state_dict), adapter_name=INCOMING)
                if self.experts > 1:
                    self.pipe.load_lora_weights(dict(state_dict), adapter_name=INCOMING, load_into_transformer_2=True)
            except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
                raise _refuse(lora, LoraError(f"does not fit this model: {_first_line(exc)}")) from None
            layers = tuple(self._copy_out(lora, transformer) for transformer in self._transformers())
        finally:
            self._drop(INCOMING)
            self._activate()
        rank = max((delta.down.shape[0] for per in layers for delta in per.values()), default=0)
        logger.info("lora read: %s (%s), rank %d, %d layers", lora.name, lora.sha256[:12], rank, len(layers[0]))
        return CachedLora(lora=lora, rank=rank, layers=layers)

    def _copy_out(self, lora: LoraRequest, transformer: Any) -> dict[str, LayerDelta]:
        import torch

        layers: dict[str, LayerDelta] = {}
        with torch.no_grad():
            for name, module in transformer.named_modules():
                if INCOMING not in _lora_a(module):
                    continue
                if SLOT not in module.lora_A:
                    raise _refuse(
                        lora, LoraError(f"its layer {name} is not a linear layer, which the worker's LoRA slot covers")
                    )
                if INCOMING in getattr(module, "lora_variant", {}):
                    raise _refuse(lora, LoraError(f"its layer {name} is a DoRA or other LoRA variant, not supported"))
                scaling = float(module.scaling[INCOMING])
                slot_a = module.lora_A[SLOT].weight
                down = module.lora_A[INCOMING].weight
                up = module.lora_B[INCOMING].weight
                bias = module.lora_B[INCOMING].bias
                layers[name] = LayerDelta(
                    down=down.detach().to(device=slot_a.device, dtype=slot_a.dtype, copy=True),
                    up=(up.detach().to(device=slot_a.device, dtype=torch.float32) * scaling).to(slot_a.dtype),
                    bias=None if bias is None else (bias.detach().to(slot_a.device, torch.float32) * scaling).to(slot_a.dtype),
                )  # fmt: skip
        if not layers:
            raise _refuse(lora, LoraError("does not fit this model: none of its layers matches a layer of it"))
        return layers

    def _drop(self, name: str) -> None:
        """Removes whatever of adapter `name` a load made, in each transformer."""
        for model in self._transformers():
            if name in getattr(model, "peft_config", {}):
                model.delete_adapters(name)


def _lora_a(module: Any) -> Any:
    return getattr(module, "lora_A", {})


def _first_line(exc: BaseException) -> str:
    """The start of a loader's message: torch's state-dict errors put the first mismatch on their second line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return ("; ".join(lines[:2]) if lines else type(exc).__name__)[:500]
