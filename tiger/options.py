"""Checks of configuration values where they enter: an error names the option and the expected range.

Constructors check their own arguments and raise :class:`OptionError` with the argument's name; a caller
that knows where the arguments came from adds the config path with :func:`option_prefix`, so a user reads
``model.loss.tau must be > 0, got 0`` rather than a NaN at step 0 or a shape error deep in a library.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any


class OptionError(ValueError):
    """A configuration value outside its range; ``key`` names the option (dotted once prefixed)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key} {problem}")
        self.key, self.problem = key, problem

    def __reduce__(self):  # keep key and problem when pickled (DDP workers, multiprocessing)
        return type(self), (self.key, self.problem)


@contextmanager
def option_prefix(prefix: str) -> Iterator[None]:
    """Re-raise an :class:`OptionError` of the block with ``prefix.`` in front of its key."""
    try:
        yield
    except OptionError as error:
        raise OptionError(f"{prefix}.{error.key}", error.problem) from None


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def integer(value: Any, key: str, minimum: int | None = None) -> int:
    """``value`` as an int; an int-valued float such as 4.5, a string or a bool is an error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionError(key, f"must be an integer, got {_shown(value)} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise OptionError(key, f"must be >= {minimum}, got {value}")
    return int(value)


def real(value: Any, key: str, minimum: float | None = None, *, exclusive: bool = False) -> float:
    """``value`` as a finite float, at least ``minimum`` (above it with ``exclusive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError(key, f"must be a number, got {_shown(value)} ({type(value).__name__})")
    if not math.isfinite(value):
        raise OptionError(key, f"must be a finite number, got {value}")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise OptionError(key, f"must be {'>' if exclusive else '>='} {minimum:g}, got {value}")
    return float(value)


def flag(value: Any, key: str) -> bool:
    """``value`` as a bool; 0, 1 and strings are errors (YAML writes true / false)."""
    if not isinstance(value, bool):
        raise OptionError(key, f"must be true or false, got {_shown(value)} ({type(value).__name__})")
    return value


def choice(value: Any, key: str, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise OptionError(key, f"must be one of {', '.join(map(repr, choices))}, got {_shown(value)}")
    return value


def size(value: Any, key: str, length: int = 2, minimum: int = 1, what: str = "(H, W)") -> tuple[int, ...]:
    """``value`` as a tuple of ``length`` integers >= ``minimum``, e.g. a token grid or an image size."""
    expected = f"{length} integers {what} >= {minimum}"
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != length:
        raise OptionError(key, f"must be {expected}, got {_shown(value)}")
    for entry in value:
        if isinstance(entry, bool) or not isinstance(entry, numbers.Integral) or entry < minimum:
            raise OptionError(
                key, f"must be {expected}, got {list(value)} ({_shown(entry)} is not an integer >= {minimum})"
            )
    return tuple(int(entry) for entry in value)
