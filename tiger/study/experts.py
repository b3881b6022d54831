"""Known-answer experts for the routing study (``study_*``): what each can help with is known by construction.

Every **specialist** reads one channel of the factored scenes (:mod:`tiger.study.scenes`), so it cannot see
the cues of the other task groups: they are in other channels and come from independent scenes. Each is a
small convolutional encoder (patch 8, an 8-channel bottleneck per token), pretrained once through a linear
read-out on its group's tasks and frozen (the paper's premise: pretraining gives each foundation model its
bias):

- ``study_semantics``: the class-identity channel; semantic segmentation,
- ``study_geometry``: the fog channel; depth and surface normals,
- ``study_geometry_twin``: the same channel and tasks through another encoder (wider, another seed): the
  same information as ``study_geometry``, so each of the two is redundant given the other,
- ``study_boundary``: the outline channel; object boundaries.

Two **distractors** carry no information about the image at all:

- ``study_noise``: fresh standard Gaussian noise at every call,
- ``study_loud``: the same with standard deviation 100 (large in scale, no information), the paper's
  Sec. 3.5 worry that attention can follow feature scale rather than causal contribution.

:data:`DESIGNED` states which expert should help which task; the study's single-expert baselines check it
(``python -m tiger.study.report``). The specialists' weights are cached on disk (``$TIGER_CACHE``, else
``$XDG_CACHE_HOME/tiger``, else ``~/.cache/tiger``, under ``study_experts/``), never in git, and rebuilt
deterministically from the seed when missing; ``weights`` may also name such a file, or be None for an
untrained encoder of the same shape.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tiger.experts import Expert, ExpertWeightsError, register_expert
from tiger.experts.base import IMAGENET_MEAN, IMAGENET_STD, seeded

PRETRAIN_VERSION = 3  # bump when the pretraining recipe changes: old cache files are then not reused
PRETRAIN_SCENE_SEED = 7  # a scene stream of its own, apart from the study's training scenes (seed 0)
PRETRAIN_SAMPLES = 256
BATCH = 8
PATCH = 8  # pixels per token side: three stride-2 convolutions
PRETRAIN_WEIGHTS = {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0}


@dataclass(frozen=True)
class StudySpec:
    """One study expert.

    Attributes:
        name: registry name.
        cue: the channel a specialist reads (:data:`tiger.study.scenes.CUE_CHANNELS`); None for a distractor.
        tasks: the task group a specialist is pretrained on.
        width: the encoder's convolution width.
        noise_std: a distractor's noise standard deviation.
    """

    name: str
    cue: str | None = None
    tasks: tuple[str, ...] = ()
    width: int = 32
    noise_std: float = 1.0

    @property
    def is_distractor(self) -> bool:
        return self.cue is None


SPECS = {
    spec.name: spec
    for spec in (
        StudySpec("study_semantics", "semantics", ("semseg",)),
        StudySpec("study_geometry", "geometry", ("depth", "normals")),
        StudySpec("study_geometry_twin", "geometry", ("depth", "normals"), width=48),
        StudySpec("study_boundary", "boundary", ("edge",)),
        StudySpec("study_noise", noise_std=1.0),
        StudySpec("study_loud", noise_std=100.0),
    )
}
DESIGNED = {
    "semseg": ("study_semantics",),
    "depth": ("study_geometry", "study_geometry_twin"),
    "normals": ("study_geometry", "study_geometry_twin"),
    "edge": ("study_boundary",),
}
"""Task -> the experts designed to help it (the twin geometry experts share the geometry group)."""
DISTRACTORS = ("study_noise", "study_loud")
REDUNDANT_PAIR = ("study_geometry", "study_geometry_twin")
TWIN_SEED_OFFSET = 1000  # the twin's default seed differs from its sibling's: another encoder


class StudyEncoder(nn.Module):
    """One image channel -> three stride-2 3x3 convolutions (GroupNorm, GELU) -> a 1x1 bottleneck.

    (B, 3, 8 H, 8 W) normalised images -> (B, channels, H, W), reading channel ``cue_channel`` only.
    """

    def __init__(self, cue_channel: int, channels: int = 8, width: int = 32) -> None:
        super().__init__()
        self.cue_channel = cue_channel
        layers: list[nn.Module] = []
        previous = 1
        for _ in range(3):
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.GroupNorm(4, width), nn.GELU()]
            previous = width
        layers.append(nn.Conv2d(width, channels, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.layers(pixels[:, self.cue_channel : self.cue_channel + 1])


class StudyExpert(Expert):
    """A frozen :class:`StudyEncoder` pretrained on one task group."""

    def __init__(self, encoder: StudyEncoder, *, name: str, channels: int, identity: dict) -> None:
        super().__init__(
            encoder,
            name=name,
            patch_size=PATCH,
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
            patch_size=PATCH,
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


def new_encoder(spec: StudySpec, seed: int, channels: int) -> StudyEncoder:
    """The specialist's encoder at its initialisation (deterministic from the seed)."""
    from tiger.study.scenes import CUE_CHANNELS

    with seeded(seed):
        return StudyEncoder(CUE_CHANNELS[spec.cue], channels, spec.width)


