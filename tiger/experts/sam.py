"""SAM ViT image-encoder experts through segment-anything (the ``sam_model_registry`` architecture)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT
from timm.layers import resample_abs_pos_embed_nhwc
from torch import Tensor, nn

from tiger.experts.base import (
    CONFIG_HINT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NO_OFFICIAL_WEIGHTS,
    POS_EMBED_ANTIALIAS,
    Expert,
    ExpertWeightsError,
    existing_path,
    seeded,
    short_reason,
)
from tiger.options import flag

SAM_VIT_B_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
ENCODER_PREFIX = "image_encoder."


@dataclass(frozen=True)
class SamSpec:
    """One SAM image encoder, with the arguments ``segment_anything.build_sam._build_sam`` gives it.

    Attributes:
        default_weights: URL of the official checkpoint (a whole-``Sam`` state dict); None = random (tiny).
    """

    name: str
    default_weights: str | None
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    out_chans: int = 256


SAM_B = SamSpec(
    "sam_b", SAM_VIT_B_URL, embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)
)
SAM_TINY = SamSpec(
    "sam_tiny",
    None,
    embed_dim=32,
    depth=2,
    num_heads=2,
    global_attn_indexes=(1,),
    image_size=128,
    window_size=4,
    out_chans=24,
)


def build_sam_image_encoder(spec: SamSpec) -> ImageEncoderViT:
    """The image encoder exactly as ``sam_model_registry`` builds it (random init)."""
    return ImageEncoderViT(
        depth=spec.depth,
        embed_dim=spec.embed_dim,
        img_size=spec.image_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=spec.num_heads,
        patch_size=spec.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=spec.global_attn_indexes,
        window_size=spec.window_size,
        out_chans=spec.out_chans,
    )


def encoder_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The image-encoder part of a whole-``Sam`` state dict (official .pth files); encoder-only dicts pass."""
    if any(key.startswith(ENCODER_PREFIX) for key in state):
        return {
            key[len(ENCODER_PREFIX) :]: value
            for key, value in state.items()
            if key.startswith(ENCODER_PREFIX)
        }
    return dict(state)


class SamExpert(Expert):
    """SAM image-encoder tokens: the 256-channel neck output by default, or the pre-neck ViT features.

    The absolute position embedding is resampled (bicubic, antialiased unless ``pos_embed_antialias`` is
    False: timm's SAM convention) to the grid on every call; the windowed and global attention blocks
    handle any grid (their relative-position tables resize themselves).
    """

    def __init__(
        self,
        encoder: ImageEncoderViT,
        *,
        name: str,
        identity: dict,
        neck: bool = True,
        pos_embed_antialias: bool = POS_EMBED_ANTIALIAS,
    ) -> None:
        embed_dim = encoder.patch_embed.proj.out_channels
        if not neck:
            encoder.neck = nn.Identity()
        super().__init__(
            encoder,
            name=name,
            patch_size=encoder.patch_embed.proj.kernel_size[0],
            channels=encoder.neck[0].out_channels if neck else embed_dim,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            identity=identity,
        )
        self.pos_embed_antialias = flag(pos_embed_antialias, "pos_embed_antialias")

    def extract(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        encoder = self.backbone
        x = encoder.patch_embed(pixels)  # (B, H, W, C)
        if encoder.pos_embed is not None:
            pos_embed = resample_abs_pos_embed_nhwc(
                encoder.pos_embed, new_size=list(grid), antialias=self.pos_embed_antialias
            )
            x = x + pos_embed.to(x.dtype)
        for block in encoder.blocks:
            x = block(x)
        return encoder.neck(x.permute(0, 3, 1, 2))


def load_sam_state(spec: SamSpec, source: str) -> dict[str, Tensor]:
    """A SAM-format state dict from a local file or the official URL (cached by ``torch.hub``)."""
    if source.startswith(("http://", "https://")):
        file_name = source.rsplit("/", 1)[-1]
        cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
        how = f"download {source} to {cached} {CONFIG_HINT}/{file_name}"
        if not cached.is_file() and os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
            raise ExpertWeightsError(
                f"weights for expert {spec.name!r} are not cached and HF_HUB_OFFLINE is set: {how}"
            )
        try:
            state = torch.hub.load_state_dict_from_url(
                source, map_location="cpu", file_name=file_name, check_hash=False, weights_only=True
            )
        except (OSError, RuntimeError) as error:
            raise ExpertWeightsError(
                f"weights for expert {spec.name!r} could not be fetched ({short_reason(error)}): {how}"
            ) from None
    else:
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as error:
            raise ExpertWeightsError(
                f"weights for expert {spec.name!r}: {source!r} is not a readable SAM checkpoint "
                f"({short_reason(error)})"
            ) from None
    if not isinstance(state, Mapping):
        raise ExpertWeightsError(
            f"weights for expert {spec.name!r}: {source!r} holds a {type(state).__name__}, "
            "expected a state dict"
        )
    return encoder_state_dict(state)


def build_sam_expert(
    spec: SamSpec,
    weights: str | Path | None = "default",
    *,
    seed: int = 0,
    neck: bool = True,
    pos_embed_antialias: bool = POS_EMBED_ANTIALIAS,
) -> SamExpert:
    """Build a SAM image-encoder expert.

    Args:
        spec: architecture and the official checkpoint URL.
        weights: ``"default"`` (official checkpoint; random for tiny), None (random init), or a local
            SAM-format state dict file (a whole ``Sam`` as in ``sam_vit_b_01ec64.pth``, or the encoder alone).
        seed: seed of the random init when no weights are loaded.
        neck: True for the neck output (``out_chans``, 256 for the real models), False for the ViT width.
        pos_embed_antialias: antialiased bicubic resizing of the position table (timm's SAM convention),
            or plain bicubic.
    """
    flag(pos_embed_antialias, "pos_embed_antialias")
    source = spec.default_weights if weights == "default" else weights
    stored = weights
    state = None
    if source is not None:
        if not str(source).startswith(("http://", "https://")):
            path = existing_path(str(source), spec.name, spec.default_weights or NO_OFFICIAL_WEIGHTS)
            if path.is_dir():
                raise ExpertWeightsError(
                    f"weights for expert {spec.name!r}: {str(path)!r} is a folder, give the .pth"
                )
            source = stored = str(path)
        state = load_sam_state(spec, str(source))
    with seeded(seed):
        encoder = build_sam_image_encoder(spec)
    if state is not None:
        try:
            encoder.load_state_dict(state, strict=True)  # names missing, unexpected and mis-shaped keys
        except RuntimeError as error:
            raise ExpertWeightsError(
                f"weights for expert {spec.name!r} from {str(source)!r} do not fit its image encoder: {error}"
            ) from None
    identity = {
        "name": spec.name,
        "weights": stored,
        "seed": seed,
        "neck": neck,
        "pos_embed_antialias": pos_embed_antialias,
    }
    return SamExpert(
        encoder, name=spec.name, identity=identity, neck=neck, pos_embed_antialias=pos_embed_antialias
    )
