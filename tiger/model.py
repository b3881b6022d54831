"""TIGER: frozen experts -> projection -> expert interaction -> instruction-guided routing -> task
interaction -> shared decoder -> task heads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from tiger import options
from tiger.instructions import TaskRepresentation
from tiger.nn import (
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


def remove_expert(output: TigerOutput, removal: str = "subtract", eps: float = 1e-6) -> Tensor:
    """The routed tokens with each expert's contribution removed in turn: (B, T, M, N, d) (eq. 8's f^(-k)).

    Args:
        output: a forward pass.
        removal: ``subtract``: f - alpha_k F'_k (the other weights unchanged); ``renormalize``: the same
            divided by 1 - alpha_k (the remaining weights sum to one); ``mean``: mean ablation, expert k's
            tokens replaced by their mean over the batch's tokens, f - alpha_k (F'_k - mean_{b,n} F'_k).
        eps: floor of 1 - alpha_k for ``renormalize``.
    """
    if removal not in REMOVALS:
        raise ValueError(f"removal must be one of {REMOVALS}, got {removal!r}")
    alpha = output.alpha.unsqueeze(-1)  # (B, T, M, N, 1)
    tokens = output.tokens[:, None]  # (B, 1, M, N, d)
    if removal == "mean":
        tokens = tokens - tokens.mean((0, 3), keepdim=True)
    removed = output.fused[:, :, None] - alpha * tokens
    if removal == "renormalize":
        removed = removed / (1.0 - alpha).clamp_min(eps)
    return removed


class TIGER(nn.Module):
    """Task-Instruction-Guided Expert Routing over frozen vision experts.

    Args:
        experts: frozen experts; each maps (images (B,3,H0,W0) in [0,1], grid) to (B, C_k, H, W) and has
            ``channels`` and ``identity`` attributes (see :mod:`tiger.experts`).
        tasks: the tasks, in output order.
        grid: the shared token grid (H, W).
        instruction_embeddings: Sentence-BERT t0 (T, d_t), or None for learnable task embeddings only.
        dim: shared token width d.
        task_dim: d_t when ``instruction_embeddings`` is None.
        rank: rank r of the hyper-network (eq. 4).
        hyper_hidden: hidden width of g and h (eq. 4).
        query_width: channels of the query encoder.
        expert_interaction: expert-interactive attention before routing (Sec. 3.4).
        task_interaction: task-interactive attention after routing (Sec. 3.4).
        expert_interaction_layers: transformer layers of the expert interaction (before routing: run once
            per step).
        task_interaction_layers: transformer layers of the task interaction (after routing: re-run for each
            expert by the counterfactual objective, so it costs M times more there).
        num_heads: attention heads in each interaction module.
        decoder_width: channels of the shared decoder's first block.
        decoder_upsamples: 2x upsampling stages of the shared decoder.
        projection_hidden: hidden width of the eq. 2 FFN (default 2 d).
    """

    def __init__(
        self,
        experts: Sequence[nn.Module],
        tasks: Sequence[Task],
        grid: Sequence[int],
        instruction_embeddings: Tensor | None,
        *,
        dim: int = 256,
        task_dim: int = 384,
        rank: int = 16,
        hyper_hidden: int = 256,
        query_width: int = 64,
        expert_interaction: bool = True,
        task_interaction: bool = True,
        expert_interaction_layers: int = 1,
        task_interaction_layers: int = 1,
        num_heads: int = 8,
        decoder_width: int = 256,
        decoder_upsamples: int = 2,
        projection_hidden: int | None = None,
    ) -> None:
        super().__init__()
        if not experts:
            raise ValueError("TIGER needs at least one expert")
        if not tasks:
            raise ValueError("TIGER needs at least one task")
        names = [task.name for task in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate task names in {names}")
        check_options(
            grid,
            dim=dim,
            task_dim=task_dim,
            rank=rank,
            hyper_hidden=hyper_hidden,
            query_width=query_width,
            expert_interaction=expert_interaction,
            task_interaction=task_interaction,
            expert_interaction_layers=expert_interaction_layers,
            task_interaction_layers=task_interaction_layers,
            num_heads=num_heads,
            decoder_width=decoder_width,
            decoder_upsamples=decoder_upsamples,
            projection_hidden=projection_hidden,
        )
        self.tasks = list(tasks)
        self.grid = (int(grid[0]), int(grid[1]))
        self.experts = nn.ModuleList(experts)
        self.projections = nn.ModuleList(
            ExpertProjection(expert.channels, dim, projection_hidden) for expert in experts
        )
        self.expert_interaction = (
            SetAttention(len(experts), dim, num_heads, expert_interaction_layers)
            if expert_interaction
            else None
        )
        self.task_representation = TaskRepresentation(instruction_embeddings, len(tasks), task_dim)
        self.query_encoder = QueryEncoder(dim, query_width)
        self.hyper = HyperQueryProjection(dim, self.task_representation.dim, rank, hyper_hidden)
        self.router = TokenRouter()
        self.task_interaction = (
            SetAttention(len(tasks), dim, num_heads, task_interaction_layers) if task_interaction else None
        )
        self.decoder = SharedDecoder(dim, decoder_width, decoder_upsamples)
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

        Everything downstream of routing is re-run once, batched over the M experts; the expert features
        and routed tokens of ``output`` are reused.

        Returns:
            {task: logits (B, M, C_task, H0, W0)}: index k along M is the prediction without expert k (see
            :func:`remove_expert` for ``removal``).
        """
        experts = output.alpha.shape[2]
        removed = rearrange(remove_expert(output, removal, eps), "b t m n d -> (m b) t n d")
        size = next(iter(output.predictions.values())).shape[-2:]
        logits = self.decode(removed, output.grid, tuple(size))
        return {name: rearrange(x, "(m b) c h w -> b m c h w", m=experts) for name, x in logits.items()}


