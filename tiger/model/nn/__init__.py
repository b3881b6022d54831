"""The trainable parts of TIGER: projection, router, interaction attention, decoder and heads."""

from tiger.model.nn.decoder import SharedDecoder, TaskHeads
from tiger.model.nn.interaction import SetAttention
from tiger.model.nn.projection import ExpertProjection
from tiger.model.nn.router import HyperQueryProjection, QueryEncoder, TokenRouter

__all__ = [
    "ExpertProjection",
    "HyperQueryProjection",
    "QueryEncoder",
    "SetAttention",
    "SharedDecoder",
    "TaskHeads",
    "TokenRouter",
]
