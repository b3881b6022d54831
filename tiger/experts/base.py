"""The frozen-expert interface shared by every vision foundation model family (eq. 1)."""

from __future__ import annotations

import operator
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CONFIG_HINT = "or give a local copy in the config: experts.<role>.weights=/path"
TIMM_PREFIX = "timm:"  # expert names "timm:<model_name>" (tiger.experts.timm_expert)

POS_EMBED_ANTIALIAS = True
"""Default ``pos_embed_antialias`` of the experts that resize a position table themselves (CLIP, SAM):
antialiased bicubic, as open_clip's ``resize_pos_embed`` and timm's ``resample_abs_pos_embed`` (timm's
SAM too) do; False gives plain bicubic, the way transformers resizes DINOv2's and OWLv2's."""
NO_OFFICIAL_WEIGHTS = "none, this tiny expert is random (weights=default, seeded by its seed option)"


class ExpertWeightsError(RuntimeError):
    """The weights an expert asked for cannot be found or loaded (offline hub, missing or wrong file)."""


class Expert(nn.Module):
    """Frozen expert: forward(images (B,3,H0,W0) float RGB in [0,1], grid (H, W)) -> features (B, C, H, W).

    Subclasses wrap a library backbone and implement :meth:`extract`, which receives the resized and
    normalised images (B, 3, H p, W p) and returns the patch tokens (B, C, H, W).

    Attributes:
        name: registry name, e.g. ``"dinov2_l14"``.
        patch_size: p_k, pixels per token side.
        channels: C_k.
        mean, std: the expert's own per-channel normalisation (3 floats each).
        identity: ``{"name": ..., "weights": ..., **options}``; ``build_expert(**identity)`` rebuilds it.
        backbone: the frozen library module.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        name: str,
        patch_size: int,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        identity: dict,
    ) -> None:
        super().__init__()
        self.name = name
        self.patch_size = int(patch_size)
        self.channels = int(channels)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.identity = dict(identity)
        self.backbone = backbone
        self.register_buffer("pixel_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Expert:
        """Experts stay in eval mode whatever a parent module asks for."""
        return super().train(False)

    def extract(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        """Resized, normalised images (B, 3, H p, W p) -> patch tokens (B, C, H, W)."""
        raise NotImplementedError

    def forward(self, images: Tensor, grid: Sequence[int]) -> Tensor:
        """images (B, 3, H0, W0) float RGB in [0, 1], grid (H, W) -> features (B, C, H, W), no autograd."""
        height, width = check_grid(grid, images)
        size = (height * self.patch_size, width * self.patch_size)
        with torch.no_grad():
            pixels = images.to(self.pixel_mean.dtype)
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)  # eq. 1
            pixels = (pixels - self.pixel_mean) / self.pixel_std
            features = self.extract(pixels, (height, width))
        expected = (images.shape[0], self.channels, height, width)
        if tuple(features.shape) != expected:
            raise RuntimeError(
                f"expert {self.name!r} returned features of shape {tuple(features.shape)}, "
                f"expected {expected}: (images, its channels, its input size {size} divided by its "
                f"patch size {self.patch_size})"
            )
        return features

    def extra_repr(self) -> str:
        return f"name={self.name!r}, patch_size={self.patch_size}, channels={self.channels}"


class ModuleExpert(Expert):
    """Any feature extractor as a frozen expert: ``backbone`` maps normalised images (B, 3, H p, W p) to a
    feature map (B, C, H, W) (a CNN's output at total stride p, a ViT's patch tokens as a map, ...).

    A backbone that returns several maps gives its last one: the last of a list or tuple (timm's
    ``features_only`` models) or the last value of a dict (torchvision's ``create_feature_extractor``).
    """

    def extract(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        features = self.backbone(pixels)
        if isinstance(features, Mapping):
            features = list(features.values())
        if isinstance(features, Sequence):
            features = features[-1]
        return features


def check_grid(grid: Sequence[int], images: Tensor) -> tuple[int, int]:
    """Validate images (B, 3, H0, W0) and a token grid (H, W) the image can fill; returns (H, W)."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"experts expect RGB images of shape (B, 3, H0, W0), got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"experts expect float images in [0, 1], got dtype {images.dtype}")
    try:
        height, width = (operator.index(v) for v in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be two integers (H, W), got {grid!r}") from None
    image_height, image_width = images.shape[-2:]
    if height < 1 or width < 1:
        raise ValueError(f"grid (H, W) must be at least (1, 1), got {(height, width)}")
    if height > image_height or width > image_width:
        raise ValueError(
            f"grid {(height, width)} has more tokens per side than the image {(image_height, image_width)} "
            "has pixels"
        )
    return height, width


def tokens_to_map(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """Row-major patch tokens (B, H W, C) -> feature map (B, C, H, W)."""
    return rearrange(tokens, "b (h w) c -> b c h w", h=grid[0], w=grid[1])


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (random weight init) under a fixed CPU seed without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".npz")


def looks_like_path(weights: str) -> bool:
    """A weights string meant as a file or folder rather than a hub id or tag."""
    return (
        os.path.isabs(weights)
        or weights.startswith(("./", "../", "~", ".\\"))
        or weights.lower().endswith(WEIGHT_SUFFIXES)
    )


def local_weights(weights: str, expert: str, official: str) -> Path | None:
    """The local file or folder ``weights`` names, or None when it reads as a hub id or pretrained tag.

    Raises:
        ExpertWeightsError: the string is meant as a path (absolute, ./, ~, a checkpoint suffix) but
            does not exist.
    """
    if looks_like_path(weights) or Path(weights).expanduser().exists():
        return existing_path(weights, expert, official)
    return None


def existing_path(weights: str, expert: str, official: str) -> Path:
    """The local file or folder ``weights`` names.

    Args:
        weights: the user's weights string.
        expert: expert name, for the error message.
        official: where the official weights come from, for the error message.

    Raises:
        ExpertWeightsError: naming the path when it does not exist.
    """
    path = Path(weights).expanduser()
    if not path.exists():
        raise ExpertWeightsError(
            f"weights for expert {expert!r} not found: {str(path)!r} does not exist. "
            f"Give an existing path in the config (experts.<role>.weights=/path); official: {official}"
        )
    return path.resolve()


def find_weights_file(folder: Path, names: Sequence[str], expert: str) -> Path:
    """The first of ``names`` present in ``folder``; a clear error when none is."""
    for file_name in names:
        if (folder / file_name).is_file():
            return folder / file_name
    raise ExpertWeightsError(
        f"weights for expert {expert!r}: folder {str(folder)!r} holds none of {list(names)}; "
        "give the checkpoint file itself"
    )


def hub_cache() -> str:
    """Where the Hugging Face hub caches downloads (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``~/.cache/huggingface/hub``), as huggingface_hub itself resolves it."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def short_reason(error: BaseException, limit: int = 400, lines: int = 1) -> str:
    """The first lines of an exception, for error messages that should not carry the whole stack."""
    text = " ".join(line.strip() for line in str(error).strip().splitlines()[:lines])
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(error).__name__}: {text}"