def check_options(
    grid: Sequence[int], *, expert_interaction: bool, task_interaction: bool, **sizes: int | None
) -> None:
    """Raise an :class:`tiger.options.OptionError` naming the first option of :class:`TIGER` out of range.

    The grid is two integers >= 1 (never truncated: 4.5 is an error, not 4); the switches are bools;
    every size is an integer >= 1 (``decoder_upsamples`` >= 0, ``projection_hidden`` None = 2 dim);
    ``num_heads`` divides ``dim``; ``query_width`` is a multiple of 16 and each decoder stage a channel
    count that GroupNorm can split (the group counts of :mod:`tiger.nn`). Sizes of a switched-off part are
    not checked.
    """
    options.size(grid, "grid")
    options.flag(expert_interaction, "expert_interaction")
    options.flag(task_interaction, "task_interaction")
    unused = {"num_heads"} if not (expert_interaction or task_interaction) else set()
    unused |= {"expert_interaction_layers"} if not expert_interaction else set()
    unused |= {"task_interaction_layers"} if not task_interaction else set()
    for key, value in sizes.items():
        if key not in unused and not (key == "projection_hidden" and value is None):
            options.integer(value, key, minimum=0 if key == "decoder_upsamples" else 1)
    dim, heads = sizes["dim"], sizes["num_heads"]
    if "num_heads" not in unused and dim % heads:
        raise options.OptionError("num_heads", f"must divide dim={dim}, got {heads}")
    if sizes["query_width"] % 16:
        raise options.OptionError("query_width", f"must be a multiple of 16, got {sizes['query_width']}")
    width, upsamples = sizes["decoder_width"], sizes["decoder_upsamples"]
    stages = [width // 2**i for i in range(upsamples + 1)]
    for channels in stages:
        if channels < 4 or channels % min(32, channels // 4):
            raise options.OptionError(
                "decoder_width",
                f"must halve into channel counts C that GroupNorm splits into min(32, C // 4) groups, got "
                f"{width}: with decoder_upsamples={upsamples} the stages are {stages} and {channels} is not; "
                f"a multiple of {32 * 2**upsamples} always is",
            )


def check_images(images: Tensor) -> None:
    """Raise a clear error unless ``images`` is a float batch (B, 3, H0, W0)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}")
