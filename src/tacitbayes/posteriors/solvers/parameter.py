"""``parameter``: the P×P side, 𝒫 = I − U_r U_rᵀ from the eigenvectors of JᵀJ; exact where P ≤ N·O.

Where the model has fewer parameters than training outputs (a LoRA adapter, a small
head), K = J Jᵀ (N·O × N·O) is singular by construction and JᵀJ (P × P) is the smaller
matrix. JᵀJ = Σ_b J_bᵀ J_b is built in float64 from this rank's rows (one VJP per row,
a chunk of rows at a time) and all-reduced; its eigenvectors with eigenvalue above
``RANK_CUTOFF`` · λ_max span row(J). A projection is then two P×r products: no data pass.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from tacitbayes.budget import items_per_chunk
from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.distributed import all_reduce_
from tacitbayes.posteriors.null_space import ProjectionInfo, null_space_residual
from tacitbayes.posteriors.solvers.base import SolverSettings, check_budget, float64_twin

__all__ = ["RANK_CUTOFF", "ParameterProjection", "parameter_bytes"]

RANK_CUTOFF = 1e-10  # eigenvalues of JᵀJ below this × the largest are null directions


def parameter_bytes(jac: DataJacobian) -> int:
    """Memory of ``parameter``: JᵀJ, its eigenvectors and a workspace, P×P float64 each."""
    return 3 * 8 * jac.shape[1] ** 2


def normal_matrix(jac: DataJacobian) -> Tensor:
    """JᵀJ = Σ_b J_bᵀ J_b (P × P) from blocks of J_bᵀ (one VJP per row), over every rank."""
    n_p = jac.shape[1]
    out = torch.zeros(n_p, n_p, dtype=jac.dtype, device=jac.device)
    step = items_per_chunk(3 * n_p * 8, 2**31)
    for batch, rows in zip(jac.iter_batches(), jac.batch_rows, strict=True):
        eye = torch.eye(rows, dtype=jac.dtype, device=jac.device)
        for start in range(0, rows, step):
            jt = jac.batch_rmatmat(batch, eye[:, start : start + step])  # (P, chunk)
            out.addmm_(jt, jt.T)
    return all_reduce_(out)


class ParameterProjection:
    """𝒫V = V − U_r(U_rᵀV) with U_r the eigenvectors of JᵀJ above the rank cutoff."""

    name = "parameter"

    def __init__(self, jac: DataJacobian, basis: Tensor, tol: float) -> None:
        self.jac, self.basis, self.tol = jac, basis, tol

    @classmethod
    def build(cls, jac: DataJacobian, settings: SolverSettings) -> ParameterProjection:
        """Build JᵀJ in float64 and keep row(J)'s eigenvectors (InputError over the budget)."""
        n_p = jac.shape[1]
        check_budget(
            "parameter",
            parameter_bytes(jac),
            settings.memory_budget,
            f"the {n_p}x{n_p} matrix JᵀJ",
            "solver='gram' or 'nystrom'",
        )
        exact = float64_twin(jac)
        values, vectors = torch.linalg.eigh(normal_matrix(exact))
        keep = values > RANK_CUTOFF * values[-1].clamp_min(1e-300)
        return cls(exact, vectors[:, keep].contiguous(), settings.tol)

    @property
    def rank(self) -> int:
        """rank J as found: the number of eigenvalues of JᵀJ kept."""
        return int(self.basis.shape[1])

    def project(self, V: Tensor) -> tuple[Tensor, ProjectionInfo]:
        """𝒫V = V − U_r(U_rᵀV) in float64, residual measured with the (float64) Jacobian."""
        start = time.perf_counter()
        V64 = V.to(self.basis.dtype)
        projected = V64 - self.basis @ (self.basis.T @ V64)
        info = ProjectionInfo(solver=self.name, iterations=1)
        info.residuals = null_space_residual(self.jac, V64, projected).tolist()
        info.history = [max(info.residuals, default=0.0)]
        info.data_passes = 1.0
        info.seconds = time.perf_counter() - start
        return projected.to(V.dtype), info
