"""The model table, what a checkpoint's configs say, and the refusal of a checkpoint that is not the model asked for."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from i2v_worker import demo
from i2v_worker.checkpoint import describe, named_model, read_facts, resolve
from i2v_worker.metadata import ModelInfo
from i2v_worker.models import MODELS, REAL_MODELS, canonical_id, find
from i2v_worker.pipeline import Engine
from i2v_worker.settings import ConfigurationError, Settings

DEMOS = [spec.id for spec in MODELS.values() if spec.is_demo]
H100_GIB = 79.6  # what an 80 GB H100 reports as its total memory
H200_GIB = 139.8
RTX4090_GIB = 23.6


# --- the table ----------------------------------------------------------------------------------------------------


def test_every_real_model_has_a_demo_of_its_architecture() -> None:
    for real in REAL_MODELS:
        twin = MODELS[real.id + "-demo"]
        assert (twin.architecture, twin.fps, twin.max_frames, twin.infer_steps, twin.guidance_scale) == (
            real.architecture, real.fps, real.max_frames, real.infer_steps, real.guidance_scale,
        )  # fmt: skip
        assert twin.is_demo and not real.is_demo and twin.memory is None and real.memory is not None
        assert len(twin.sizes) == len(real.sizes)
        multiple = 32 if real.architecture == "wan2.2-ti2v" else 16
        for width, height in real.sizes + twin.sizes:
            assert width % multiple == 0 and height % multiple == 0


def test_the_published_facts_of_each_model() -> None:
    rows = {
        spec.id: (spec.sizes[0], spec.max_frames, spec.fps, spec.last_image, spec.experts, spec.flow_shift)
        for spec in REAL_MODELS
    }
    assert rows == {
        "wan2.1-i2v-14b-480p": ((832, 480), 121, 16, "none", 1, 3.0),
        "wan2.1-i2v-14b-720p": ((1280, 720), 121, 16, "none", 1, 5.0),
        "wan2.1-flf2v-14b-720p": ((1280, 720), 121, 16, "required", 1, 16.0),
        "wan2.2-i2v-a14b": ((1280, 720), 121, 16, "optional", 2, 5.0),
        "wan2.2-ti2v-5b": ((1280, 704), 121, 24, "none", 1, 5.0),
    }


def test_memory_plans_fit_their_cards() -> None:
    """Wan2.1 keeps every model on an 80 GB H100; the A14B offloads its idle expert there but not on an H200;
    TI2V-5B needs offload on a 24 GB card and then fits it."""
    for spec in REAL_MODELS:
        plan = spec.memory
        assert plan is not None and plan.offload_gib < plan.resident_gib and plan.resident_gib > plan.weights_gib
        card = {80: H100_GIB, 24: RTX4090_GIB}[plan.card_gib]
        assert min(plan.resident_gib, plan.offload_gib) < card
    needs = {spec.id: spec.memory.needs_offload(H100_GIB) for spec in REAL_MODELS if spec.memory}
    assert needs == {
        "wan2.1-i2v-14b-480p": False, "wan2.1-i2v-14b-720p": False, "wan2.1-flf2v-14b-720p": False,
        "wan2.2-i2v-a14b": True, "wan2.2-ti2v-5b": False,
    }  # fmt: skip
    a14b, ti2v = MODELS["wan2.2-i2v-a14b"].memory, MODELS["wan2.2-ti2v-5b"].memory
    assert a14b is not None and ti2v is not None
    assert not a14b.needs_offload(H200_GIB)
    assert ti2v.needs_offload(RTX4090_GIB) and ti2v.offload_gib < RTX4090_GIB
    assert MODELS["wan2.2-i2v-a14b"].bytes_per_token(offload=True) is not None
    assert MODELS["wan2.2-i2v-a14b-demo"].bytes_per_token(offload=False) is None


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "wan2.1-i2v-14b-480p"),
        ("/models/Wan2.1-I2V-14B-720P", "wan2.1-i2v-14b-720p"),
        ("/hf/hub/models--Wan-AI--Wan2.1-FLF2V-14B-720P-diffusers/snapshots/0123abcd", "wan2.1-flf2v-14b-720p"),
        ("Wan-AI/Wan2.2-I2V-A14B-Diffusers", "wan2.2-i2v-a14b"),
        ("/data/Wan2.2-TI2V-5B", "wan2.2-ti2v-5b"),
        ("/data/models/wan2.2-ti2v-5b-demo", "wan2.2-ti2v-5b-demo"),
        ("/data/models/wan2.1-i2v-demo", "wan2.1-i2v-14b-480p-demo"),
        ("/data/models/my-finetune", None),
    ],
)
def test_a_checkpoint_name_names_its_model(name: str, model: str | None) -> None:
    spec = named_model(name)
    assert (spec.id if spec else None) == model


def test_ids_are_found_in_any_case_and_by_their_old_names() -> None:
    assert canonical_id(" Wan2.1-I2V-14B-480P ") == "wan2.1-i2v-14b-480p"
    assert find("wan2.1-i2v-demo") is MODELS["wan2.1-i2v-14b-480p-demo"]
    assert find("Wan2.2-TI2V-5B-Diffusers") is MODELS["wan2.2-ti2v-5b"]
    assert find("wan3") is None


# --- the demo checkpoints' configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", DEMOS)
def test_each_demo_checkpoint_says_what_it_is(model: str, demo_checkpoints: Callable[[str], Path]) -> None:
    path = demo_checkpoints(model)
    facts = read_facts(path)
    spec = MODELS[model]
    assert facts.architecture == spec.architecture and facts.model_id == model
    expected = {
        "wan2.1-i2v": ("WanImageToVideoPipeline", 1, None, False, 16, 16, True),
        "wan2.1-flf2v": ("WanImageToVideoPipeline", 1, None, False, 16, 16, True),
        "wan2.2-a14b": ("WanImageToVideoPipeline", 2, 0.9, False, 16, 16, False),
        "wan2.2-ti2v": ("WanPipeline", 1, None, True, 48, 32, False),
    }[spec.architecture]
    assert (
        facts.pipeline_class, facts.experts, facts.boundary_ratio, facts.expand_timesteps, facts.latent_channels,
        facts.size_multiple, facts.image_encoder,
    ) == expected  # fmt: skip
    written = ModelInfo.from_dict(json.loads((path / "i2v_model.json").read_text()))
    assert written == describe(spec, facts)
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) < 1_000_000


def test_demo_list_and_an_unknown_demo(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert demo.main(["--list"]) == 0
    assert capsys.readouterr().out.split() == DEMOS
    with pytest.raises(SystemExit, match=r"wan2\.2-i2v-a14b is not a demo model"):
        demo.main(["--model", "wan2.2-i2v-a14b", "--output", str(tmp_path / "x")])


# --- which model, from which checkpoint ---------------------------------------------------------------------------


def test_the_model_comes_from_i2v_model_or_the_checkpoint(demo_checkpoints: Callable[[str], Path]) -> None:
    path = demo_checkpoints("wan2.2-i2v-a14b-demo")
    assert resolve(Settings(model_path=str(path))).spec.id == "wan2.2-i2v-a14b-demo"
    assert resolve(Settings(model_path=str(path), model="WAN2.2-I2V-A14B-DEMO")).spec.id == "wan2.2-i2v-a14b-demo"


def test_a_checkpoint_that_names_nothing_is_its_architectures_model(
    demo_checkpoints: Callable[[str], Path], tmp_path: Path
) -> None:
    plain = tmp_path / "checkpoint"
    shutil.copytree(demo_checkpoints("wan2.2-ti2v-5b-demo"), plain)
    (plain / "i2v_model.json").unlink()
    assert resolve(Settings(model_path=str(plain))).spec.id == "wan2.2-ti2v-5b"


def test_a_demo_id_alone_builds_its_checkpoint(tmp_path: Path) -> None:
    resolved = resolve(Settings(model="wan2.1-i2v-14b-720p-demo", demo_dir=str(tmp_path)))
    assert resolved.path == (tmp_path / "wan2.1-i2v-14b-720p-demo").resolve()
    assert resolved.spec.id == "wan2.1-i2v-14b-720p-demo" and demo.is_complete(resolved.path)


@pytest.mark.parametrize(
    ("model", "checkpoint", "reason"),
    [
        ("wan2.2-i2v-a14b-demo", "wan2.1-i2v-14b-480p-demo",
         "is wan2.1-i2v-14b-480p-demo (by its i2v_model.json), not I2V_MODEL=wan2.2-i2v-a14b-demo"),
        ("wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-480p-demo",
         "is wan2.1-i2v-14b-480p-demo (by its i2v_model.json), not I2V_MODEL=wan2.1-i2v-14b-480p"),
        ("wan3-i2v", "wan2.1-i2v-14b-480p-demo", "I2V_MODEL=wan3-i2v is not a model this worker knows"),
    ],
)  # fmt: skip
def test_a_checkpoint_of_another_model_is_refused(
    model: str, checkpoint: str, reason: str, demo_checkpoints: Callable[[str], Path]
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(reason)):
        resolve(Settings(model=model, model_path=str(demo_checkpoints(checkpoint))))


def _edit(path: Path, relative: str, **changes: object) -> None:
    file = path / relative
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


def _broken(name: str, source: Path, root: Path) -> Path:
    copy = root / name
    shutil.copytree(source, copy)
    (copy / "i2v_model.json").unlink()  # let the configs alone say what it is
    return copy


@pytest.mark.parametrize(
    ("model", "damage", "reason"),
    [
        ("wan2.2-i2v-a14b-demo", lambda p: (p / "model_index.json").write_text("{not json"),
         "model_index.json cannot be read"),
        ("wan2.2-i2v-a14b-demo", lambda p: (p / "model_index.json").unlink(), "is not a Diffusers checkpoint"),
        ("wan2.2-i2v-a14b-demo", lambda p: shutil.rmtree(p / "transformer_2"), "transformer_2/config.json is missing"),
        ("wan2.2-i2v-a14b-demo", lambda p: _edit(p, "model_index.json", boundary_ratio=None),
         "has transformer_2 but no boundary_ratio"),
        ("wan2.2-ti2v-5b-demo", lambda p: _edit(p, "vae/config.json", z_dim=16),
         "its VAE has 16 latent channels, not 48"),
        ("wan2.1-i2v-14b-480p-demo", lambda p: _edit(p, "transformer/config.json", in_channels=16),
         r"takes 16 input channels, not 36 \(a text-to-video transformer\?\)"),
        ("wan2.1-flf2v-14b-720p-demo", lambda p: _edit(p, "transformer/config.json", pos_embed_seq_len=40),
         "embeds 40 image tokens, not the first and last frames' 2 x 17"),
        ("wan2.1-i2v-14b-480p-demo", lambda p: _edit(p, "model_index.json", _class_name="FluxPipeline"),
         "is a FluxPipeline checkpoint, not a Wan one"),
    ],
    ids=["bad-json", "no-index", "no-expert-2", "no-boundary", "wrong-vae", "t2v-transformer", "flf2v-tokens",
         "not-wan"],
)  # fmt: skip
def test_a_corrupt_checkpoint_is_refused_before_loading(
    model: str,
    damage: Callable[[Path], object],
    reason: str,
    demo_checkpoints: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    broken = _broken("broken", demo_checkpoints(model), tmp_path)
    damage(broken)
    with pytest.raises(ConfigurationError, match=reason):
        resolve(Settings(model_path=str(broken)))


def test_corrupt_weights_are_refused_at_load(demo_checkpoints: Callable[[str], Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(demo_checkpoints("wan2.2-i2v-a14b-demo"), broken)
    weights = broken / "transformer_2" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConfigurationError, match=r"cannot be loaded as wan2\.2-i2v-a14b-demo: .*"):
        Engine.load(Settings(model_path=str(broken), device="cpu"))


def test_a_missing_directory_is_a_load_failure_not_a_refusal(tmp_path: Path) -> None:
    """A volume may be mounted late: a restart can help, so this is not a ConfigurationError."""
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        resolve(Settings(model_path=str(tmp_path / "nope")))
