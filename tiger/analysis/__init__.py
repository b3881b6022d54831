"""Analysis: routing statistics (expert usage, faithfulness; one implementation for inference, validation and
training), the callback that records them during a run, figures, the end-of-run report and the gathered
results of multiruns."""

import importlib
import sys
import warnings


def moved_module(old: str, new: str) -> None:
    """Make the deprecated module ``old`` an alias of ``new`` (where its code moved), with a warning."""
    warnings.warn(
        f"{old} moved to {new}; import from there (this alias will be removed)", DeprecationWarning, 3
    )
    sys.modules[old] = importlib.import_module(new)