def pretrain_encoder(spec: StudySpec, *, seed: int, channels: int, steps: int) -> dict[str, Tensor]:
    """Pretrain a specialist on its task group of the factored scenes; returns the encoder's state dict.

    A linear read-out (1x1 convolution at the token grid, bilinearly upsampled to the image) on top of the
    encoder is trained with the reference per-pixel losses of its tasks (weights :data:`PRETRAIN_WEIGHTS`),
    Adam, lr 2e-3, batch 8, on 256 samples of 64x80 from their own scene stream (600 steps by default);
    deterministic given the seed (the global RNG is left as it was).
    """
    from tiger.tasks import make_task
    from tiger.training.losses import task_loss

    images, targets = pretraining_data()
    tasks = [make_task(name, num_classes=images.num_semseg_classes) for name in spec.tasks]
    images = images.tensor
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    encoder = new_encoder(spec, seed, channels)
    with seeded(seed + 1):
        readout = nn.Conv2d(channels, sum(task.channels for task in tasks), 1)
        optimizer = torch.optim.Adam([*encoder.parameters(), *readout.parameters()], lr=2e-3)
        count = len(images)
        order = torch.randperm(count * ((steps * BATCH) // count + 1)) % count
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


class _Images(NamedTuple):
    tensor: Tensor
    num_semseg_classes: int


@functools.lru_cache(maxsize=1)
def pretraining_data() -> tuple[_Images, dict[str, Tensor]]:
    """The pretraining samples (rendered once per process, shared by the specialists): images
    (N, 3, 64, 80) and {task: targets (N, ...)} of every study task."""
    from tiger.study.scenes import STUDY_TASKS, FactoredScenes  # the study's data: only for pretraining

    scenes = FactoredScenes(PRETRAIN_SAMPLES, (64, 80), STUDY_TASKS, seed=PRETRAIN_SCENE_SEED)
    samples = [scenes[index] for index in range(len(scenes))]
    targets = {task: torch.stack([sample[task] for sample in samples]) for task in STUDY_TASKS}
    images = _Images(torch.stack([sample["image"] for sample in samples]), scenes.num_semseg_classes)
    return images, targets


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
    seed: int | None = None,
    channels: int = 8,
    pretrain_steps: int = 600,
) -> Expert:
    """Build a study expert.

    Args:
        spec: which one.
        weights: specialists: ``"default"`` (the cached pretrained encoder, pretrained now if missing), a
            file written by this module, or None (untrained encoder); distractors: ``"default"`` or None.
        seed: seed of the initialisation and pretraining (default 0; the twin's 1000).
        channels: feature channels C_k (the bottleneck width).
        pretrain_steps: optimisation steps of the pretraining.
    """
    if channels < 1 or pretrain_steps < 1:
        raise ValueError(
            f"expert {spec.name!r}: channels and pretrain_steps must be >= 1, got {channels} and "
            f"{pretrain_steps}"
        )
    if seed is None:
        seed = TWIN_SEED_OFFSET if spec.name.endswith("_twin") else 0
    identity = {"name": spec.name, "weights": weights, "seed": seed, "channels": channels}
    if spec.is_distractor:
        if weights not in ("default", None):
            raise ExpertWeightsError(
                f"expert {spec.name!r} has no weights; give weights=default, got {weights!r}"
            )
        return NoiseExpert(name=spec.name, channels=channels, std=spec.noise_std, identity=identity)
    identity["pretrain_steps"] = pretrain_steps
    encoder = new_encoder(spec, seed, channels)
    if weights == "default":
        stem = f"{spec.name}-v{PRETRAIN_VERSION}-seed{seed}-c{channels}-w{spec.width}-s{pretrain_steps}"
        path = cache_dir() / f"{stem}.pt"
        if not path.is_file():
            _save_atomically(pretrain_encoder(spec, seed=seed, channels=channels, steps=pretrain_steps), path)
        _load_encoder(path, encoder, spec.name)
    elif weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ExpertWeightsError(
                f"weights for expert {spec.name!r} not found: {str(path)!r} does not exist"
            )
        _load_encoder(path, encoder, spec.name)
    return StudyExpert(encoder, name=spec.name, channels=channels, identity=identity)


for _spec in SPECS.values():
    register_expert(functools.partial(build_study_expert, _spec), name=_spec.name)
