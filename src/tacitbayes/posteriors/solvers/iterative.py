"""Matrix-free solvers: CG on K = J Jᵀ (``nystrom``, ``gram_float32`` preconditioners) and LSQR on J (``krylov``)."""

from __future__ import annotations

import torch
from torch import Tensor

from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.posteriors.kernel_cholesky import cholesky_preconditioner
from tacitbayes.posteriors.kernel_projection import (
    factor_bytes_per_example,
    nystrom_preconditioner,
    nystrom_projection,
)
from tacitbayes.posteriors.null_space import ProjectionInfo, krylov_projection
from tacitbayes.posteriors.solvers.base import SolverSettings

__all__ = ["CholeskyCG", "KrylovProjection", "NystromCG"]


class NystromCG:
    """CG on the matrix-free K, preconditioned by a rank-ℓ Nyström approximation of the Jacobi-scaled K."""

    name = "nystrom"

    def __init__(self, jac: DataJacobian, preconditioner, settings: SolverSettings) -> None:
        self.jac, self.preconditioner, self.settings = jac, preconditioner, settings

    @classmethod
    def build(cls, jac: DataJacobian, settings: SolverSettings) -> NystromCG:
        """ℓ = min(nystrom_rank, what the budget holds: the kernel columns and the landmarks' factors)."""
        rows = jac.shape[0]
        landmarks = (settings.memory_budget // 2) // factor_bytes_per_example(jac)
        rank = min(
            settings.nystrom_rank,
            settings.memory_budget // (6 * 8 * rows),
            landmarks * jac.n_outputs,
        )
        gen = torch.Generator().manual_seed(settings.seed)
        # GGN rows carry in their norms the weighting the residual is measured in (Λ_n);
        # a Jacobi scaling would undo it and let the confidently fitted examples dominate
        jacobi = jac.outputs != "ggn"
        return cls(jac, nystrom_preconditioner(jac, max(1, rank), gen, jacobi=jacobi), settings)

    def project(self, V: Tensor) -> tuple[Tensor, ProjectionInfo]:
        """𝒫V = V − Jᵀ U, K U = J V by preconditioned CG to ``tol`` (at most ``max_iters``)."""
        s = self.settings
        return nystrom_projection(
            self.jac,
            V,
            self.preconditioner,
            tol=s.tol,
            max_iters=s.max_iters,
            progress=s.progress,
            solver=self.name,
            krylov=s.krylov,
        )


class CholeskyCG(NystromCG):
    """CG on K preconditioned by the exact float32 Cholesky factor of the Jacobi-scaled K."""

    name = "gram_float32"

    @classmethod
    def build(cls, jac: DataJacobian, settings: SolverSettings) -> CholeskyCG:
        """Factor the float32 scaled K of every example (InputError over the budget)."""
        return cls(jac, cholesky_preconditioner(jac, settings.memory_budget), settings)


class KrylovProjection:
    """𝒫V = V − J⁺(JV) by LSQR on J (a reference: no setup, many passes)."""

    name = "krylov"

    def __init__(self, jac: DataJacobian, settings: SolverSettings) -> None:
        self.jac, self.settings = jac, settings

    @classmethod
    def build(cls, jac: DataJacobian, settings: SolverSettings) -> KrylovProjection:
        """Nothing to set up."""
        return cls(jac, settings)

    def project(self, V: Tensor) -> tuple[Tensor, ProjectionInfo]:
        """LSQR from 0, stopped when ‖J𝒫v‖ ≤ tol·‖Jv‖ for every column."""
        return krylov_projection(
            self.jac, V, tol=self.settings.tol, max_iters=self.settings.max_iters
        )
