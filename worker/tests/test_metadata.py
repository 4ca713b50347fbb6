from __future__ import annotations

import json
from pathlib import Path

import pytest

from i2v_worker.metadata import MODEL_INFO_FILE, ModelInfo, infer_model_info, read_model_info


@pytest.mark.parametrize(
    ("path", "model_id", "area"),
    [
        ("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "Wan2.1-I2V-14B-480P", 399360),
        ("Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", "Wan2.1-I2V-14B-720P", 921600),
        ("/models/Wan2.1-I2V-14B-480P", "Wan2.1-I2V-14B-480P", 399360),
        ("/hf/hub/models--Wan-AI--Wan2.1-I2V-14B-720P-Diffusers/snapshots/0123abcd", "Wan2.1-I2V-14B-720P", 921600),
    ],
)
def test_infers_real_checkpoints_from_their_name(path: str, model_id: str, area: int) -> None:
    assert infer_model_info(path) == ModelInfo(id=model_id, native_area=area, size_multiple=16, fps=16)


def test_unknown_name_without_metadata_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=MODEL_INFO_FILE):
        read_model_info(str(tmp_path))


def test_metadata_file_wins(tmp_path: Path) -> None:
    checkpoint = tmp_path / "Wan2.1-I2V-14B-720P-Diffusers"
    checkpoint.mkdir()
    info = ModelInfo(id="custom", native_area=1024, size_multiple=16, fps=24)
    (checkpoint / MODEL_INFO_FILE).write_text(json.dumps(info.to_dict()))
    assert read_model_info(str(checkpoint)) == info


def test_bad_metadata_file(tmp_path: Path) -> None:
    (tmp_path / MODEL_INFO_FILE).write_text(
        json.dumps({"id": "x", "native_area": "big", "size_multiple": 16, "fps": 16})
    )
    with pytest.raises(ValueError, match="native_area"):
        read_model_info(str(tmp_path))
