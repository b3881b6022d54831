"""What a training run prints: its progress, then the results table, then the paths.

:func:`quiet_intended_messages` silences the messages that report what TIGER does on purpose, each by its
own message (a warning filter, or a filter on the one logger that prints it) or by the level of the one
library logger that prints it. Nothing is silenced wholesale: every other warning and log record still shows.

- Lightning's ``Found N module(s) in eval mode at the start of training``: the frozen experts, which stay in
  eval mode (:meth:`tiger.experts.Expert.train`).
- torch's ``isinstance(treespec, LeafSpec)`` deprecation: raised inside Lightning's own pytree helper.
- Lightning's ``💡 Tip: ...`` (litlogger, litmodels): advertisements.
- Lightning's ```weights_only` was not set, defaulting to `False``` at every checkpoint: checkpoints are
  complete on purpose (resuming needs the optimiser and the callbacks' state).
- open_clip's INFO records (it logs on the root logger) and its ``No pretrained weights loaded``: random
  CLIP weights are built only when asked for (the tiny experts, ``weights: null``).
- sentence-transformers' INFO records and its ``Batches`` progress bar (which follows its logger's level)
  when it encodes the task instructions.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.utilities.warnings import PossibleUserWarning

INTENDED_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"Found \d+ module\(s\) in eval mode at the start of training", PossibleUserWarning),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)
"""(message regex, category) of the Python warnings that report intended behaviour."""


@dataclass(frozen=True)
class IntendedRecords:
    """A logging filter that drops the records whose message starts with ``message`` (a regex), at
    ``level`` or below (the same message as a warning still shows), emitted from the files of ``package``
    when given (a library that logs on the root logger)."""

    message: str
    level: int = logging.INFO
    package: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > self.level:
            return True
        if self.package is not None and self.package not in Path(record.pathname).parts:
            return True
        return re.match(self.message, record.getMessage()) is None


INTENDED_RECORDS: tuple[tuple[str, IntendedRecords], ...] = (
    ("lightning.pytorch.utilities.rank_zero", IntendedRecords(r"💡 Tip: For seamless cloud")),
    (
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
        IntendedRecords(r"`weights_only` was not set, defaulting to `False`"),
    ),
    ("root", IntendedRecords(r"", package="open_clip")),
    (
        "root",
        IntendedRecords(r"No pretrained weights loaded for model", logging.WARNING, package="open_clip"),
    ),
)
"""(logger name, filter) of the log records that report intended behaviour."""

QUIET_LOGGERS = {"sentence_transformers": logging.WARNING}
"""Library loggers whose records below a level are progress notes (sentence-transformers' progress bar
follows its logger's level)."""


def quiet_intended_messages() -> None:
    """Silence the messages of :data:`INTENDED_WARNINGS`, :data:`INTENDED_RECORDS` and :data:`QUIET_LOGGERS`
    in this process; calling it again changes nothing."""
    for message, category in INTENDED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, intended in INTENDED_RECORDS:
        logger = logging.getLogger(None if name == "root" else name)
        if intended not in logger.filters:
            logger.addFilter(intended)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
