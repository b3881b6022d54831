"""CLIP ViT experts through open_clip (OpenAI weights need the ``-quickgelu`` architectures)."""

from __future__ import annotations

import copy
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transformer import VisionTransformer
from timm.layers import resample_abs_pos_embed
from torch import Tensor

from tiger.experts.base import (
    CONFIG_HINT,
    NO_OFFICIAL_WEIGHTS,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    POS_EMBED_ANTIALIAS,
    Expert,
    ExpertWeightsError,
    find_weights_file,
    hub_cache,
    local_weights,
    seeded,
    short_reason,
    tokens_to_map,
)
from tiger.options import flag

# open_clip checkpoint names inside a folder (hf-hub layout), most preferred first
CHECKPOINT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)


@dataclass(frozen=True)
class ClipSpec:
    """One CLIP expert: an open_clip architecture, its default pretrained tag and config overrides.

    Attributes:
        name: registry name.
        arch: open_clip model name, e.g. ``"ViT-B-16-quickgelu"``.
        default_weights: pretrained tag used for ``weights="default"``; None = random init (tiny).
        overrides: keyword overrides of the open_clip model config (``create_model(**overrides)``).
    """

    name: str
    arch: str
    default_weights: str | None
    overrides: dict[str, Any] = field(default_factory=dict)


CLIP_B16 = ClipSpec("clip_b16", "ViT-B-16-quickgelu", "openai")
CLIP_L14 = ClipSpec("clip_l14", "ViT-L-14-quickgelu", "openai")
CLIP_TINY = ClipSpec(
    "clip_tiny",
    "ViT-B-16-quickgelu",
    None,
    {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    },
)


def official_clip_weights(spec: ClipSpec) -> str:
    if spec.default_weights is None:
        return NO_OFFICIAL_WEIGHTS
    return f"open_clip.create_model({spec.arch!r}, pretrained={spec.default_weights!r})"


