"""The option checks: each names the option and the expected range, nothing is truncated or coerced."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from tiger import options
from tiger.options import OptionError, option_prefix


def test_integer_accepts_integers_only():
    assert options.integer(3, "k") == 3 and options.integer(np.int64(4), "k", minimum=1) == 4
    for bad in (4.5, 4.0, "4", True, None):
        with pytest.raises(OptionError, match=r"^k must be an integer, got "):
            options.integer(bad, "k")
    with pytest.raises(OptionError, match=r"^k must be >= 1, got 0$"):
        options.integer(0, "k", minimum=1)


def test_real_is_finite_and_in_range():
    assert options.real(2, "tau", minimum=0.0, exclusive=True) == 2.0
    assert options.real(0, "w", minimum=0.0) == 0.0
    with pytest.raises(OptionError, match=r"^tau must be > 0, got 0$"):
        options.real(0, "tau", minimum=0.0, exclusive=True)
    with pytest.raises(OptionError, match=r"^w must be >= 0, got -0.5$"):
        options.real(-0.5, "w", minimum=0.0)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(OptionError, match="must be a finite number"):
            options.real(bad, "w")
    with pytest.raises(OptionError, match=r"must be a number, got 'x' \(str\)"):
        options.real("x", "w")
    with pytest.raises(OptionError, match="must be a number"):
        options.real(False, "w")


def test_size_never_truncates():
    assert options.size([32, 40], "grid") == (32, 40)
    for bad, reason in (
        ([4.5, 5], r"4.5 is not an integer >= 1"),
        ([0, 5], r"0 is not an integer >= 1"),
        ([-2, 5], r"-2 is not"),
        (["4", 5], r"'4' is not"),
        ([4], r"\[4\]$"),
        ("45", r"'45'$"),
        (7, r"7$"),
    ):
        with pytest.raises(OptionError, match=rf"^grid must be 2 integers \(H, W\) >= 1, got .*{reason}"):
            options.size(bad, "grid")


def test_flag_and_choice():
    assert options.flag(False, "f") is False
    for bad in (0, 1, "false"):
        with pytest.raises(OptionError, match=r"^f must be true or false"):
            options.flag(bad, "f")
    assert options.choice("a", "c", ("a", "b")) == "a"
    with pytest.raises(OptionError, match=r"^c must be one of 'a', 'b', got 'z'$"):
        options.choice("z", "c", ("a", "b"))


def test_prefixes_compose_and_survive_pickling():
    with pytest.raises(OptionError) as info, option_prefix("model"), option_prefix("loss"):
        options.real(0, "tau", minimum=0.0, exclusive=True)
    assert str(info.value) == "model.loss.tau must be > 0, got 0"
    assert info.value.key == "model.loss.tau" and isinstance(info.value, ValueError)
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.key, str(again)) == (info.value.key, str(info.value))
