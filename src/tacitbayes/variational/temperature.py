"""Temperature on the logits of a sampled predictive, fitted on validation NLL."""

from __future__ import annotations

import torch
from torch import Tensor

from tacitbayes.calibration import fit_logit_temperature, sampled_nll
from tacitbayes.errors import InputError
from tacitbayes.variational.model import VariationalModel

__all__ = ["fit_temperature", "sampled_nll"]


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
    )
    temperature, vnet.temperature_tuning = fit_logit_temperature(
        logits,
        val_y,
        bounds,
        prior_std,
        low="the predictive is a near-hard vote of the samples (overconfident)",
    )
    vnet.temperature.fill_(temperature)
    return temperature
