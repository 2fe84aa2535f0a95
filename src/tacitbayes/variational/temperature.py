"""Temperature on the logits of a sampled predictive, fitted on validation NLL."""

from __future__ import annotations

import math

import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from tacitbayes.errors import InputError
from tacitbayes.search import check_grid_edge
from tacitbayes.variational.model import VariationalModel

__all__ = ["fit_temperature", "sampled_nll"]

XATOL = 1e-3  # tolerance of the bounded search on log T


def sampled_nll(logits: Tensor, y: Tensor, temperature: float) -> float:
    """−(1/N) Σ_n log((1/K) Σ_k softmax(logits_k,n / T)_{y_n}) for logits of shape (K, N, C)."""
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    picked = log_probs.gather(-1, y.expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    mixture = torch.logsumexp(picked, dim=0) - math.log(logits.shape[0])
    return float(-mixture.mean())


@torch.no_grad()
def fit_temperature(
    vnet: VariationalModel,
    val_x: Tensor,
    val_y: Tensor,
    n_samples: int = 32,
    bounds: tuple[float, float] = (0.05, 20.0),
    prior_std: float | None = 0.5,
    batch_size: int = 1000,
    generator: torch.Generator | None = None,
) -> float:
    """T* = argmin_T NLL_val(T) + (log T)²/(2σ²N) for the predictive (1/K) Σ_k softmax(f(w_k, x)/T); sets ``vnet.temperature``.

    The second term is a N(0, σ²) prior on log T (σ = ``prior_std``; ``None``: plain NLL),
    so T* is a MAP estimate whose pull towards T = 1 fades with the N validation
    examples. Without it a small validation set that the network classifies perfectly
    drives T → 0 (the NLL keeps falling), turning the predictive into a hard vote of the
    samples that is badly overconfident on the errors of the test set. The search over
    log T is bounded by ``bounds``; a T* at a bound warns (RuntimeWarning) and
    ``vnet.temperature_tuning`` records the search (``at_edge``, ``edge``, ``range``).
    """
    if len(val_x) == 0 or len(val_x) != len(val_y):
        raise InputError(
            f"need matching, non-empty val_x and val_y, got {len(val_x)} and {len(val_y)}"
        )
    if not 0 < bounds[0] < bounds[1]:
        raise InputError(f"bounds must satisfy 0 < low < high, got {bounds}")
    if prior_std is not None and not prior_std > 0:
        raise InputError(f"prior_std must be positive or None, got {prior_std}")
    penalty = 0.0 if prior_std is None else 1.0 / (2 * prior_std**2 * len(val_x))
    samples = [vnet.sample(generator) for _ in range(n_samples)]
    logits = torch.stack(
        [
            torch.cat(
                [
                    vnet.functional(s, val_x[i : i + batch_size])
                    for i in range(0, len(val_x), batch_size)
                ]
            )
            for s in samples
        ]
    ).to(torch.float64)
    y = val_y.to(torch.int64)
    result = minimize_scalar(
        lambda log_t: sampled_nll(logits, y, math.exp(log_t)) + penalty * log_t**2,
        bounds=(math.log(bounds[0]), math.log(bounds[1])),
        method="bounded",
        options={"xatol": XATOL},
    )
    temperature = math.exp(float(result.x))
    vnet.temperature.fill_(temperature)
    vnet.temperature_tuning = check_grid_edge(
        "temperature",
        bounds,
        temperature,
        tol=10 * XATOL,
        log=True,
        low="the predictive is a near-hard vote of the samples (overconfident)",
        high="the predictive is near uniform",
        remedy="widen the bounds or keep the prior on log T (prior_std)",
    )
    return temperature
