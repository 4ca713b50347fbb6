"""A checkpoint: where it is, what its config files say it is, and whether that is the model the worker serves.

Only JSON config files are read here, before any weight is loaded, so a checkpoint that cannot be read or is not
the model asked for is refused at once, saying what is wrong, rather than after minutes of loading or in the first
job. Those refusals are `ConfigurationError`s: a restart with the same checkpoint would fail the same way.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .metadata import MODEL_INFO_FILE, MemoryEstimate, ModelInfo
from .models import ALIASES, ARCHITECTURES, MODELS, PIPELINE_CLASS, Architecture, ModelSpec, find, for_architecture
from .settings import ConfigurationError, Settings

logger = logging.getLogger("i2v_worker")

# The pipeline classes a Wan image-to-video checkpoint may name: TI2V-5B's names the text-to-video one.
WAN_PIPELINES = (PIPELINE_CLASS, "WanPipeline")
REQUIRED_COMPONENTS = ("tokenizer", "text_encoder", "vae", "scheduler", "transformer")
DEMO_DIR = Path("~/.cache/i2v-server/demo-models")


@dataclass(frozen=True, kw_only=True)
class CheckpointFacts:
    """What a checkpoint's config files say."""

    path: Path
    pipeline_class: str
    experts: int  # transformers: `transformer`, and `transformer_2` for the A14B
    boundary_ratio: float | None  # model_index.json: where `transformer_2` takes over
    expand_timesteps: bool  # model_index.json: TI2V's per-token timesteps
    image_encoder: bool
    image_dim: int | None  # the transformer's image embedding width (None: it takes no image embeddings)
    image_tokens: int | None  # tokens the image encoder makes per image
    image_embed_tokens: int | None  # the transformer's image position embedding length (FLF2V: two images)
    latent_channels: int  # the VAE's z_dim
    spatial_scale: int
    temporal_scale: int
    patch_size: tuple[int, int, int]
    in_channels: int  # the transformer's input channels
    model_id: str | None  # what the checkpoint's i2v_model.json names it

    @property
    def size_multiple(self) -> int:
        """Frame sides must be multiples of the VAE's spatial scale times the transformer's patch."""
        return self.spatial_scale * max(self.patch_size[1], self.patch_size[2])

    @property
    def architecture(self) -> Architecture:
        """The architecture these configs describe; refuses a checkpoint whose parts do not fit together."""
        where = f"checkpoint {self.path}"
        if self.experts == 2:
            if self.boundary_ratio is None:
                raise ConfigurationError(f"{where} has transformer_2 but no boundary_ratio in model_index.json")
            architecture: Architecture = "wan2.2-a14b"
        elif self.expand_timesteps:
            architecture = "wan2.2-ti2v"
        elif self.image_embed_tokens is not None:
            architecture = "wan2.1-flf2v"
        elif self.image_encoder:
            architecture = "wan2.1-i2v"
        else:
            raise ConfigurationError(
                f"{where} has no image conditioning (no image encoder, one transformer, no expand_timesteps):"
                " a text-to-video checkpoint?"
            )
        expected = ARCHITECTURES[architecture]
        problems: list[str] = []
        if self.latent_channels != expected.latent_channels:
            problems.append(f"its VAE has {self.latent_channels} latent channels, not {expected.latent_channels}")
        if self.spatial_scale != expected.spatial_scale:
            problems.append(f"its VAE scales frames by {self.spatial_scale}, not {expected.spatial_scale}")
        channels = self.latent_channels if expected.expand_timesteps else 2 * self.latent_channels + 4
        if self.in_channels != channels:
            problems.append(
                f"its transformer takes {self.in_channels} input channels, not {channels}"
                + (" (a text-to-video transformer?)" if self.in_channels == self.latent_channels else "")
            )
        if self.image_encoder != expected.image_encoder:
            problems.append("it has an image encoder" if self.image_encoder else "it has no image encoder")
        if expected.image_encoder and self.image_dim is None:
            problems.append("its transformer takes no image embeddings")
        if architecture == "wan2.1-flf2v" and self.image_tokens and self.image_embed_tokens != 2 * self.image_tokens:
            problems.append(
                f"its transformer embeds {self.image_embed_tokens} image tokens, not the first and last frames'"
                f" 2 x {self.image_tokens}"
            )
        if problems:
            raise ConfigurationError(f"{where} is not a working {architecture} checkpoint: {'; '.join(problems)}")
        return architecture


