"""Deprecated alias of :mod:`tiger.analysis.figures`, where the figures moved; import from there."""

from tiger.analysis import moved_module

moved_module(__name__, "tiger.analysis.figures")
