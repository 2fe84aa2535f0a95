"""Training dynamics: implicit bias of gradient descent on underdetermined linear systems;
sharpness tracking and edge-of-stability thresholds of (variational) gradient descent."""

from __future__ import annotations

from tacitbayes.dynamics.linsys import (
    LinsysResult,
    min_l1_solution,
    min_norm_solution,
    solve_underdetermined,
    solve_underdetermined_batch,
)
from tacitbayes.dynamics.sharpness import (
    PreconditionedOperator,
    SharpnessTracker,
    preconditioner_vector,
)
from tacitbayes.dynamics.thresholds import (
    expected_update_factor,
    momentum_stability_threshold,
    stability_condition,
    vl_stability_threshold,
    z_from_gradient,
    z_reference,
)

__all__ = [
    "LinsysResult",
    "PreconditionedOperator",
    "SharpnessTracker",
    "expected_update_factor",
    "momentum_stability_threshold",
    "preconditioner_vector",
    "stability_condition",
    "vl_stability_threshold",
    "z_from_gradient",
    "z_reference",
    "min_l1_solution",
    "min_norm_solution",
    "solve_underdetermined",
    "solve_underdetermined_batch",
]
