"""Observation noise σ of a regression posterior, by the evidence.

Laplace: at fixed θ*, the evidence log Z(δ, σ) with s = 1/σ² has ∂/∂σ² = 0 at
σ² = ‖y − f(θ*)‖² / (N·O − γ), γ = Σ_i sλ_i/(sλ_i + δ) (MacKay 1992), so σ ≥ σ_ML =
‖y − f‖/√(N·O). ``tune_marglik_noise`` maximises log Z jointly over δ and σ by coordinate
ascent: δ by the usual evidence search at the current σ, then σ by a bounded search on log σ
in [log σ_ML − 1, log σ_ML + 12], until log σ moves by less than 1e-7.

Projected posterior: the null-space limit of the same fixed point, γ = rank J = P − tr 𝒫.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from tacitbayes.errors import NotFittedError
from tacitbayes.posteriors.laplace_protocol import TunableLaplace
from tacitbayes.posteriors.laplace_tuning import tune_marglik
from tacitbayes.search import check_grid_edge

__all__ = ["maximum_likelihood_sigma", "projected_sigma", "tune_marglik_noise"]

MAX_ROUNDS = 100


def maximum_likelihood_sigma(loss_sum: float, n_values: int) -> float:
    """σ_ML = √(2L/(N·O)) for L = ½‖y − f‖², floored at 1e-6."""
    return max(math.sqrt(max(2.0 * loss_sum, 0.0) / max(n_values, 1)), 1e-6)


def _bounds(lower: float) -> tuple[float, float]:
    """The log σ range of the search: [log σ_ML − 1, log σ_ML + 12]."""
    return math.log(lower) - 1.0, math.log(lower) + 12.0


def _best_sigma(la: TunableLaplace, delta: Tensor, lower: float) -> float:
    """argmax over σ of log Z(δ, σ) at fixed δ: bounded Brent search on log σ."""

    def objective(t: float) -> float:
        with torch.no_grad():
            return -float(la.log_marginal_likelihood(delta, sigma_noise=math.exp(t)))

    bounds = _bounds(lower)
    res = minimize_scalar(objective, bounds=bounds, method="bounded", options={"xatol": 1e-9})
    return math.exp(float(res.x))


def tune_marglik_noise(
    la: TunableLaplace, prior_structure: str, n_steps: int, lr: float
) -> tuple[Tensor, float, dict[str, Any]]:
    """(δ, σ) maximising the Laplace evidence jointly, by coordinate ascent from σ_ML, and the
    edge record of the σ search (:func:`tacitbayes.search.check_grid_edge`)."""
    if la.loss_sum is None:
        raise NotFittedError("call fit(train_loader) before tuning the observation noise")
    lower = maximum_likelihood_sigma(float(la.loss_sum), la.n_data * la.n_outputs)
    delta = la.prior_precision
    for _ in range(MAX_ROUNDS):
        delta = tune_marglik(la, prior_structure, n_steps, lr)
        la.prior_precision = delta
        sigma = _best_sigma(la, delta, lower)
        moved = abs(math.log(sigma) - math.log(la.sigma_noise))
        la.set_sigma_noise(sigma)
        if moved < 1e-7:
            break
    else:
        warnings.warn(
            f"the joint evidence search for (δ, σ) did not settle in {MAX_ROUNDS} rounds",
            RuntimeWarning,
            stacklevel=3,
        )
    record = check_grid_edge(
        "regression noise sigma (evidence)",
        [math.exp(b) for b in _bounds(lower)],
        la.sigma_noise,
        tol=1e-6,
        log=True,
        high="the network explains almost none of the targets' variance",
        remedy="pass sigma_noise=... or check the fit",
        stacklevel=4,
    )
    return delta, la.sigma_noise, record


def projected_sigma(loss_sum: float, n_values: int, rank: float) -> tuple[float, bool]:
    """σ² = 2L/(N·O − rank J) (the evidence fixed point at γ = rank J) and whether it is reliable.

    When N·O − rank J < 5% of N·O the network (nearly) interpolates its targets and the
    residuals say little about σ: the estimate falls back to σ_ML and is flagged.
    """
    dof = n_values - rank
    if dof < 0.05 * n_values:
        return maximum_likelihood_sigma(loss_sum, n_values), False
    return max(math.sqrt(max(2.0 * loss_sum, 0.0) / dof), 1e-6), True
