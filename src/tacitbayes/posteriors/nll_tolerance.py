"""The null-space residual a projection may stop at: set by the training NLL it lets move.

With GGN rows (S_nᵀJ_n, S_nS_nᵀ = Λ_n) a sample δ = α^{-1/2} 𝒫̃ε moves the training NLL of
the linearised network, to second order, by

    ΔNLL ≈ (1/N) Σ_n ½ ‖S_nᵀ J_n δ‖² = ‖J 𝒫̃ε‖² / (2 N α) = r² ‖Jε‖² / (2 N α),

r = ‖J𝒫̃ε‖/‖Jε‖ the relative residual, and E‖Jε‖² = tr(JᵀΛJ), the GGN's trace (the first
order term ∇L(θ*)ᵀδ vanishes at a minimum). So ΔNLL ≤ ``nll_tol`` for

    r ≤ √(2 N α · nll_tol / tr(JᵀΛJ)),

with α the evidence precision rank/‖θ*‖². This bounds each sample's training NLL; the
posterior's predictive averages the samples' probabilities, whose NLL moves less (on the
fashion-mnist MLP about 0.4× with 8 samples). Measured: ``benchmarks/projected_scale.py``.
"""

from __future__ import annotations

import math

import torch

from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.distributed import all_reduce_float

__all__ = ["ggn_trace", "residual_for_nll", "row_rank_bound"]


def row_rank_bound(jac: DataJacobian, softmax_ggn: bool) -> int:
    """min(P, rows): the rank of J where it has full row rank (GGN rows of a softmax: N·(O − 1))."""
    rows = jac.n_data * (jac.n_outputs - 1) if softmax_ggn else jac.shape[0]
    return int(min(rows, jac.shape[1]))


def ggn_trace(jac: DataJacobian, probes: int = 4, seed: int = 0) -> float:
    """tr(JᵀJ) = Σ ‖rows‖²: exact from held factors, else Hutchinson E‖Jε‖² with ``probes`` normals."""
    if jac.factors is not None:
        return all_reduce_float(jac.factors.row_square_sum())
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(jac.shape[1], probes, generator=gen, dtype=jac.dtype).to(jac.device)
    return float(jac.row_norms(jac.local_matmat(eps)).pow(2).mean())


def residual_for_nll(jac: DataJacobian, alpha: float, nll_tol: float) -> float:
    """r = √(2 N α · nll_tol / tr(JᵀΛJ)): the residual at which the training NLL moves by nll_tol."""
    trace = ggn_trace(jac)
    if not trace > 0:
        return math.inf
    return math.sqrt(2.0 * jac.n_data * alpha * nll_tol / trace)
