"""``block``: block MINRES on the matrix-free K = J Jᵀ, one Krylov space for all the samples.

𝒫V = V − Jᵀ U with K U = J V solved by :func:`tacitbayes.linalg.block_krylov.block_minres`:
each column's null-space residual ‖J𝒫v‖ = ‖Jv − K u‖ is minimised over the block
Krylov space of all k columns, so the samples share what each one's Krylov vectors
found. No set-up; one K product (a VJP and a JVP pass over the data, or the held
factors' products) per block step; the basis takes rows × k × steps numbers, within
``memory_budget`` (the process restarts on its residual beyond it). The residual is
measured afresh with the Jacobian at the end and the solve resumed from it while it
is above ``tol`` and steps are left.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.distributed import all_reduce_
from tacitbayes.linalg import block_minres
from tacitbayes.posteriors.null_space import ProjectionInfo
from tacitbayes.posteriors.solvers.base import SolverSettings

__all__ = ["BlockMinres"]


class BlockMinres:
    """Block MINRES on K for the whole block of samples (no set-up)."""

    name = "block"

    def __init__(self, jac: DataJacobian, settings: SolverSettings) -> None:
        self.jac, self.settings = jac, settings

    @classmethod
    def build(cls, jac: DataJacobian, settings: SolverSettings) -> BlockMinres:
        """Nothing to set up."""
        return cls(jac, settings)

    def project(self, V: Tensor) -> tuple[Tensor, ProjectionInfo]:
        """𝒫V to ‖J𝒫v‖ ≤ tol·‖Jv‖ per column, at most ``max_iters`` block steps."""
        jac, s = self.jac, self.settings
        start = time.perf_counter()
        reduce = all_reduce_ if jac.distributed else None

        def kernel_product(W: Tensor) -> Tensor:
            return jac.local_matmat(jac.local_rmatmat(W))

        B = jac.local_matmat(V)
        b_norm = jac.row_norms(B)
        PV, R = V, B
        info = ProjectionInfo(solver=self.name)
        # the least-squares residual of the re-orthogonalised basis is the true one to a few
        # digits (all 55,000 fashion-mnist images: 0.0455 for 0.04546 measured afresh), so
        # the solve aims at tol itself; the check below resumes it where rounding differs
        passes, inner_tol, worst = 0.5, s.tol, float("inf")
        res = torch.ones_like(b_norm)
        while info.iterations < s.max_iters:
            U, krylov = block_minres(
                kernel_product,
                R,
                tol=inner_tol,
                max_iters=s.max_iters - info.iterations,
                max_bytes=s.memory_budget,
                reduce=reduce,
            )
            scale = float(jac.row_norms(R).max() / b_norm.max().clamp_min(1e-300))
            info.history += [h * scale for h in krylov.relative_residual_history]
            info.iterations += krylov.iterations
            candidate = PV - jac.local_rmatmat(U)
            R_new = jac.local_matmat(candidate)
            passes += krylov.operator_applications + 1.0
            res_new = jac.row_norms(R_new) / b_norm.clamp_min(1e-300)
            res_new = torch.where(b_norm > 0, res_new, torch.zeros_like(res_new))
            if float(res_new.max()) > worst:  # rounding dominates: keep the best
                break
            PV, R, res, worst = candidate, R_new, res_new, float(res_new.max())
            if worst <= s.tol or krylov.iterations == 0:
                break
            inner_tol = s.tol / worst  # relative to the new right-hand side R
        info.data_passes = passes
        info.seconds = time.perf_counter() - start
        info.residuals = res.tolist()
        return PV, info
