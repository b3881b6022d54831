"""Known-answer experts for the routing study (``study_*``): the right answer is known by construction.

Three **specialists** are small convolutional encoders, each pretrained once on the synthetic scenes for one
task group through a linear read-out at the token grid, then frozen (the paper's premise: each foundation
model's pretraining gives it a bias). Their features are an 8-channel bottleneck per token, so each can keep
little beyond what its own group needed:

- ``study_semantics``: semantic classes, human parts and saliency (what an object is),
- ``study_geometry``: depth and surface normals (where surfaces are and how they face),
- ``study_boundary``: object boundaries (where labels change).

Two **distractors** carry no information about the image at all:

- ``study_noise``: fresh standard Gaussian noise at every call,
- ``study_loud``: the same with standard deviation 100 (large in scale, no information), to test the
  paper's claim (Sec. 3.5) that attention can follow feature scale rather than causal contribution.

The specialists' weights are cached on disk (``$TIGER_CACHE``, else ``$XDG_CACHE_HOME/tiger``, else
``~/.cache/tiger``, under ``study_experts/``), never in git, and rebuilt deterministically from the seed when
missing; ``weights`` may also name such a file, or be None for an untrained encoder of the same shape.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tiger.experts import Expert, ExpertWeightsError, register_expert
from tiger.experts.base import IMAGENET_MEAN, IMAGENET_STD, seeded

PRETRAIN_VERSION = 1  # bump when the pretraining recipe changes: old cache files are then not reused
PRETRAIN_SCENE_SEED = 7  # a scene stream of its own, apart from the study's training scenes (seed 0)
BATCH = 8
PRETRAIN_WEIGHTS = {
    "semseg": 1.0,
    "human_parts": 2.0,
    "sal": 5.0,
    "depth": 1.0,
    "normals": 10.0,
    "edge": 50.0,
}


@dataclass(frozen=True)
class StudySpec:
    """One study expert.

    Attributes:
        name: registry name.
        tasks: the task group a specialist is pretrained on; empty for a distractor.
        noise_std: a distractor's noise standard deviation (unused for specialists).
    """

    name: str
    tasks: tuple[str, ...] = ()
    noise_std: float = 1.0

    @property
    def is_distractor(self) -> bool:
        return not self.tasks


STUDY_SEMANTICS = StudySpec("study_semantics", ("semseg", "human_parts", "sal"))
STUDY_GEOMETRY = StudySpec("study_geometry", ("depth", "normals"))
STUDY_BOUNDARY = StudySpec("study_boundary", ("edge",))
STUDY_NOISE = StudySpec("study_noise", noise_std=1.0)
STUDY_LOUD = StudySpec("study_loud", noise_std=100.0)


class StudyEncoder(nn.Module):
    """Four stride-2 3x3 convolutions (16 pixels per token) with GroupNorm and GELU, then a 1x1 bottleneck.

    (B, 3, 16 H, 16 W) normalised images -> (B, channels, H, W).
    """

    patch_size = 16

    def __init__(self, channels: int = 8, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 3
        for _ in range(4):
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.GroupNorm(4, width), nn.GELU()]
            previous = width
        layers.append(nn.Conv2d(width, channels, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.layers(pixels)


class StudyExpert(Expert):
    """A frozen :class:`StudyEncoder` pretrained on one task group."""

    def __init__(self, encoder: StudyEncoder, *, name: str, channels: int, identity: dict) -> None:
        super().__init__(
            encoder,
            name=name,
            patch_size=StudyEncoder.patch_size,
            channels=channels,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            identity=identity,
        )

    def extract(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        return self.backbone(pixels)


class NoiseExpert(Expert):
    """Features that do not depend on the image: N(0, std^2) drawn afresh at every call (global RNG)."""

    def __init__(self, *, name: str, channels: int, std: float, identity: dict) -> None:
        super().__init__(
            nn.Identity(),
            name=name,
            patch_size=StudyEncoder.patch_size,
            channels=channels,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            identity=identity,
        )
        self.noise_std = float(std)

    def extract(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        shape = (pixels.shape[0], self.channels, *grid)
        return self.noise_std * torch.randn(shape, device=pixels.device, dtype=pixels.dtype)


def cache_dir() -> Path:
    """Where the pretrained specialists are kept: ``$TIGER_CACHE``, ``$XDG_CACHE_HOME/tiger`` or
    ``~/.cache/tiger``, then ``study_experts/``."""
    root = os.environ.get("TIGER_CACHE")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tiger")
    return Path(root).expanduser() / "study_experts"


def pretrain_encoder(spec: StudySpec, *, seed: int, channels: int, steps: int) -> dict[str, Tensor]:
    """Pretrain a specialist on its task group of the synthetic scenes; returns the encoder's state dict.

    A linear read-out (1x1 convolution at the token grid, bilinearly upsampled to the image) on top of the
    encoder is trained with the reference per-pixel losses of its tasks (weights :data:`PRETRAIN_WEIGHTS`),
    Adam, lr 2e-3, batch 8, on 256 scenes of 64x80 from their own scene stream; deterministic given the
    seed (the global RNG is left as it was).
    """
    from tiger.data.synthetic import SyntheticScenes  # the study's data: only needed when pretraining
    from tiger.tasks import make_task
    from tiger.training.losses import task_loss

    tasks = [make_task(name, num_classes=SyntheticScenes.num_semseg_classes) for name in spec.tasks]
    scenes = SyntheticScenes(256, (64, 80), spec.tasks, seed=PRETRAIN_SCENE_SEED)
    samples = [scenes[index] for index in range(len(scenes))]
    images = torch.stack([sample["image"] for sample in samples])
    targets = {task.name: torch.stack([sample[task.name] for sample in samples]) for task in tasks}
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with seeded(seed):
        encoder = StudyEncoder(channels)
        readout = nn.Conv2d(channels, sum(task.channels for task in tasks), 1)
        parameters = [*encoder.parameters(), *readout.parameters()]
        optimizer = torch.optim.Adam(parameters, lr=2e-3)
        order = torch.randperm(len(samples) * ((steps * BATCH) // len(samples) + 1)) % len(samples)
        for step in range(steps):
            index = order[step * BATCH : (step + 1) * BATCH]
            logits = readout(encoder((images[index] - mean) / std))
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
            loss = logits.new_zeros(())
            for task, chunk in zip(tasks, logits.split([t.channels for t in tasks], 1), strict=True):
                loss = loss + PRETRAIN_WEIGHTS[task.name] * task_loss(task, chunk, targets[task.name][index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return encoder.state_dict()


def _save_atomically(state: dict[str, Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(file.name, path)


def _load_encoder(path: Path, encoder: StudyEncoder, name: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        encoder.load_state_dict(state, strict=True)
    except Exception as error:
        raise ExpertWeightsError(
            f"weights for expert {name!r}: {path} is not a study encoder of this shape ({error}); delete it "
            "to have it pretrained again, or give weights=null for an untrained encoder"
        ) from error


def build_study_expert(
    spec: StudySpec,
    weights: str | Path | None = "default",
    *,
    seed: int = 0,
    channels: int = 8,
    pretrain_steps: int = 200,
) -> Expert:
    """Build a study expert.

    Args:
        spec: which one.
        weights: specialists: ``"default"`` (the cached pretrained encoder, pretrained now if missing), a
            file written by this module, or None (untrained encoder); distractors: ``"default"`` or None.
        seed: seed of the pretraining (specialists).
        channels: feature channels C_k (the bottleneck width).
        pretrain_steps: optimisation steps of the pretraining.
    """
    if channels < 1 or pretrain_steps < 1:
        raise ValueError(
            f"expert {spec.name!r}: channels and pretrain_steps must be >= 1, got {channels} and "
            f"{pretrain_steps}"
        )
    identity = {"name": spec.name, "weights": weights, "seed": seed, "channels": channels}
    if spec.is_distractor:
        if weights not in ("default", None):
            raise ExpertWeightsError(
                f"expert {spec.name!r} has no weights; give weights=default, got {weights!r}"
            )
        return NoiseExpert(name=spec.name, channels=channels, std=spec.noise_std, identity=identity)
    identity["pretrain_steps"] = pretrain_steps
    with seeded(seed):
        encoder = StudyEncoder(channels)
    if weights == "default":
        path = cache_dir() / f"{spec.name}-v{PRETRAIN_VERSION}-seed{seed}-c{channels}-s{pretrain_steps}.pt"
        if not path.is_file():
            state = pretrain_encoder(spec, seed=seed, channels=channels, steps=pretrain_steps)
            _save_atomically(state, path)
        _load_encoder(path, encoder, spec.name)
    elif weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ExpertWeightsError(
                f"weights for expert {spec.name!r} not found: {str(path)!r} does not exist"
            )
        _load_encoder(path, encoder, spec.name)
    return StudyExpert(encoder, name=spec.name, channels=channels, identity=identity)


@register_expert
def study_semantics(weights: str | Path | None = "default", **options) -> Expert:
    """The semantics specialist (semantic classes, human parts, saliency)."""
    return build_study_expert(STUDY_SEMANTICS, weights, **options)


@register_expert
def study_geometry(weights: str | Path | None = "default", **options) -> Expert:
    """The geometry specialist (depth, surface normals)."""
    return build_study_expert(STUDY_GEOMETRY, weights, **options)


@register_expert
def study_boundary(weights: str | Path | None = "default", **options) -> Expert:
    """The boundary specialist (object boundaries)."""
    return build_study_expert(STUDY_BOUNDARY, weights, **options)


@register_expert
def study_noise(weights: str | Path | None = "default", **options) -> Expert:
    """Unit Gaussian noise, drawn afresh at every call."""
    return build_study_expert(STUDY_NOISE, weights, **options)


@register_expert
def study_loud(weights: str | Path | None = "default", **options) -> Expert:
    """Gaussian noise of standard deviation 100, drawn afresh at every call."""
    return build_study_expert(STUDY_LOUD, weights, **options)
