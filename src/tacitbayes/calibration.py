"""Temperature scaling: one scalar T on the logits, fitted on validation NLL (Guo et al. 2017).

The predictive is (1/K) Σ_k softmax(f_k(x)/T) over K logit samples (K = 1: a plain
network). :func:`fit_logit_temperature` minimises the validation NLL over log T, with an
optional N(0, σ²) prior on log T, by a bounded scalar search; a T at a bound is recorded
and warned about (see :mod:`tacitbayes.search`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from tacitbayes.errors import InputError
from tacitbayes.search import check_grid_edge

__all__ = ["XATOL", "fit_logit_temperature", "sampled_nll"]

XATOL = 1e-3  # tolerance of the bounded search on log T


def sampled_nll(logits: Tensor, y: Tensor, temperature: float) -> float:
    """−(1/N) Σ_n log((1/K) Σ_k softmax(logits_k,n / T)_{y_n}) for logits of shape (K, N, C)."""
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    picked = log_probs.gather(-1, y.expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    mixture = torch.logsumexp(picked, dim=0) - math.log(logits.shape[0])
    return float(-mixture.mean())


def fit_logit_temperature(
    logits: Tensor,
    y: Tensor,
    bounds: tuple[float, float] = (0.05, 20.0),
    prior_std: float | None = 0.5,
    low: str = "the predictive is overconfident",
) -> tuple[float, dict[str, Any]]:
    """T* = argmin_T NLL_val(T) + (log T)²/(2σ²N) for logits (K, N, C) or (N, C); (T*, search record).

    σ = ``prior_std`` (``None``: the plain NLL). The record says whether T* stopped at a
    bound (a RuntimeWarning then names what that means).
    """
    if logits.ndim == 2:
        logits = logits.unsqueeze(0)
    if logits.ndim != 3 or logits.shape[1] == 0 or logits.shape[1] != len(y):
        raise InputError(
            f"need logits (K, N, C) or (N, C) with N = len(y) > 0, got {tuple(logits.shape)} "
            f"and {len(y)} labels"
        )
    if not 0 < bounds[0] < bounds[1]:
        raise InputError(f"bounds must satisfy 0 < low < high, got {bounds}")
    if prior_std is not None and not prior_std > 0:
        raise InputError(f"prior_std must be positive or None, got {prior_std}")
    penalty = 0.0 if prior_std is None else 1.0 / (2 * prior_std**2 * logits.shape[1])
    logits, y = logits.detach().to(torch.float64), y.to(device=logits.device, dtype=torch.int64)
    result = minimize_scalar(
        lambda log_t: sampled_nll(logits, y, math.exp(log_t)) + penalty * log_t**2,
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": XATOL},
    )
    temperature = math.exp(float(result.x))
    record = check_grid_edge(
        "temperature",
        bounds,
        temperature,
        tol=10 * XATOL,
        log=True,
        low=low,
        high="the predictive is near uniform",
        remedy="widen the bounds or keep the prior on log T (prior_std)",
        stacklevel=3,
    )
    return temperature, record