def _read_json(root: Path, relative: str) -> dict[str, Any]:
    file = root / relative
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"checkpoint {root} is incomplete: {relative} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"checkpoint {root}: {relative} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"checkpoint {root}: {relative} is not a JSON object")
    return data


def _has(index: dict[str, Any], name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None


def _number(config: dict[str, Any], name: str, default: int | None) -> int | None:
    value = config.get(name, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def read_facts(path: Path) -> CheckpointFacts:
    """The facts of the Diffusers checkpoint directory `path`, from its config files."""
    if not (path / "model_index.json").is_file():
        raise ConfigurationError(f"{path} is not a Diffusers checkpoint: it has no model_index.json")
    index = _read_json(path, "model_index.json")
    pipeline_class = index.get("_class_name")
    if pipeline_class not in WAN_PIPELINES:
        raise ConfigurationError(
            f"checkpoint {path} is a {pipeline_class} checkpoint, not a Wan one ({' or '.join(WAN_PIPELINES)})"
        )
    missing = [name for name in REQUIRED_COMPONENTS if not _has(index, name)]
    if missing:
        raise ConfigurationError(f"checkpoint {path} has no {', '.join(missing)} in model_index.json")
    transformer = _read_json(path, "transformer/config.json")
    vae = _read_json(path, "vae/config.json")
    experts = 1
    if _has(index, "transformer_2"):
        second = _read_json(path, "transformer_2/config.json")
        if second.get("in_channels") != transformer.get("in_channels"):
            raise ConfigurationError(f"checkpoint {path}: transformer and transformer_2 take different inputs")
        experts = 2
    image_encoder = _has(index, "image_encoder")
    image_tokens = None
    if image_encoder:
        clip = _read_json(path, "image_encoder/config.json")
        size, patch = _number(clip, "image_size", None), _number(clip, "patch_size", None)
        image_tokens = (size // patch) ** 2 + 1 if size and patch else None  # the patches and the class token
    patch_size = transformer.get("patch_size") or [1, 2, 2]
    boundary = index.get("boundary_ratio")
    model_id = None
    if (path / MODEL_INFO_FILE).is_file():
        named = _read_json(path, MODEL_INFO_FILE).get("id")
        model_id = named if isinstance(named, str) and named else None
    return CheckpointFacts(
        path=path,
        pipeline_class=str(pipeline_class),
        experts=experts,
        boundary_ratio=float(boundary) if isinstance(boundary, (int, float)) else None,
        expand_timesteps=index.get("expand_timesteps") is True,
        image_encoder=image_encoder,
        image_dim=_number(transformer, "image_dim", None),
        image_tokens=image_tokens,
        image_embed_tokens=_number(transformer, "pos_embed_seq_len", None),
        latent_channels=_number(vae, "z_dim", 16) or 16,
        spatial_scale=_number(vae, "scale_factor_spatial", 8) or 8,
        temporal_scale=_number(vae, "scale_factor_temporal", 4) or 4,
        patch_size=(int(patch_size[0]), int(patch_size[1]), int(patch_size[2])),
        in_channels=_number(transformer, "in_channels", 16) or 16,
        model_id=model_id,
    )


def named_model(text: str) -> ModelSpec | None:
    """The model a checkpoint's name (a directory, a hub id, a hub cache path) names, if it names one of ours: the
    ids are the checkpoints' repository names in lower case (`Wan2.2-TI2V-5B-Diffusers` is `wan2.2-ti2v-5b`)."""
    lowered = text.lower()
    names = [*MODELS, *ALIASES]
    for name in sorted(names, key=len, reverse=True):  # a demo's id contains its real model's
        if name in lowered:
            return find(name)
    return None


def check(spec: ModelSpec, facts: CheckpointFacts) -> None:
    """Refuses a checkpoint that is not of `spec`'s architecture."""
    architecture = facts.architecture
    if architecture != spec.architecture:
        raise ConfigurationError(
            f"checkpoint {facts.path} is a {architecture} checkpoint, not {spec.id} ({spec.architecture})"
        )
    if spec.experts == 2 and facts.boundary_ratio is not None and not 0 < facts.boundary_ratio < 1:
        raise ConfigurationError(f"checkpoint {facts.path}: boundary_ratio {facts.boundary_ratio} is not within (0, 1)")


def describe(spec: ModelSpec, facts: CheckpointFacts) -> ModelInfo:
    """What the worker serves, for `ready` and a demo checkpoint's i2v_model.json."""
    memory = spec.memory
    return ModelInfo(
        id=spec.id,
        native_area=spec.native_area,
        size_multiple=facts.size_multiple,
        fps=spec.fps,
        sizes=tuple(f"{width}x{height}" for width, height in spec.sizes),
        max_frames=spec.max_frames,
        last_image=spec.last_image,
        experts=facts.experts,
        boundary_ratio=facts.boundary_ratio,
        default_infer_steps=spec.infer_steps,
        default_guidance_scale=spec.guidance_scale,
        default_guidance_scale_2=spec.guidance_scale_2,
        memory_gib=None if memory is None else MemoryEstimate(
            resident_gib=memory.resident_gib, offload_gib=memory.offload_gib
        ),
    )  # fmt: skip


def _is_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and not os.path.isabs(text)


def _download(repo_id: str) -> Path:
    from diffusers import DiffusionPipeline

    return Path(DiffusionPipeline.download(repo_id))


def demo_path(settings: Settings, spec: ModelSpec) -> Path:
    return Path(settings.demo_dir or DEMO_DIR).expanduser() / spec.id


def locate(settings: Settings, requested: ModelSpec | None) -> Path:
    """The local checkpoint directory to load: `I2V_MODEL_PATH` (a directory, or a hub id, downloaded), else the
    requested model's demo (built on first use) or its hub checkpoint. A demo's path is built when it is not there.
    A directory that does not exist (and is not a demo's) is an error that a restart may not repeat (a volume
    mounted late), so it is not a ConfigurationError."""
    from . import demo

    given = settings.model_path
    if given is not None:
        path = Path(given).expanduser()
        if requested is not None and requested.is_demo:
            demo.ensure(path, model=requested.id)
        if path.is_dir():
            return path.resolve()
        if not _is_hub_id(given):
            raise FileNotFoundError(f"no such checkpoint directory: {path}")
        return _download(given)
    if requested is None:
        raise ConfigurationError("I2V_MODEL_PATH is not set: set it, or I2V_MODEL to a model id")
    if requested.is_demo:
        path = demo_path(settings, requested)
        demo.ensure(path, model=requested.id)
        return path.resolve()
    assert requested.checkpoint is not None
    return _download(requested.checkpoint)


@dataclass(frozen=True, kw_only=True)
class Resolved:
    spec: ModelSpec
    facts: CheckpointFacts

    @property
    def path(self) -> Path:
        return self.facts.path


def resolve(settings: Settings) -> Resolved:
    """Which model the worker serves and from which checkpoint, checked against each other.

    `I2V_MODEL` names the model; without it the checkpoint does (its i2v_model.json, else its name), and a
    checkpoint that names nothing is taken for the first model of its architecture."""
    requested = None
    if settings.model is not None:
        requested = find(settings.model)
        if requested is None:
            raise ConfigurationError(
                f"I2V_MODEL={settings.model} is not a model this worker knows: {', '.join(MODELS)}"
            )
    facts = read_facts(locate(settings, requested))
    named, source = None, ""
    if facts.model_id is not None:
        named, source = find(facts.model_id), f"its {MODEL_INFO_FILE}"
        if named is None:
            logger.warning("%s names an unknown model %r: ignored", facts.path / MODEL_INFO_FILE, facts.model_id)
    if named is None:
        named, source = named_model(settings.model_path or str(facts.path)), "its name"
    if requested is not None and named is not None and named.id != requested.id:
        raise ConfigurationError(f"checkpoint {facts.path} is {named.id} (by {source}), not I2V_MODEL={requested.id}")
    spec = requested or named or for_architecture(facts.architecture, demo=False)
    check(spec, facts)
    return Resolved(spec=spec, facts=facts)
