"""What a worker serves, as the protocol's `ready.model` and a demo checkpoint's `i2v_model.json` carry it.

Older readers know only `id`, `native_area`, `size_multiple` and `fps`; every later field has a default, so a
description from an older worker (or an older demo checkpoint's file) still reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

MODEL_INFO_FILE = "i2v_model.json"

LastImage = Literal["none", "optional", "required"]
LAST_IMAGE: tuple[str, ...] = get_args(LastImage)


@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    """A real model's estimated GPU peak (GiB) at its first size and most frames: every model on the GPU
    (`resident_gib`), or only the running one (`offload_gib`)."""

    resident_gib: float
    offload_gib: float


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    id: str
    native_area: int  # the pixel area `auto` aims at: the first of `sizes`
    size_multiple: int  # width and height must be multiples of it
    fps: int
    sizes: tuple[str, ...] = ()  # "WxH" sizes the model was trained at
    max_frames: int | None = None  # the most frames (4k+1) it makes; None: not said (older workers)
    last_image: LastImage = "none"  # whether a job may (optional) or must (required) give a last frame
    experts: int = 1  # 2: the A14B's high- and low-noise transformers
    boundary_ratio: float | None = None  # two experts: the low-noise one takes over below this share of the schedule
    default_infer_steps: int | None = None
    default_guidance_scale: float | None = None
    default_guidance_scale_2: float | None = None  # two experts: the low-noise expert's guidance
    memory_gib: MemoryEstimate | None = None  # None: a demo (small anywhere) or not said

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sizes"] = list(self.sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        def value(name: str, kind: type | tuple[type, ...], *, required: bool = False) -> Any:
            item = data.get(name)
            if item is None and not required:
                return None
            if not isinstance(item, kind) or isinstance(item, bool):
                raise ValueError(f"model info: {name!r} has the wrong type: {item!r}")
            return item

        fields: dict[str, Any] = {
            "id": value("id", str, required=True),
            "native_area": value("native_area", int, required=True),
            "size_multiple": value("size_multiple", int, required=True),
            "fps": value("fps", int, required=True),
        }
        if fields["native_area"] <= 0 or fields["size_multiple"] <= 0 or fields["fps"] <= 0:
            raise ValueError(f"model info: sizes must be positive, got {data!r}")
        sizes = data.get("sizes") or []
        if not isinstance(sizes, list) or not all(isinstance(s, str) for s in sizes):
            raise ValueError(f"model info: 'sizes' must be a list of \"WxH\" strings, got {sizes!r}")
        last_image = data.get("last_image", "none")
        if last_image not in LAST_IMAGE:
            raise ValueError(f"model info: 'last_image' must be one of {', '.join(LAST_IMAGE)}, got {last_image!r}")
        memory = data.get("memory_gib")
        if memory is not None:
            peaks = [memory.get(name) for name in ("resident_gib", "offload_gib")] if isinstance(memory, dict) else []
            if len(peaks) != 2 or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in peaks):
                raise ValueError(f"model info: 'memory_gib' must hold resident_gib and offload_gib, got {memory!r}")
            memory = MemoryEstimate(resident_gib=float(peaks[0]), offload_gib=float(peaks[1]))
        experts = value("experts", int) or 1
        numbers = (int, float)
        return cls(
            **fields,
            sizes=tuple(sizes),
            max_frames=value("max_frames", int),
            last_image=cast(LastImage, last_image),
            experts=experts,
            boundary_ratio=_float(value("boundary_ratio", numbers)),
            default_infer_steps=value("default_infer_steps", int),
            default_guidance_scale=_float(value("default_guidance_scale", numbers)),
            default_guidance_scale_2=_float(value("default_guidance_scale_2", numbers)),
            memory_gib=memory,
        )


def _float(number: float | None) -> float | None:
    return None if number is None else float(number)
