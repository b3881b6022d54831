"""The trainable parts of TIGER: projection, router, interaction attention, decoder and heads."""

from tiger.nn.decoder import SharedDecoder, TaskHeads
from tiger.nn.interaction import SetAttention
from tiger.nn.projection import ExpertProjection
from tiger.nn.router import HyperQueryProjection, QueryEncoder, TokenRouter

__all__ = [
    "ExpertProjection",
    "HyperQueryProjection",
    "QueryEncoder",
    "SetAttention",
    "SharedDecoder",
    "TaskHeads",
    "TokenRouter",
]