class ClipExpert(Expert):
    """Patch tokens of an open_clip VisionTransformer after ``ln_post`` (width, not the projection).

    The learned absolute position embedding is resampled (bicubic, antialiased unless
    ``pos_embed_antialias`` is False: open_clip's ``resize_pos_embed`` convention) to the token grid on
    every call; the stored parameter is left untouched.
    """

    def __init__(
        self,
        visual: VisionTransformer,
        *,
        name: str,
        identity: dict,
        pos_embed_antialias: bool = POS_EMBED_ANTIALIAS,
    ) -> None:
        if not isinstance(visual, VisionTransformer):
            raise ValueError(
                f"expert {name!r} needs an open_clip VisionTransformer, got {type(visual).__name__}"
            )
        if visual.attn_pool is not None or visual.patch_size[0] != visual.patch_size[1]:
            raise ValueError(f"expert {name!r}: attention pooling and non-square patches are not supported")
        visual.proj = None  # the joint-embedding projection is unused: tokens keep the width
        super().__init__(
            visual,
            name=name,
            patch_size=visual.patch_size[0],
            channels=visual.conv1.out_channels,
            mean=OPENAI_CLIP_MEAN,
            std=OPENAI_CLIP_STD,
            identity=identity,
        )
        self.pos_embed_antialias = flag(pos_embed_antialias, "pos_embed_antialias")

    def extract(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        visual = self.backbone
        tokens = visual.conv1(pixels).flatten(2).transpose(1, 2)  # (B, H W, C)
        cls = visual.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        pos_embed = resample_abs_pos_embed(
            visual.positional_embedding.unsqueeze(0),
            new_size=list(grid),
            old_size=list(visual.grid_size),
            num_prefix_tokens=1,
            antialias=self.pos_embed_antialias,
        )
        x = torch.cat([cls, tokens], dim=1) + pos_embed.to(tokens.dtype)
        x = visual.transformer(visual.ln_pre(x))
        return tokens_to_map(visual.ln_post(x[:, 1:]), grid)


def build_clip_expert(
    spec: ClipSpec,
    weights: str | Path | None = "default",
    *,
    seed: int = 0,
    pos_embed_antialias: bool = POS_EMBED_ANTIALIAS,
) -> ClipExpert:
    """Build a CLIP expert through ``open_clip.create_model`` (its own checkpoint loading and conversion).

    Args:
        spec: architecture and default weights.
        weights: ``"default"`` (the spec's pretrained tag; random for tiny), None (random init), an
            open_clip pretrained tag, or a local open_clip checkpoint file (or a folder holding one). An
            OpenAI TorchScript ``.pt`` is refused with the name of the open_clip file of the same weights.
        seed: seed of the random init when no weights are loaded.
        pos_embed_antialias: antialiased bicubic resizing of the position table (open_clip's convention),
            or plain bicubic.
    """
    flag(pos_embed_antialias, "pos_embed_antialias")
    source = spec.default_weights if weights == "default" else weights
    identity: dict[str, Any] = {
        "name": spec.name,
        "weights": weights,
        "seed": seed,
        "pos_embed_antialias": pos_embed_antialias,
    }
    pretrained: str | None = None
    from_file = False
    if source is not None:
        path = local_weights(str(source), spec.name, official_clip_weights(spec))
        if path is not None:
            pretrained = str(find_weights_file(path, CHECKPOINT_NAMES, spec.name) if path.is_dir() else path)
            identity["weights"] = str(path)
            from_file = True
            if is_torchscript_archive(Path(pretrained)):
                raise ExpertWeightsError(torchscript_hint(spec, pretrained))
        else:
            tags = open_clip.list_pretrained_tags_by_model(spec.arch)
            if source not in tags:
                raise ExpertWeightsError(
                    f"weights for expert {spec.name!r}: {source!r} is neither a local file nor an open_clip "
                    f"pretrained tag of {spec.arch} (tags: {tags})"
                )
            pretrained = str(source)
    try:
        with seeded(seed):
            model = open_clip.create_model(spec.arch, pretrained=pretrained, **copy.deepcopy(spec.overrides))
    except (RuntimeError, OSError, KeyError, ValueError) as error:
        if pretrained is None:
            raise
        if from_file:
            raise ExpertWeightsError(
                f"weights for expert {spec.name!r}: {pretrained!r} is not an open_clip checkpoint of "
                f"{spec.arch} ({short_reason(error, lines=4)})"
            ) from None
        raise ExpertWeightsError(
            f"weights for expert {spec.name!r} could not be loaded from open_clip tag {pretrained!r} "
            f"({short_reason(error)}). Download them on a machine with internet with "
            f"open_clip.create_model({spec.arch!r}, pretrained={pretrained!r}) "
            f"(cached under {hub_cache()}) "
            f"{CONFIG_HINT}/open_clip_pytorch_model.bin"
        ) from None
    return ClipExpert(
        model.visual, name=spec.name, identity=identity, pos_embed_antialias=pos_embed_antialias
    )


def is_torchscript_archive(path: Path) -> bool:
    """A ``torch.jit.save`` archive (the format of OpenAI's CLIP release files) rather than a state dict."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def torchscript_hint(spec: ClipSpec, file: str) -> str:
    """What to do with an OpenAI TorchScript ``.pt``: open_clip reads it only with ``torch.load(...,
    weights_only=False)``, which runs code from the file; the hub holds the same weights as a state dict."""
    hub = (open_clip.get_pretrained_cfg(spec.arch, "openai") or {}).get("hf_hub", "").strip("/")
    where = f"`hf download {hub} open_clip_pytorch_model.bin`, " if hub else ""
    return (
        f"weights for expert {spec.name!r}: {file!r} is a TorchScript archive (OpenAI's CLIP release "
        "format), which open_clip reads only with torch.load(weights_only=False), running code from the "
        f"file; it is not loaded. Give the same weights as an open_clip state dict instead: {where}the file "
        "open_clip itself loads for pretrained='openai', then experts.<role>.weights=/path/to/"
        "open_clip_pytorch_model.bin"
    )
