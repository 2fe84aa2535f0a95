"""The learned prior's KL against β at the chosen α and τ: where the source curvature helps or costs.

For P_β = N(w_src, τ_P(β F_src + α δ I)⁻¹) and its Laplace posterior Q_β (the target
curvature plus P_β's precision, around the same target weights),

    KL(Q_β‖P_β) = ½ ΔᵀΛ_PΔ/τ_P  +  ½[(τ/τ_P) tr(Λ_P Λ_Q⁻¹) − k + k ln(τ_P/τ) + ln det Λ_Q − ln det Λ_P],

Δ = w_t − w_src. Raising β from 0 lowers the bracket (the prior's precision grows where
the target's does, so Q's log-volume ratio shrinks) and raises the Mahalanobis term
β ΔᵀF_srcΔ/2 by the source curvature along the target's move. The profile lists both
parts for every β of the grid, on the hidden layers alone and on all layers.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from tacitbayes.curvature import KFAC
from tacitbayes.priors import KroneckerGaussian, kl_terms, laplace_posterior, tempered_kl

__all__ = ["beta_profile"]


def beta_profile(
    make: Callable[[dict[str, float]], KroneckerGaussian],
    model: nn.Module,
    kfac: KFAC,
    alpha: float,
    tau: float,
    betas: tuple[float, ...],
) -> list[dict[str, float]]:
    """[{beta, beta_output, kl, mahalanobis, rest}] for each β (and β on the hidden layers only)."""
    rows = []
    for beta in betas:
        for beta_output in (beta, 0.0) if beta > 0 else (0.0,):
            prior = make({"alpha": alpha, "beta": beta, "beta_output": beta_output})
            terms = kl_terms(laplace_posterior(prior, kfac, model), prior)
            kl = float(tempered_kl(terms, tau, prior.tau))
            mahalanobis = 0.5 * float(terms["mahalanobis"]) / prior.tau
            rows.append(
                {
                    "beta": beta,
                    "beta_output": beta_output,
                    "kl": kl,
                    "mahalanobis": mahalanobis,
                    "rest": kl - mahalanobis,
                }
            )
    return rows
