"""Per-image uncertainty of a VAE and its posteriors, and the metrics that rank them.

For each evaluated image: the uncertainty score, the squared error Σ_pixels (mean
reconstruction − x01)² of the method's mean reconstruction and the mean pixel-wise
standard deviation of its reconstructions. A posterior's score is
Σ_pixels Var_s[σ(r(θ_s, x))] (:meth:`~tacitbayes.posteriors.VAEProjectedPosterior.uncertainty_score`),
computed here from the same samples as its mean and standard deviation; the MAP VAE's
score is its negative ELBO at z = μ. OOD AUROC ranks the OOD images (positive) above the
test images by the score; Spearman correlates the score with the reconstruction error
on the test images (the method's own, and the MAP VAE's).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from scipy.stats import spearmanr
from torch import Tensor

from tacitbayes.metrics import auroc_from_scores

__all__ = [
    "eval_subset",
    "finite_or_none",
    "map_stats",
    "method_row",
    "posterior_stats",
    "spearman",
    "timed",
]

T = TypeVar("T")
EVAL_BATCH = 256  # images per call of the predictive


def eval_subset(x: Tensor, n: int, seed: int) -> Tensor:
    """A seeded random subset of ``n`` rows of ``x``, in their original order (all of ``x`` when n ≥ len(x))."""
    if n >= len(x):
        return x
    gen = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(x), generator=gen)[:n].sort().values
    return x[keep.to(x.device)]


def _squared_error(mean: Tensor, target: Tensor) -> Tensor:
    return (mean - target).square().flatten(1).sum(1)


@torch.no_grad()
def map_stats(vae: Any, x: Tensor) -> dict[str, Tensor]:
    """Per image of ``x`` for the MAP VAE (eval mode): score = negative ELBO at z = μ, and its reconstruction error."""
    scores, errors = [], []
    for chunk in x.split(EVAL_BATCH):
        scores.append(vae.negative_elbo(chunk, sample=False))
        errors.append(_squared_error(vae.reconstruct(chunk), vae.targets(chunk)))
    return {"score": torch.cat(scores).cpu(), "error": torch.cat(errors).cpu()}


def posterior_stats(
    posterior: Any, x: Tensor, n_samples: int, linearized: bool
) -> dict[str, Tensor]:
    """Per image of ``x``: score Σ_pixels Var_s, reconstruction error of the sample mean, mean pixel std."""
    vae = posterior.vae
    scores, errors, stds = [], [], []
    for chunk in x.split(EVAL_BATCH):
        samples = posterior.reconstruction_samples(chunk, n_samples, linearized).detach()
        var = samples.var(0, unbiased=False)
        scores.append(var.flatten(1).sum(1))
        errors.append(_squared_error(samples.mean(0), vae.targets(chunk)))
        stds.append(var.sqrt().flatten(1).mean(1))
    return {
        "score": torch.cat(scores).cpu(),
        "error": torch.cat(errors).cpu(),
        "std": torch.cat(stds).cpu(),
    }


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, or None when it is not finite (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def spearman(a: Tensor, b: Tensor) -> float | None:
    """Spearman rank correlation of two per-image series; None when it is undefined (< 2 images, a constant)."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    if len(a) < 2 or bool((a == a[0]).all()) or bool((b == b[0]).all()):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return finite_or_none(spearmanr(a.numpy(), b.numpy()).statistic)


def method_row(
    test: dict[str, Tensor],
    ood: dict[str, Tensor],
    map_error: Tensor,
    nll_bound: float,
    seconds: float,
) -> dict[str, Any]:
    """One method's results: reconstruction errors, NLL bound, OOD AUROC, Spearman, std, timing.

    ``spearman`` correlates the score with the method's own per-image reconstruction error,
    ``spearman_map_error`` with the MAP VAE's (``map_error``, the same for every method).
    """
    row: dict[str, Any] = {
        "reconstruction_error": float(test["error"].mean()),
        "ood_reconstruction_error": float(ood["error"].mean()),
        "nll_bound": nll_bound,
        "ood_auroc": auroc_from_scores(test["score"], ood["score"]),
        "spearman": spearman(test["score"], test["error"]),
        "spearman_map_error": spearman(test["score"], map_error),
        "mean_score": float(test["score"].mean()),
        "ood_mean_score": float(ood["score"].mean()),
        "mean_pixel_std": float(test["std"].mean()) if "std" in test else None,
        "ood_mean_pixel_std": float(ood["std"].mean()) if "std" in ood else None,
        "predict_seconds": seconds,
    }
    return row


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and the seconds it took."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
