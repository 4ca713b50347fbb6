"""The worker's configuration, read once from its environment (see worker/README.md for every variable)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

from .loras import DEFAULT_CACHE, DEFAULT_MAX_RANK
from .messages import SPEEDS, Speed

Switch = Literal["auto", "on", "off"]

DEFAULT_CACHE_THRESHOLD = 0.05  # diffusers' FirstBlockCacheConfig default
# How long a rank of a group waits in a collective for the others before the group is taken for broken: longer than
# any one transformer call, short enough that a hung rank is restarted without an operator.
DEFAULT_GROUP_TIMEOUT_SECONDS = 120.0


class ConfigurationError(ValueError):
    """The worker cannot start with this configuration; a restart with the same one would fail the same way."""


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigurationError(f"{name} must be 0 or 1, got {value!r}")


def _switch(env: Mapping[str, str], name: str) -> Switch:
    value = env.get(name, "").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("0", "false", "no", "off"):
        return "off"
    if value in ("1", "true", "yes", "on"):
        return "on"
    raise ConfigurationError(f"{name} must be auto, 0 or 1, got {value!r}")


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return number


def _threshold(env: Mapping[str, str], name: str) -> float:
    value = env.get(name, "").strip()
    if not value:
        return DEFAULT_CACHE_THRESHOLD
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0 or number > 1:
        raise ConfigurationError(f"{name} must be a number from 0 to 1, got {value!r}")
    return number


@dataclass(frozen=True, kw_only=True)
class Settings:
    model_path: str | None = None  # None: the model's demo (built) or hub checkpoint
    model: str | None = None  # a model id of models.py; None: the one the checkpoint names
    demo_dir: str | None = None  # where demos are built when model_path is None
    device: str | None = None  # None: cuda if available, else cpu; devices joined by "+": a group (group.py)
    slots: int = 1
    cpu_offload: Switch = "auto"  # auto: the model's memory plan for the device
    vae_tiling: bool = False
    torch_threads: int = 1  # per job, on the CPU
    bytes_per_token: int | None = None  # measured peak activation bytes per latent token, if the operator knows it
    speed: Speed = "quality"
    compile: Switch = "auto"  # auto: on CUDA, off on the CPU
    cache_threshold: float = DEFAULT_CACHE_THRESHOLD  # used by `fast`
    fp8: Switch = "auto"  # auto: in `fast` where the GPU has FP8
    lora_path: str | None = None  # required by `turbo`
    group_timeout: float = DEFAULT_GROUP_TIMEOUT_SECONDS  # a group's collective timeout
    lora_max_rank: int = DEFAULT_MAX_RANK  # the LoRA slot's rank: a job's LoRAs together at most this
    lora_cache: int = DEFAULT_CACHE  # user LoRAs kept read (least recently used dropped)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        model_path = env.get("I2V_MODEL_PATH", "").strip() or None
        model = env.get("I2V_MODEL", "").strip() or None
        if model_path is None and model is None:
            raise ConfigurationError("I2V_MODEL_PATH is not set: set it, or I2V_MODEL to a model id")
        speed = env.get("I2V_SPEED", "").strip().lower() or "quality"
        if speed not in SPEEDS:
            raise ConfigurationError(f"I2V_SPEED must be one of {', '.join(SPEEDS)}, got {speed!r}")
        bytes_per_token = env.get("I2V_BYTES_PER_TOKEN", "").strip()
        return cls(
            model_path=model_path,
            model=model,
            demo_dir=env.get("I2V_DEMO_DIR", "").strip() or None,
            device=env.get("I2V_DEVICE", "").strip() or None,
            slots=_positive_int(env, "I2V_WORKER_SLOTS", 1),
            cpu_offload=_switch(env, "I2V_CPU_OFFLOAD"),
            vae_tiling=_flag(env, "I2V_VAE_TILING"),
            torch_threads=_positive_int(env, "I2V_TORCH_THREADS", 1),
            bytes_per_token=_positive_int(env, "I2V_BYTES_PER_TOKEN", 1) if bytes_per_token else None,
            speed=cast(Speed, speed),
            compile=_switch(env, "I2V_COMPILE"),
            cache_threshold=_threshold(env, "I2V_CACHE_THRESHOLD"),
            fp8=_switch(env, "I2V_FP8"),
            lora_path=env.get("I2V_LORA_PATH", "").strip() or None,
            group_timeout=_seconds(env, "I2V_GROUP_TIMEOUT_SECONDS", DEFAULT_GROUP_TIMEOUT_SECONDS),
            lora_max_rank=_positive_int(env, "I2V_LORA_MAX_RANK", DEFAULT_MAX_RANK),
            lora_cache=_positive_int(env, "I2V_LORA_CACHE", DEFAULT_CACHE),
        )
