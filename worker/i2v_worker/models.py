"""The models a worker can serve: one row per model, for the real checkpoints and their tiny `-demo` twins.

What a checkpoint's own configuration says (its architecture, the VAE's scale factors and so the size multiple,
the expert boundary, whether it expands timesteps) is read from the checkpoint (checkpoint.py) and checked against
the row's architecture. What no config file says (the sizes and frame counts the model was trained at, its frame
rate, the sampling defaults its authors publish, and what it needs in memory) is here.

Every model runs through diffusers' `WanImageToVideoPipeline`, including TI2V-5B: its checkpoint names
`WanPipeline` (text-to-video), whose call takes no image; the image-to-video pipeline loads the same components and
conditions on the first frame through `expand_timesteps`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .metadata import LastImage

Architecture = Literal["wan2.1-i2v", "wan2.1-flf2v", "wan2.2-a14b", "wan2.2-ti2v"]

PIPELINE_CLASS = "WanImageToVideoPipeline"
DEMO_SUFFIX = "-demo"
DEFAULT_MODEL = "wan2.1-i2v-14b-480p"
GIB = 1 << 30
RESIDENT_SHARE = 0.95  # of a card's memory the every-model-on-the-GPU plan may fill, by estimate

# Ids that older checkpoints and servers use for a model of this table.
ALIASES = {"wan2.1-i2v-demo": "wan2.1-i2v-14b-480p-demo"}


@dataclass(frozen=True, kw_only=True)
class ArchitectureFacts:
    """What a checkpoint of an architecture has, as its config files say it (checked at start)."""

    experts: int  # transformers: 2 for the A14B's high- and low-noise experts
    image_encoder: bool  # a CLIP image encoder whose embeddings go into cross-attention (Wan2.1)
    expand_timesteps: bool  # TI2V: the first frame is kept clean by a per-token timestep
    latent_channels: int  # the VAE's z_dim
    spatial_scale: int  # the VAE's spatial compression
    last_image: LastImage


ARCHITECTURES: dict[Architecture, ArchitectureFacts] = {
    "wan2.1-i2v": ArchitectureFacts(
        experts=1, image_encoder=True, expand_timesteps=False, latent_channels=16, spatial_scale=8, last_image="none"
    ),
    # The image embedding has a position embedding over two images' tokens: the first and the last frame.
    "wan2.1-flf2v": ArchitectureFacts(
        experts=1,
        image_encoder=True,
        expand_timesteps=False,
        latent_channels=16,
        spatial_scale=8,
        last_image="required",
    ),
    # Conditions on frames through the VAE latents and a mask only, so a last frame is one more masked frame.
    "wan2.2-a14b": ArchitectureFacts(
        experts=2,
        image_encoder=False,
        expand_timesteps=False,
        latent_channels=16,
        spatial_scale=8,
        last_image="optional",
    ),
    # The pipeline's expanded-timestep path conditions on the first frame only and ignores a last one.
    "wan2.2-ti2v": ArchitectureFacts(
        experts=1, image_encoder=False, expand_timesteps=True, latent_channels=48, spatial_scale=16, last_image="none"
    ),
}


@dataclass(frozen=True, kw_only=True)
class MemoryPlan:
    """GPU memory of a real model in bf16 (image encoder and VAE in fp32), at its first size and its most frames.
    Estimates from parameter counts and activation sizes, not measurements: check them on your hardware.

    `resident_gib`: the peak with every model kept on the GPU. `offload_gib`: the peak with diffusers' model CPU
    offload, which keeps on the GPU only the model that runs (the text encoder goes back to the CPU after encoding;
    the A14B's idle expert waits on the CPU). `weights_gib`: all weights, the host memory offload needs."""

    weights_gib: float
    resident_gib: float
    offload_gib: float
    stays: str  # what stays on the GPU under the plan a card of `card_gib` gets (README)
    card_gib: int  # the card the plan is written for

    def needs_offload(self, total_gib: float) -> bool:
        """Whether a card of `total_gib` needs model CPU offload: the resident peak would not fit it."""
        return self.resident_gib > total_gib * RESIDENT_SHARE


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    id: str
    architecture: Architecture
    checkpoint: str | None  # the Diffusers checkpoint on the hub; None: a demo, built locally
    sizes: tuple[tuple[int, int], ...]  # (width, height) it was trained at; the first is what `auto` aims at
    max_frames: int  # the most frames a job may ask for (4k+1)
    fps: int
    flow_shift: float  # the sampler's shift its authors use
    infer_steps: int
    guidance_scale: float
    guidance_scale_2: float | None = None  # the low-noise expert's guidance (two experts only)
    memory: MemoryPlan | None = None  # None: a demo, small on any device
    # The clip length the model was trained at and the memory plan is figured for. The 14B models were trained at
    # 81 frames but make longer clips too, and the service has always taken up to 121 (`num_frames` 120), so
    # `max_frames` stays there and only the plan is at 81.
    planned_frames: int = 81

    @property
    def native_area(self) -> int:
        width, height = self.sizes[0]
        return width * height

    @property
    def facts(self) -> ArchitectureFacts:
        return ARCHITECTURES[self.architecture]

    @property
    def last_image(self) -> LastImage:
        return self.facts.last_image

    @property
    def experts(self) -> int:
        return self.facts.experts

    @property
    def is_demo(self) -> bool:
        return self.checkpoint is None

    def bytes_per_token(self, *, offload: bool) -> int | None:
        """The memory plan's estimate of what a job needs per latent token on top of what stays on the GPU after
        loading (with offload: nothing, so the running model's weights count too), at the first size and planned
        frames. None for a demo."""
        if self.memory is None:
            return None
        width, height = self.sizes[0]
        extra = self.memory.offload_gib if offload else self.memory.resident_gib - self.memory.weights_gib
        return int(extra * GIB / tokens(width, height, self.planned_frames))


def tokens(width: int, height: int, frames: int) -> int:
    """Latent tokens of a job as the protocol counts them (`memory.bytes_per_token`): the Wan2.1 VAE's 8x and the
    transformer's 2x2 patches, whatever the model's own scale."""
    return (width // 16) * (height // 16) * ((frames - 1) // 4 + 1)


_480P = ((832, 480), (480, 832))
_720P = ((1280, 720), (720, 1280))

# Parameters: a Wan2.1 I2V/FLF2V transformer 16.4 B (30.6 GiB in bf16; the image cross-attention included), an A14B
# expert 14.3 B (26.6 GiB), the TI2V-5B transformer 5.0 B (9.3 GiB), UMT5-XXL 5.7 B (10.6 GiB), CLIP ViT-H 0.63 B in
# fp32 (2.4 GiB), the Wan2.1 VAE in fp32 0.5 GiB, the Wan2.2 VAE in fp32 2.6 GiB. Peaks add activations at the
# first size and most frames (the transformer's or the VAE decode's, whichever is larger: about 6 GiB at 480P,
# 12 GiB at 720P, 6 GiB for TI2V-5B at 1280x704x121) and 2 GiB of CUDA context and allocator slack.
REAL_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="wan2.1-i2v-14b-480p", architecture="wan2.1-i2v", checkpoint="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        sizes=_480P, max_frames=121, fps=16, flow_shift=3.0, infer_steps=40, guidance_scale=5.0,
        memory=MemoryPlan(weights_gib=44.1, resident_gib=52.1, offload_gib=38.6, card_gib=80,
                          stays="everything (transformer, UMT5, CLIP, VAE)"),
    ),
    ModelSpec(
        id="wan2.1-i2v-14b-720p", architecture="wan2.1-i2v", checkpoint="Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
        sizes=_720P, max_frames=121, fps=16, flow_shift=5.0, infer_steps=40, guidance_scale=5.0,
        memory=MemoryPlan(weights_gib=44.1, resident_gib=58.1, offload_gib=44.6, card_gib=80,
                          stays="everything (transformer, UMT5, CLIP, VAE)"),
    ),
    ModelSpec(
        id="wan2.1-flf2v-14b-720p", architecture="wan2.1-flf2v", checkpoint="Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers",
        sizes=_720P, max_frames=121, fps=16, flow_shift=16.0, infer_steps=50, guidance_scale=5.0,
        memory=MemoryPlan(weights_gib=44.1, resident_gib=58.1, offload_gib=44.6, card_gib=80,
                          stays="everything (transformer, UMT5, CLIP, VAE)"),
    ),
    ModelSpec(
        id="wan2.2-i2v-a14b", architecture="wan2.2-a14b", checkpoint="Wan-AI/Wan2.2-I2V-A14B-Diffusers",
        sizes=_720P + _480P, max_frames=121, fps=16, flow_shift=5.0, infer_steps=40, guidance_scale=3.5,
        guidance_scale_2=3.5,
        memory=MemoryPlan(weights_gib=64.3, resident_gib=78.3, offload_gib=40.6, card_gib=80,
                          stays="the running expert and the VAE; UMT5 only while encoding, the idle expert on the CPU"),
    ),
    ModelSpec(
        id="wan2.2-ti2v-5b", architecture="wan2.2-ti2v", checkpoint="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        sizes=((1280, 704), (704, 1280)), max_frames=121, planned_frames=121, fps=24, flow_shift=5.0, infer_steps=50,
        guidance_scale=5.0,
        memory=MemoryPlan(weights_gib=22.5, resident_gib=30.5, offload_gib=14.0, card_gib=24,
                          stays="the running model: UMT5 while encoding, then the transformer, then the VAE"),
    ),
)  # fmt: skip

