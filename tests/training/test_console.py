"""The console of a training run: what TIGER does on purpose is silenced by its message or its logger, every
other warning stays visible, and the run's own console shows progress, the results table and the paths."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from tiger.training import console

ROOT = Path(__file__).resolve().parents[2]
EVAL_MODE = (
    "Found 52 module(s) in eval mode at the start of training. This may lead to unexpected behavior during "
    "training. If this is intentional, you can ignore this warning."
)
CHECKPOINT_LOGGER = "lightning.pytorch.trainer.connectors.checkpoint_connector"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def pristine_console() -> Iterator[None]:
    """The loggers :mod:`tiger.training.console` touches, without its filters and levels (an earlier test
    may have trained in this process), restored afterwards; Python's warning filters are restored by
    pytest after every test."""
    names = {name for name, _ in console.INTENDED_RECORDS} | set(console.QUIET_LOGGERS)
    loggers = [logging.getLogger(None if name == "root" else name) for name in names]
    saved = [(logger, list(logger.filters), logger.level) for logger in loggers]
    for logger in loggers:
        for intended in [f for f in logger.filters if isinstance(f, console.IntendedRecords)]:
            logger.removeFilter(intended)
        logger.setLevel(logging.NOTSET)
    yield
    for logger, filters, level in saved:
        logger.filters[:] = filters
        logger.setLevel(level)


def shown_warnings(*emitted: tuple[str, type[Warning]]) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.quiet_intended_messages()
        for message, category in emitted:
            rank_zero_warn(message, category=category)
    return [str(warning.message) for warning in caught]


def test_intended_warnings_are_silenced_by_their_message_and_others_still_show(pristine_console) -> None:
    from torch.utils._pytree import LeafSpec

    shown = shown_warnings(
        (EVAL_MODE, PossibleUserWarning),
        ("The number of training batches (2) is smaller than the logging interval", PossibleUserWarning),
        ("Found 3 NaN values in your data", UserWarning),
    )
    assert shown == [
        "The number of training batches (2) is smaller than the logging interval",
        "Found 3 NaN values in your data",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.quiet_intended_messages()
        LeafSpec()  # torch's own deprecation, as Lightning's pytree helper triggers it
        warnings.warn("`isinstance(x, Foo)` is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["`isinstance(x, Foo)` is deprecated"]


def test_intended_log_records_are_silenced_by_their_logger_and_message(pristine_console) -> None:
    collect = Collect()
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    checkpoint = logging.getLogger(CHECKPOINT_LOGGER)
    for logger in (rank_zero, checkpoint):
        logger.addHandler(collect)
    try:
        console.quiet_intended_messages()
        console.quiet_intended_messages()  # twice: nothing changes
        rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
        rank_zero_info("GPU available: False, used: False")
        checkpoint.info("`weights_only` was not set, defaulting to `False`.")
        checkpoint.info("Restoring states from the checkpoint path at last.ckpt")
        checkpoint.warning("`weights_only` was not set, defaulting to `False`.")  # never a warning: shown
    finally:
        for logger in (rank_zero, checkpoint):
            logger.removeHandler(collect)
    assert collect.messages == [
        "GPU available: False, used: False",
        "Restoring states from the checkpoint path at last.ckpt",
        "`weights_only` was not set, defaulting to `False`.",
    ]
    assert sum(isinstance(f, console.IntendedRecords) for f in checkpoint.filters) == 1


def test_open_clip_progress_notes_go_and_other_root_records_stay(pristine_console) -> None:
    from tiger.experts import build_expert

    root, collect = logging.getLogger(), Collect()
    level = root.level
    root.setLevel(logging.INFO)  # as Hydra's job logging sets it
    root.addHandler(collect)
    try:
        build_expert("clip_tiny")
        before = list(collect.messages)
        collect.messages.clear()
        console.quiet_intended_messages()
        build_expert("clip_tiny")
        logging.info("a note of the user's own on the root logger")
        logging.warning("No pretrained weights loaded for model 'mine'")  # not open_clip's: shown
    finally:
        root.removeHandler(collect)
        root.setLevel(level)
    assert any(message.startswith("No pretrained weights loaded") for message in before)
    assert any(message.startswith("Parsing model identifier") for message in before)
    assert collect.messages == [
        "a note of the user's own on the root logger",
        "No pretrained weights loaded for model 'mine'",
    ]


def test_sentence_transformers_logs_warnings_only(pristine_console) -> None:
    console.quiet_intended_messages()
    logger = logging.getLogger("sentence_transformers.sentence_transformer.model")
    assert logger.getEffectiveLevel() == logging.WARNING  # its encode() shows no progress bar then


def test_the_console_of_a_run_shows_progress_results_and_paths(tmp_path: Path, offline_env) -> None:
    """The one real console: ``python -m tiger.train`` (short), everything it prints."""
    overrides = [
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "data.datamodule.synthetic.num_train=4",
        "data.datamodule.synthetic.num_val=2",
        "data.datamodule.batch_size=2",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    command = [sys.executable, "-m", "tiger.train", *overrides]
    result = subprocess.run(
        command, cwd=tmp_path, env=offline_env(), capture_output=True, text=True, timeout=300
    )
    shown = result.stdout + result.stderr
    assert result.returncode == 0, shown[-4000:]
    for noise in (
        "💡 Tip",
        "in eval mode at the start of training",
        "LeafSpec",
        "FLOPs",
        "`weights_only` was not set",
        "Validate metric",  # Lightning's own table of every logged value
        "Parsing model identifier",
        "No pretrained weights loaded",
        "Loading SentenceTransformer model",
        "Batches:",
    ):
        assert noise not in shown, (noise, shown)
    assert not re.search(r"\bnan\b", shown)
    # a real warning of the same kind as a silenced one (2 training batches, logging every 10 steps)
    assert "smaller than the logging interval" in shown
    order = [
        shown.index(part)
        for part in ("Validation (synthetic):", "Routing figure:", "Checkpoint:", "Results:")
    ]
    assert order == sorted(order)
