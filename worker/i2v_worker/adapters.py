"""LoRAs per request on the loaded pipeline: loads each LoRA once as a PEFT adapter of the transformer (both
experts of a two-expert model), keeps the loaded ones in a bounded LRU cache, and sets a job's set as the active
adapters with their scales. Jobs with different sets never share the pipeline: `LoraAdapters.active_for` admits a
job through the set gate of loras.py, which switches the set only while no job runs.

Why named adapters rather than hotswapping: diffusers' hotswap (`enable_lora_hotswap` + `load_lora_weights(...,
hotswap=True)`) overwrites the weights of one already loaded adapter in place, so a compiled transformer keeps its
graph; it keeps no other adapter. A cache of several adapters, any of which a job may combine, needs one adapter
per LoRA, and `set_adapters` to choose among them; see worker/README.md for what that means with compilation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import BadInput, Cancelled
from .loras import LoraError, LoraRequest, LoraUsed, SetGate, check_header, check_request, describe_set, read_verified
from .loras import set_key as key_of

logger = logging.getLogger("i2v_worker")


@dataclass(frozen=True, kw_only=True)
class PreparedSet:
    """A job's LoRAs after the checks that need no model: their state dicts read where not loaded yet."""

    loras: tuple[LoraRequest, ...]
    state_dicts: dict[str, dict[str, Any]]  # adapter name -> tensors, for the LoRAs not in the cache when checked

    @property
    def used(self) -> tuple[LoraUsed, ...]:
        return tuple(LoraUsed(name=lora.name, scale=lora.scale, sha256=lora.sha256) for lora in self.loras)


def _refuse(lora: LoraRequest, exc: Exception) -> BadInput:
    return BadInput(f"LoRA {lora.name!r}: {exc}")


