"""``gram``: the dense NTK Gram K = J Jᵀ (N·O × N·O), Cholesky-factored, refined in float64."""

from __future__ import annotations

from torch import Tensor

from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.curvature.ntk import KernelFactors, ntk_gram
from tacitbayes.posteriors.kernel_projection import (
    GramSolver,
    factor_bytes_per_example,
    gram_projection,
    jacobian_factors,
)
from tacitbayes.posteriors.null_space import ProjectionInfo
from tacitbayes.posteriors.solvers.base import SolverSettings, check_budget, float64_twin

__all__ = ["GramProjection", "gram_bytes"]


def gram_bytes(jac: DataJacobian) -> int:
    """Memory of ``gram``: K and its factor in float64, and every example's Jacobian factors."""
    rows = jac.shape[0]
    return 2 * 8 * rows * rows + factor_bytes_per_example(jac) * jac.n_data


class GramProjection:
    """𝒫V = V − Jᵀ K⁺ J V with K built from per-layer factors; products in float64 (:func:`float64_twin`)."""

    name = "gram"

    def __init__(self, jac: DataJacobian, factors: list[KernelFactors], tol: float) -> None:
        self.jac, self.factors, self.tol = jac, factors, tol
        self.kernel = GramSolver(ntk_gram(factors))

    @classmethod
    def build(cls, jac: DataJacobian, settings: SolverSettings) -> GramProjection:
        """Factor K of every training example (InputError when K, its factor and the factors exceed the budget)."""
        rows = jac.shape[0]
        what = f"the {rows}x{rows} kernel matrix, its factor and the Jacobian factors"
        check_budget("gram", gram_bytes(jac), settings.memory_budget, what, "solver='nystrom'")
        exact = float64_twin(jac)
        return cls(exact, jacobian_factors(exact), settings.tol)

    def project(self, V: Tensor) -> tuple[Tensor, ProjectionInfo]:
        """𝒫V in float64 (returned in V's dtype), refined while ‖J𝒫v‖/‖Jv‖ > tol."""
        projected, info = gram_projection(self.jac, V.to(self.jac.dtype), self.kernel, tol=self.tol)
        return projected.to(V.dtype), info
