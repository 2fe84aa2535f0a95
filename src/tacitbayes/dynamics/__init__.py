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

__all__ = [
    "LinsysResult",
    "min_l1_solution",
    "min_norm_solution",
    "solve_underdetermined",
    "solve_underdetermined_batch",
]
