"""What a checkpoint serves: its model id, native pixel area, size multiple and frame rate."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MODEL_INFO_FILE = "i2v_model.json"

AREA_480P = 832 * 480  # 399,360
AREA_720P = 1280 * 720  # 921,600

_WAN_NAME = re.compile(r"(Wan[\d.]+-I2V-[A-Za-z0-9.]+-(480|720)P)(-Diffusers)?", re.IGNORECASE)


@dataclass(frozen=True)
class ModelInfo:
    id: str
    native_area: int
    size_multiple: int
    fps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        fields: dict[str, Any] = {}
        for name, kind in (("id", str), ("native_area", int), ("size_multiple", int), ("fps", int)):
            value = data.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"model info: {name!r} must be {kind.__name__}, got {value!r}")
            fields[name] = value
        if fields["native_area"] <= 0 or fields["size_multiple"] <= 0 or fields["fps"] <= 0:
            raise ValueError(f"model info: sizes must be positive, got {data!r}")
        return cls(**fields)


def infer_model_info(model_path: str, size_multiple: int = 16) -> ModelInfo:
    """Model info of a real Wan checkpoint from its name (a hub id, a directory, or a hub cache path)."""
    match = _WAN_NAME.search(model_path)
    if match is None:
        raise ValueError(
            f"cannot tell which model {model_path!r} is: expected a Wan2.1 I2V 480P/720P checkpoint name "
            f"or a {MODEL_INFO_FILE} file in the checkpoint directory"
        )
    area = AREA_720P if match.group(2) == "720" else AREA_480P
    return ModelInfo(id=match.group(1), native_area=area, size_multiple=size_multiple, fps=16)


def read_model_info(model_path: str) -> ModelInfo:
    """`i2v_model.json` from a local checkpoint directory when it has one, else inferred from the name."""
    path = Path(model_path)
    info_file = path / MODEL_INFO_FILE
    if path.is_dir() and info_file.is_file():
        data = json.loads(info_file.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{info_file}: expected a JSON object")
        return ModelInfo.from_dict(data)
    return infer_model_info(str(path.resolve()) if path.is_dir() else model_path)
