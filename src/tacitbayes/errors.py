"""Exceptions that mean "the input is wrong", as opposed to a bug in tacitbayes.

The CLI turns every :class:`TacitBayesError` into a one-line message on stderr
and exit status 2; the library raises them with messages that say what to fix.
"""

from __future__ import annotations


class TacitBayesError(Exception):
    """Base class of all errors caused by bad input or a failed run."""


class InputError(TacitBayesError, ValueError):
    """An argument, a shape or a setting that cannot be used."""


class DataError(TacitBayesError, ValueError):
    """A data set that is missing, malformed or holds invalid values."""


class TrainingDivergedError(TacitBayesError, RuntimeError):
    """Training met a non-finite loss; the last good checkpoint is kept."""


class NotFittedError(InputError):
    """A method that needs a fitted posterior was called before ``fit`` (or ``load_state_dict``)."""
