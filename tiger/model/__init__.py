"""The TIGER model: its typed config, the network (eq. 1-8), its parts (``nn/``), the task instructions
(eq. 3), the checkpoint format, and the builders (from a config, from a checkpoint)."""

from tiger.model.config import TigerConfig
from tiger.model.tiger import REMOVALS, TIGER, TigerOutput, remove_experts

__all__ = ["REMOVALS", "TIGER", "TigerConfig", "TigerOutput", "remove_experts"]
