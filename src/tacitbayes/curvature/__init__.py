"""Matrix-free curvature of a network: Jacobian, GGN, Hessian operators and spectral estimates."""

from __future__ import annotations

from tacitbayes.curvature.kfac import KFAC
from tacitbayes.curvature.losses import Loss, get_loss
from tacitbayes.curvature.ntk import KernelFactors, kernel_factors, ntk_cross, ntk_diagonal
from tacitbayes.curvature.operators import (
    GGN,
    DenseOperator,
    Hessian,
    Jacobian,
    LinearOperator,
    ggn_diagonal,
)
from tacitbayes.curvature.spectral import (
    DiagonalEstimate,
    EigenResult,
    PowerResult,
    TraceEstimate,
    hutchinson_diagonal,
    hutchinson_trace,
    power_iteration,
    top_eigenvalues,
)

__all__ = [
    "GGN",
    "DenseOperator",
    "DiagonalEstimate",
    "EigenResult",
    "PowerResult",
    "TraceEstimate",
    "Hessian",
    "Jacobian",
    "KFAC",
    "KernelFactors",
    "LinearOperator",
    "Loss",
    "get_loss",
    "kernel_factors",
    "ntk_cross",
    "ntk_diagonal",
    "ggn_diagonal",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "power_iteration",
    "top_eigenvalues",
]
