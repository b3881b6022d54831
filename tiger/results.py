"""Deprecated alias of :mod:`tiger.analysis.results`, where the gathered results moved; import from there."""

from tiger.analysis import moved_module

moved_module(__name__, "tiger.analysis.results")