class LoraAdapters:
    """The pipeline's user LoRAs: an LRU cache of loaded adapters and the gate that keeps sets apart."""

    def __init__(self, pipe: Any, *, experts: int, max_rank: int, cache_size: int, compiled: bool = False) -> None:
        self.pipe = pipe
        self.compiled = compiled
        self.experts = experts
        self.max_rank = max_rank
        self.cache_size = max(cache_size, 1)
        self.gate = SetGate()
        self._loaded: OrderedDict[str, LoraRequest] = OrderedDict()  # adapter name -> its LoRA, least recent first
        self._lock = threading.Lock()  # guards _loaded against the prepare of another job

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def prepare(self, loras: tuple[LoraRequest, ...]) -> PreparedSet:
        """Checks a job's LoRAs before it waits for the pipeline (raises BadInput naming the LoRA): the request's
        limits, then for each LoRA not loaded yet its header, its sha256 and its tensors (read once)."""
        try:
            check_request(loras)
        except LoraError as exc:
            raise BadInput(str(exc)) from None
        state_dicts: dict[str, dict[str, Any]] = {}
        for lora in loras:
            with self._lock:
                if lora.adapter_name in self._loaded:
                    continue  # the adapter is the file of this sha256: nothing to read
            state_dicts[lora.adapter_name] = self._read(lora)
        return PreparedSet(loras=loras, state_dicts=state_dicts)

    def _read(self, lora: LoraRequest) -> dict[str, Any]:
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            check_header(lora.path, max_rank=self.max_rank)
            data = read_verified(lora.path, lora.sha256)
        except LoraError as exc:
            raise _refuse(lora, exc) from None
        try:
            return load(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise _refuse(lora, LoraError(f"not a readable safetensors file ({exc})")) from None

    @contextmanager
    def active_for(self, prepared: PreparedSet, *, cancelled: threading.Event, steps: int) -> Iterator[None]:
        """The body runs with the pipeline's active adapters set to the job's LoRAs, and no job of another set runs
        meanwhile. A job cancelled while it waits raises Cancelled (step 0)."""

        def on_cancel() -> None:
            raise Cancelled(0, steps)

        def switch() -> None:
            self._switch(prepared)

        with self.gate.admitted(key_of(prepared.loras), switch=switch, cancelled=cancelled, on_cancel=on_cancel):
            yield

    def _switch(self, prepared: PreparedSet) -> None:
        """Makes `prepared` the active set; runs while no job uses the pipeline. Loads what is missing (evicting the
        least recently used adapters outside the set once it is loaded), then sets the adapters and their scales."""
        started = time.monotonic()
        wanted = sorted(prepared.loras, key=lambda lora: lora.sha256)  # one order for every job: the same sums
        names = [lora.adapter_name for lora in wanted]
        loaded = 0
        try:
            for lora in wanted:
                if lora.adapter_name in self._loaded:
                    with self._lock:
                        self._loaded.move_to_end(lora.adapter_name)
                    continue
                state_dict = prepared.state_dicts.get(lora.adapter_name)
                if state_dict is None:  # evicted since the job was checked: read (and check) it again
                    state_dict = self._read(lora)
                self._load(lora, state_dict)
                loaded += 1
            # After the loads, so a LoRA that fails to load costs the cache nothing (one adapter over, meanwhile).
            self._evict(keep=set(names))
            if names:
                self.pipe.enable_lora()
                self.pipe.set_adapters(names, adapter_weights=[lora.scale for lora in wanted])
            elif self._loaded:
                self.pipe.disable_lora()
        except BaseException:
            if self._loaded:
                self.pipe.disable_lora()  # whichever adapters were set, none is active now
            raise
        if self.compiled:
            # The blocks' guards see other adapter layers: the next call recompiles (after dynamo's limit, eager).
            logger.warning("lora set switched on compiled blocks: the next job recompiles them")
        logger.info(
            "lora set: %s (loaded %d, cached %d) in %.2f s",
            describe_set(prepared.loras), loaded, len(self._loaded), time.monotonic() - started,
        )  # fmt: skip

    def _evict(self, *, keep: set[str]) -> None:
        while len(self._loaded) > self.cache_size:
            victim = next((name for name in self._loaded if name not in keep), None)
            if victim is None:
                return  # the set itself is larger than the cache: hold it all
            self.pipe.delete_adapters(victim)
            with self._lock:
                lora = self._loaded.pop(victim)
            logger.info("lora evicted: %s (%s)", lora.name, lora.sha256[:12])

    def _load(self, lora: LoraRequest, state_dict: dict[str, Any]) -> None:
        """Loads one adapter into the transformer (and the second expert); refuses, leaving nothing of it loaded, a
        LoRA none of whose layers, or not all of whose shapes, fit the model."""
        name = lora.adapter_name
        try:
            # diffusers converts the layout it reads in place: each expert gets its own copy of the dict.
            self.pipe.load_lora_weights(dict(state_dict), adapter_name=name)
            if self.experts > 1:
                self.pipe.load_lora_weights(dict(state_dict), adapter_name=name, load_into_transformer_2=True)
        except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
            self._drop(name)
            raise _refuse(lora, LoraError(f"does not fit this model: {_first_line(exc)}")) from None
        missing = [model for model in self._transformers() if name not in getattr(model, "peft_config", {})]
        if missing:
            self._drop(name)
            raise _refuse(lora, LoraError("does not fit this model: none of its layers matches a layer of it"))
        with self._lock:
            self._loaded[name] = lora
        logger.info("lora loaded: %s (%s) as %s", lora.name, lora.sha256[:12], name)

    def _transformers(self) -> list[Any]:
        return [m for m in (self.pipe.transformer, getattr(self.pipe, "transformer_2", None)) if m is not None]

    def _drop(self, name: str) -> None:
        """Removes whatever of adapter `name` a failed load left behind, in each transformer."""
        for model in self._transformers():
            if name in getattr(model, "peft_config", {}):
                model.delete_adapters(name)


def _first_line(exc: BaseException) -> str:
    """The start of a loader's message: torch's state-dict errors put the first mismatch on their second line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return ("; ".join(lines[:2]) if lines else type(exc).__name__)[:500]
