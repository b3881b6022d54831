"""TIGER: frozen experts -> projection -> expert interaction -> instruction-guided routing -> task
interaction -> shared decoder -> task heads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from tiger.model.config import TigerConfig
from tiger.model.instructions import TaskRepresentation
from tiger.model.nn import (
    ExpertProjection,
    HyperQueryProjection,
    QueryEncoder,
    SetAttention,
    SharedDecoder,
    TaskHeads,
    TokenRouter,
)
from tiger.tasks import Task

REMOVALS = ("subtract", "renormalize", "mean")


@dataclass
class TigerOutput:
    """One forward pass.

    Attributes:
        predictions: {task: logits (B, C_task, H0, W0)}.
        alpha: routing weights alpha_{k,n}(t), (B, T, M, N), summing to one over M.
        tokens: F'_k after expert interaction, (B, M, N, d).
        fused: routed tokens f_n(t), (B, T, N, d).
        grid: the token grid (H, W), N = H W.
    """

    predictions: dict[str, Tensor]
    alpha: Tensor
    tokens: Tensor
    fused: Tensor
    grid: tuple[int, int]

    def take(self, count: int) -> TigerOutput:
        """The pass of the first ``count`` images of the batch."""
        return TigerOutput(
            predictions={name: x[:count] for name, x in self.predictions.items()},
            alpha=self.alpha[:count],
            tokens=self.tokens[:count],
            fused=self.fused[:count],
            grid=self.grid,
        )


def remove_experts(
    output: TigerOutput, removed: Tensor, removal: str = "subtract", eps: float = 1e-6
) -> Tensor:
    """The routed tokens with sets of experts removed: (B, T, V, N, d), one variant per row of ``removed``.

    Eq. 8's f^(-k) is the variant that removes expert k alone (:meth:`TIGER.counterfactual`); the
    Shapley credit of :mod:`tiger.analysis.routing` removes every subset.

    Args:
        output: a forward pass.
        removed: (V, M) 0/1, the experts each variant removes.
        removal: ``subtract``: f - sum_{k removed} alpha_k F'_k (the other weights unchanged);
            ``renormalize``: the same divided by 1 - sum_{k removed} alpha_k (the remaining weights sum to
            one); ``mean``: mean ablation, each removed expert's tokens replaced by their mean over the
            batch's tokens, f - sum_{k removed} alpha_k (F'_k - mean_{b,n} F'_k). A variant that removes
            every expert routes nothing (zero tokens) under ``subtract`` and ``renormalize``, and the mean
            tokens under ``mean``.
        eps: floor of the remaining weight for ``renormalize``.
    """
    if removal not in REMOVALS:
        raise ValueError(f"removal must be one of {REMOVALS}, got {removal!r}")
    experts = output.alpha.shape[2]
    if removed.ndim != 2 or removed.shape[1] != experts:
        raise ValueError(f"removed must be (V, M={experts}), got {tuple(removed.shape)}")
    mask = removed.to(output.tokens.dtype)
    tokens = output.tokens
    if removal == "mean":
        tokens = tokens - tokens.mean((0, 2), keepdim=True)
    weighted = output.alpha[..., None] * tokens[:, None]  # alpha_k F'_k: (B, T, M, N, d)
    variants = output.fused[:, :, None] - torch.einsum("vm,btmnd->btvnd", mask, weighted)
    everything = mask.sum(1) == experts  # (V,)
    if removal == "renormalize":
        gone = torch.einsum("vm,btmn->btvn", mask, output.alpha)[..., None]
        variants = variants / (1.0 - gone).clamp_min(eps)
    if removal != "mean" and bool(everything.any()):
        variants = variants.masked_fill(everything[None, None, :, None, None], 0.0)
    return variants


class TIGER(nn.Module):
    """Task-Instruction-Guided Expert Routing over frozen vision experts.

    Args:
        experts: frozen experts; each maps (images (B,3,H0,W0) in [0,1], grid) to (B, C_k, H, W) and has
            ``name``, ``channels``, ``patch_size`` and ``identity`` attributes (see :mod:`tiger.experts`).
        tasks: the task entries, in output order (``config.tasks``).
        config: the sizes and switches (:class:`tiger.model.config.TigerConfig`, checked there).
        instruction_embeddings: Sentence-BERT t0 (T, d_t), or None for learnable task embeddings only.
    """

    def __init__(
        self,
        experts: Sequence[nn.Module],
        tasks: Sequence[Task],
        config: TigerConfig,
        instruction_embeddings: Tensor | None,
    ) -> None:
        super().__init__()
        if len(experts) != len(config.experts):
            raise ValueError(f"got {len(experts)} experts for the {len(config.experts)} of the config")
        if [task.name for task in tasks] != list(config.tasks):
            raise ValueError(f"tasks {[task.name for task in tasks]} differ from the config's {config.tasks}")
        self.config = config
        self.tasks = list(tasks)
        self.grid = config.grid
        self.experts = nn.ModuleList(experts)
        dim, heads = config.dim, config.num_heads
        self.projections = nn.ModuleList(
            ExpertProjection(expert.channels, dim, config.projection_hidden) for expert in experts
        )
        self.expert_interaction = (
            SetAttention(len(experts), dim, heads, config.expert_interaction_layers)
            if config.expert_interaction
            else None
        )
        self.task_representation = TaskRepresentation(instruction_embeddings, len(tasks), config.task_dim)
        self.query_encoder = QueryEncoder(dim, config.query_width)
        self.hyper = HyperQueryProjection(dim, self.task_representation.dim, config.rank, config.hyper_hidden)
        self.router = TokenRouter()
        self.task_interaction = (
            SetAttention(len(tasks), dim, heads, config.task_interaction_layers)
            if config.task_interaction
            else None
        )
        self.decoder = SharedDecoder(dim, config.decoder_width, config.decoder_upsamples)
        self.heads = TaskHeads(tasks, self.decoder.out_channels)

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    @property
    def expert_names(self) -> list[str]:
        return [expert.name for expert in self.experts]

    def encode(self, images: Tensor, grid: tuple[int, int] | None = None) -> list[Tensor]:
        """images (B, 3, H0, W0) in [0, 1] -> frozen expert features [(B, C_k, H, W)]."""
        check_images(images)
        grid = grid or self.grid
        with torch.no_grad():
            return [expert(images, grid) for expert in self.experts]

    def route(
        self, images: Tensor, features: Sequence[Tensor], grid: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Project, let experts interact, and route them per task and token (eq. 2-7).

        Returns tokens F'_k (B, M, N, d), routed tokens f (B, T, N, d) and alpha (B, T, M, N).
        """
        tokens = torch.stack([proj(f) for proj, f in zip(self.projections, features, strict=True)], 1)
        if self.expert_interaction is not None:
            tokens = self.expert_interaction(tokens)
        queries = self.hyper(self.query_encoder(images, grid), self.task_representation())
        fused, alpha = self.router(queries, tokens)
        return tokens, fused, alpha

    def decode(self, fused: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> dict[str, Tensor]:
        """Everything downstream of routing: routed tokens (B, T, N, d) -> {task: logits (B, C, *size)}."""
        if self.task_interaction is not None:
            fused = self.task_interaction(fused)
        return self.heads(self.decoder(fused, grid), size)

    def forward(
        self, images: Tensor, grid: tuple[int, int] | None = None, size: tuple[int, int] | None = None
    ) -> TigerOutput:
        """images (B, 3, H0, W0) RGB in [0, 1] -> logits at ``size`` (default (H0, W0)) and routing weights.

        ``grid`` overrides the token grid (the experts interpolate their position embeddings).
        """
        grid = grid or self.grid
        tokens, fused, alpha = self.route(images, self.encode(images, grid), grid)
        predictions = self.decode(fused, grid, size or (images.shape[-2], images.shape[-1]))
        return TigerOutput(predictions=predictions, alpha=alpha, tokens=tokens, fused=fused, grid=grid)

    @torch.no_grad()
    def counterfactual(
        self, output: TigerOutput, removal: str = "subtract", eps: float = 1e-6
    ) -> dict[str, Tensor]:
        """Predictions with each expert removed in turn (eq. 8's counterfactual forward), no autograd.

        Returns:
            {task: logits (B, M, C_task, H0, W0)}: index k along M is the prediction without expert k (see
            :func:`remove_experts` for ``removal``).
        """
        experts = output.alpha.shape[2]
        return self.ablate(output, torch.eye(experts, device=output.alpha.device), removal, eps)

    @torch.no_grad()
    def ablate(
        self, output: TigerOutput, removed: Tensor, removal: str = "subtract", eps: float = 1e-6
    ) -> dict[str, Tensor]:
        """Predictions with sets of experts removed (:func:`remove_experts`), no autograd.

        Everything downstream of routing is re-run once, batched over the V variants; the expert features
        and routed tokens of ``output`` are reused.

        Args:
            output: a forward pass of this model.
            removed: (V, M) 0/1, the experts each variant removes.

        Returns:
            {task: logits (B, V, C_task, H0, W0)}.
        """
        variants = removed.shape[0]
        tokens = rearrange(remove_experts(output, removed, removal, eps), "b t v n d -> (v b) t n d")
        size = next(iter(output.predictions.values())).shape[-2:]
        logits = self.decode(tokens, output.grid, tuple(size))
        return {name: rearrange(x, "(v b) c h w -> b v c h w", v=variants) for name, x in logits.items()}


def check_images(images: Tensor) -> None:
    """Raise a clear error unless ``images`` is a float batch (B, 3, H0, W0)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}")
