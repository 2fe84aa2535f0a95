"""Projection onto null(J), the directions that leave the linearised training outputs unchanged.

𝒫 = I − J⁺J. Two matrix-free solvers, both acting on a block V of k vectors:

* alternating projections (Miani et al. 2025): sweeps v ← 𝒫_B ⋯ 𝒫_1 v with
  𝒫_b v = v − J_bᵀ (J_b J_bᵀ)⁺ J_b v over small batches b, the pseudo-inverses
  precomputed from eigendecompositions of the batch Gram matrices;
* Krylov: 𝒫v = v − J⁺(Jv), the minimum-norm solution of Jx = Jv by LSQR over the
  whole training set (large batches, no set-up). The LSQR residual Jv − Jx = J𝒫v is
  the null-space residual itself, so it stops on exactly the quantity of interest.

One data pass is one JVP and one VJP over every training example (for all k vectors).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.errors import InputError
from tacitbayes.linalg import lsqr
from tacitbayes.linalg.eigen import symmetric_eigh

__all__ = [
    "BatchInverse",
    "ProjectionInfo",
    "alternating_projection",
    "batch_inverses",
    "krylov_projection",
    "null_space_residual",
]


@dataclass
class BatchInverse:
    """Eigenpairs (U, λ) of one batch Gram matrix J_b J_bᵀ, kept above a relative cutoff."""

    vectors: Tensor  # (rows_b, r)
    values: Tensor  # (r,)

    def pinv_apply(self, u: Tensor) -> Tensor:
        """(J_b J_bᵀ)⁺ u with eigenvalues below the cutoff dropped."""
        return self.vectors @ ((self.vectors.T @ u) / self.values[:, None])


@dataclass
class ProjectionInfo:
    """What a projection cost and how well it did."""

    solver: str
    iterations: int = 0
    data_passes: float = 0.0
    setup_seconds: float = 0.0
    seconds: float = 0.0
    residuals: list[float] = field(default_factory=list)  # ‖J𝒫v‖/‖Jv‖ per column
    history: list[float] = field(default_factory=list)
    """Max residual over the columns: alternating, after every checked sweep; Krylov, after
    every LSQR iteration (iteration i has used i + 1 data passes), from LSQR's recurrences."""

    @property
    def max_residual(self) -> float:
        """The largest relative null-space residual over the columns."""
        return max(self.residuals) if self.residuals else float("nan")


def batch_inverses(jac: DataJacobian, cutoff: float = 1e-6) -> list[BatchInverse]:
    """Eigendecompose every batch Gram matrix J_b J_bᵀ; drop eigenvalues below cutoff·λ_max."""
    if not 0 < cutoff < 1:
        raise InputError(f"cutoff must be in (0, 1), got {cutoff}")
    out = []
    for b in range(jac.n_batches):
        gram = jac.batch_gram(b).to(torch.float64)
        values, vectors = symmetric_eigh(gram, f"the Gram matrix J_b J_bᵀ of batch {b}")
        top = float(values[-1]) if len(values) else 0.0
        keep = values > cutoff * top if top > 0 else torch.zeros_like(values, dtype=torch.bool)
        out.append(
            BatchInverse(
                vectors=vectors[:, keep].to(jac.dtype),
                values=values[keep].to(jac.dtype),
            )
        )
    return out


def null_space_residual(jac: DataJacobian, V: Tensor, PV: Tensor) -> Tensor:
    """‖J 𝒫v‖ / ‖J v‖ for every column (0 where Jv = 0)."""
    jv = jac.row_norms(jac.local_matmat(V))
    jpv = jac.row_norms(jac.local_matmat(PV))
    return torch.where(jv > 0, jpv / jv.clamp_min(torch.finfo(jv.dtype).tiny), torch.zeros_like(jv))


def alternating_projection(
    jac: DataJacobian,
    V: Tensor,
    inverses: list[BatchInverse],
    n_sweeps: int = 100,
    tol: float | None = None,
    check_every: int = 1,
) -> tuple[Tensor, ProjectionInfo]:
    """Sweeps V ← 𝒫_B ⋯ 𝒫_1 V; stop after ``n_sweeps`` or once ‖J𝒫v‖/‖Jv‖ ≤ tol for every column.

    Checking the residual costs one extra JVP pass (counted in ``data_passes``).
    """
    if len(inverses) != jac.n_batches:
        raise InputError("inverses were computed for a different batching of the data")
    if n_sweeps < 1:
        raise InputError(f"n_sweeps must be at least 1, got {n_sweeps}")
    start = time.perf_counter()
    info = ProjectionInfo(solver="alternating")
    jv_norm = torch.linalg.vector_norm(jac @ V, dim=0) if tol is not None else None
    passes = 0.5 if tol is not None else 0.0
    X = V.clone()
    for sweep in range(1, n_sweeps + 1):
        for b, inv in enumerate(inverses):
            X = X - jac.batch_rmatmat(b, inv.pinv_apply(jac.batch_matmat(b, X)))
        passes += 1.0
        info.iterations = sweep
        if tol is not None and (sweep % check_every == 0 or sweep == n_sweeps):
            res = torch.linalg.vector_norm(jac @ X, dim=0) / jv_norm.clamp_min(1e-30)
            passes += 0.5
            info.history.append(float(res.max()))
            if float(res.max()) <= tol:
                break
    info.data_passes = passes
    info.seconds = time.perf_counter() - start
    info.residuals = null_space_residual(jac, V, X).tolist()
    return X, info


def krylov_projection(
    jac: DataJacobian,
    V: Tensor,
    tol: float = 1e-3,
    max_iters: int = 500,
) -> tuple[Tensor, ProjectionInfo]:
    """𝒫V = V − X with X = J⁺(JV), the minimum-norm solution of JX = JV, by LSQR.

    LSQR from X₀ = 0 stays in row(J); its residual JV − JX = J𝒫V is the null-space
    residual, so the solver stops exactly when ‖J𝒫v‖ ≤ tol·‖Jv‖ for every column.
    Under torch.distributed the data-space vectors stay sharded (each rank its own rows):
    one P·k all-reduce per iteration and k-number reductions for the norms.
    """
    start = time.perf_counter()
    B = jac.local_matmat(V)
    X, lsqr_info = lsqr(
        jac.local_matmat,
        jac.local_rmatmat,
        B,
        tol=tol,
        max_iters=max_iters,
        atol=0.0,
        least_squares_stop=False,
        inner=jac.row_inner,
    )
    PV = V - X
    info = ProjectionInfo(
        solver="krylov",
        iterations=lsqr_info.iterations,
        history=lsqr_info.relative_residual_history,
    )
    # JV, then one JVP and one VJP per iteration (the first VJP is LSQR's start-up)
    info.data_passes = 0.5 + 0.5 * (
        lsqr_info.operator_applications + lsqr_info.adjoint_applications
    )
    info.seconds = time.perf_counter() - start
    info.residuals = null_space_residual(jac, V, PV).tolist()
    return PV, info
