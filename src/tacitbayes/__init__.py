"""tacitbayes: Bayesian deep learning that keeps what plain training gets right.

The sub-packages and the names below are loaded on first access (PEP 562), so
``import tacitbayes`` (and the command line's ``--help``) does not import torch:
``tacitbayes.Laplace`` or ``from tacitbayes import Laplace`` imports what it needs then.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from tacitbayes.errors import (
    DataError,
    InputError,
    TacitBayesError,
    TrainingDivergedError,
)

__version__ = "0.1.0"

# name -> the module that defines it, imported on first access
_LAZY_NAMES = {
    "Laplace": "tacitbayes.posteriors",
    "ProjectedPosterior": "tacitbayes.posteriors",
    "TrainConfig": "tacitbayes.training",
    "train_map": "tacitbayes.training",
    "VariationalModel": "tacitbayes.variational",
}
_SUBPACKAGES = (
    "curvature",
    "data",
    "distributed",
    "dynamics",
    "functional",
    "linalg",
    "metrics",
    "models",
    "optim",
    "priors",
    "variational",
)

if TYPE_CHECKING:  # what the lazy loading gives, for type checkers
    from tacitbayes import (
        curvature,
        data,
        distributed,
        dynamics,
        functional,
        linalg,
        metrics,
        models,
        optim,
        priors,
        variational,
    )
    from tacitbayes.posteriors import Laplace, ProjectedPosterior
    from tacitbayes.training import TrainConfig, train_map
    from tacitbayes.variational import VariationalModel

__all__ = [
    "DataError",
    "InputError",
    "Laplace",
    "ProjectedPosterior",
    "TacitBayesError",
    "TrainConfig",
    "TrainingDivergedError",
    "VariationalModel",
    "__version__",
    "curvature",
    "data",
    "distributed",
    "dynamics",
    "functional",
    "linalg",
    "metrics",
    "models",
    "optim",
    "priors",
    "train_map",
    "variational",
]


def __getattr__(name: str) -> Any:
    """Import a sub-module (``tacitbayes.linalg``, …) or a name of ``__all__`` on first access."""
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and (
        name in _SUBPACKAGES or importlib.util.find_spec(f"{__name__}.{name}") is not None
    ):
        return importlib.import_module(f"{__name__}.{name}")  # also sets it on this package
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
