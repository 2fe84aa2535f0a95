"""tacitbayes: Bayesian deep learning that keeps what plain training gets right."""

from __future__ import annotations

__version__ = "0.1.0"

from tacitbayes import (  # noqa: E402
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
from tacitbayes.errors import (  # noqa: E402
    DataError,
    InputError,
    TacitBayesError,
    TrainingDivergedError,
)
from tacitbayes.posteriors import Laplace, ProjectedPosterior  # noqa: E402
from tacitbayes.training import TrainConfig, train_map  # noqa: E402
from tacitbayes.variational import VariationalModel  # noqa: E402

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
