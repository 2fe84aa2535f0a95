"""Implicit-bias variational inference (IBVI): a variational wrapper for any Linear/Conv2d
network, SP/NTK/μP parametrizations, the linear-regression theorem, temperature, training.

See docs/methods.md §2 (Wenger et al., ICLR 2026).
"""

from tacitbayes.variational.linear_theory import (
    expected_squared_loss,
    gaussian_w2,
    linear_regression_limit,
    null_space_projector,
)
from tacitbayes.variational.model import VariationalModel
from tacitbayes.variational.parametrization import (
    PARAMETRIZATIONS,
    init_std,
    layer_infos,
    lr_multiplier,
    param_groups,
    parametrize,
)
from tacitbayes.variational.temperature import fit_temperature
from tacitbayes.variational.training import IBVIConfig, train_ibvi

__all__ = [
    "PARAMETRIZATIONS",
    "IBVIConfig",
    "VariationalModel",
    "expected_squared_loss",
    "fit_temperature",
    "gaussian_w2",
    "init_std",
    "layer_infos",
    "linear_regression_limit",
    "lr_multiplier",
    "null_space_projector",
    "param_groups",
    "parametrize",
    "train_ibvi",
]