# The demos' sizes: small frames of the real models' shapes, multiples of their size multiple (16, TI2V 32).
_DEMO_480P = ((160, 96), (96, 160))
_DEMO_720P = ((224, 128), (128, 224))
_DEMO_SIZES = {
    "wan2.1-i2v-14b-480p": _DEMO_480P,
    "wan2.1-i2v-14b-720p": _DEMO_720P,
    "wan2.1-flf2v-14b-720p": _DEMO_720P,
    "wan2.2-i2v-a14b": _DEMO_720P + _DEMO_480P,
    "wan2.2-ti2v-5b": _DEMO_720P,
}


def _demo(spec: ModelSpec) -> ModelSpec:
    return replace(spec, id=spec.id + DEMO_SUFFIX, checkpoint=None, sizes=_DEMO_SIZES[spec.id], memory=None)


MODELS: dict[str, ModelSpec] = {
    spec.id: spec for real in REAL_MODELS for spec in (real, _demo(real))
}  # fmt: skip


def canonical_id(name: str) -> str:
    """A model id as the table spells it: lower case, without a `-diffusers` suffix, aliases resolved."""
    key = name.strip().lower().removesuffix("-diffusers")
    return ALIASES.get(key, key)


def find(name: str) -> ModelSpec | None:
    return MODELS.get(canonical_id(name))


def for_architecture(architecture: Architecture, *, demo: bool) -> ModelSpec:
    """The model a checkpoint of `architecture` is taken for when nothing names it: the first of the table."""
    return next(s for s in MODELS.values() if s.architecture == architecture and s.is_demo == demo)
