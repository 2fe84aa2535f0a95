"""Prior precision of a Laplace posterior: evidence maximisation or validation NLL.

Evidence, scalar δ: with λ_i the eigenvalues of sH (diagonal entries for "diag", products
λ_G λ_A for "kron"), d log Z / d log δ = ½[Σ_i sλ_i/(sλ_i + δ) − δ‖θ*‖²] is strictly
decreasing in δ, so log Z is unimodal in log δ and a bounded 1-D search finds the maximiser.
Per-group δ: the groups decouple (block-diagonal curvature), Adam on log δ_g from the
scalar optimum. Validation: the scalar δ on a grid with the lowest predictive NLL (the
default grid is extended while its edge point is the best); every δ uses the same
standard-normal draws (common random numbers). A search that ends at the edge of its
range (the evidence search at its bounds 1e-8/1e8, the validation grid at its ends or its
extension limit) warns and says so in its record (:func:`tacitbayes.search.check_grid_edge`).
Under ``torch.distributed`` each rank reads its shard of the validation loader and the NLL
sums and counts are all-reduced, so every rank chooses the same δ.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from tacitbayes.batches import n_examples
from tacitbayes.data_pass import data_pass
from tacitbayes.distributed import all_reduce_
from tacitbayes.errors import InputError
from tacitbayes.posteriors.laplace_protocol import TunableLaplace
from tacitbayes.search import check_grid_edge

__all__ = [
    "LOG_DELTA_BOUNDS",
    "marglik_edge",
    "predictive_nll",
    "tune_marglik",
    "tune_validation",
]

LOG_DELTA_BOUNDS = (math.log(1e-8), math.log(1e8))
PRIOR_STRUCTURES = ("scalar", "layerwise")
MAX_EXTENSION = 8  # half decades beyond the edge of the default validation grid
EDGE_TOL = 1e-4  # in log δ: a bounded search or a clamped Adam run ends this close to a bound
LOW_DELTA = "the posterior is as wide as the prior allows and may underfit"
HIGH_DELTA = "the posterior may predict like MAP"


def _scalar_marglik(la: TunableLaplace) -> Tensor:
    """argmax over scalar δ of log Z(δ): bounded Brent search on log δ."""

    def objective(t: float) -> float:
        with torch.no_grad():
            d = torch.tensor(math.exp(t), dtype=la.dtype, device=la.device)
            return -float(la.log_marginal_likelihood(d))

    res = minimize_scalar(
        objective, bounds=LOG_DELTA_BOUNDS, method="bounded", options={"xatol": 1e-7}
    )
    return torch.tensor(math.exp(float(res.x)), dtype=la.dtype, device=la.device)


def tune_marglik(la: TunableLaplace, prior_structure: str, n_steps: int, lr: float) -> Tensor:
    """δ maximising the Laplace evidence: scalar (Brent) or per group (Adam on log δ_g)."""
    if prior_structure not in PRIOR_STRUCTURES:
        raise InputError(
            f"unknown prior_structure {prior_structure!r}; choose one of {list(PRIOR_STRUCTURES)}"
        )
    scalar = _scalar_marglik(la)
    if prior_structure == "scalar" or len(la.groups) == 1:
        return scalar
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise InputError(f"n_steps must be a positive integer, got {n_steps!r}")
    if not (0 < float(lr) < math.inf):
        raise InputError(f"lr must be finite and > 0, got {lr}")
    log_delta = scalar.log().expand(len(la.groups)).clone().requires_grad_(True)
    opt = torch.optim.Adam([log_delta], lr=float(lr))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_steps)
    best, best_value = log_delta.detach().clone(), -math.inf
    for _ in range(n_steps + 1):
        opt.zero_grad()
        value = la.log_marginal_likelihood(log_delta.exp())
        if float(value.detach()) > best_value:
            best, best_value = log_delta.detach().clone(), float(value.detach())
        (-value).backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            log_delta.clamp_(*LOG_DELTA_BOUNDS)
    return best.exp()


def marglik_edge(delta: Tensor) -> dict[str, Any]:
    """Edge record of an evidence search that chose ``delta`` in [1e-8, 1e8] (warns at a bound)."""
    return check_grid_edge(
        "Laplace prior precision (evidence)",
        [math.exp(b) for b in LOG_DELTA_BOUNDS],
        delta,
        tol=EDGE_TOL,
        log=True,
        low=LOW_DELTA,
        high=HIGH_DELTA,
        remedy="the evidence still rises at the bound; check the curvature and the data",
        stacklevel=3,
    )


def predictive_nll(
    la: TunableLaplace,
    loader: Iterable[Any],
    n_samples: int = 32,
    linearized: bool = True,
    prior_precision: float | Tensor | None = None,
    link_approx: str = "mc",
) -> float:
    """Mean NLL of the predictive on (x, y) batches: −log p̄(y|x), or Gaussian for regression.

    ``link_approx`` "mc": ``la.predict``; "probit"/"bridge": the closed-form glm predictive.
    """
    saved = la.prior_precision
    if prior_precision is not None:
        la.prior_precision = prior_precision
    total, count = 0.0, 0
    try:
        for x, y in data_pass(loader, what="val_loader"):
            if link_approx == "mc":
                out = la.predict(x, n_samples=n_samples, linearized=linearized)
            else:
                out = la(x, pred_type="glm" if linearized else "nn", link_approx=link_approx)
            y = y.to(la.device)
            if isinstance(out, tuple):
                mean, var = out
                y = y.reshape(mean.shape).to(mean.dtype)
                nll = 0.5 * (torch.log(2 * math.pi * var) + (y - mean).square() / var).sum(-1)
            else:
                nll = -out.gather(-1, y.long().unsqueeze(-1)).squeeze(-1).clamp_min(1e-12).log()
            total += float(nll.sum())
            count += n_examples(x)
    finally:
        la.prior_precision = saved
    sums = all_reduce_(torch.tensor([total, count], dtype=torch.float64, device=la.device))
    total, count = float(sums[0]), int(sums[1])
    if count == 0:
        raise InputError("val_loader holds no example")
    return total / count


def tune_validation(
    la: TunableLaplace,
    val_loader: Iterable[Any],
    grid: Sequence[float] | Tensor | None,
    n_samples: int,
    linearized: bool,
    link_approx: str = "mc",
) -> tuple[Tensor, list[tuple[float, float]], dict[str, Any]]:
    """The scalar δ with the lowest validation NLL, every (δ, NLL) tried (in order), the edge record.

    Default grid: current δ × 10^[−3, 3] in half decades; when its best point is at an edge,
    the search steps on outwards by half decades while the NLL improves (at most
    ``MAX_EXTENSION`` steps, within [1e-8, 1e8]). A δ at the edge of what was tried (a
    given grid's end, or the extension limit or bounds) warns (RuntimeWarning).
    """
    extend = grid is None
    if grid is None:
        center = float(la.prior_precision.log().mean().exp())
        grid = [center * 10 ** (k / 2) for k in range(-6, 7)]
    values = [float(v) for v in torch.as_tensor(grid, dtype=torch.float64).reshape(-1)]
    if not values or any(not (0 < v < math.inf) for v in values):
        raise InputError(f"grid must hold finite prior precisions > 0, got {values}")

    def nll(v: float) -> float:
        if link_approx == "mc":  # the Monte-Carlo predictive, as before link_approx existed
            return predictive_nll(la, val_loader, n_samples, linearized, v)
        return predictive_nll(la, val_loader, n_samples, linearized, v, link_approx)

    tried = [(v, nll(v)) for v in values]
    best = min(range(len(tried)), key=lambda i: tried[i][1])
    if extend and best in (0, len(tried) - 1):
        step = 10**0.5 if best else 10**-0.5
        value, score = tried[best]
        for _ in range(MAX_EXTENSION):
            v = value * step
            if not LOG_DELTA_BOUNDS[0] <= math.log(v) <= LOG_DELTA_BOUNDS[1]:
                break
            tried.append((v, nll(v)))
            if tried[-1][1] >= score:
                break
            value, score = tried[-1]
    chosen = min(tried, key=lambda t: t[1])[0]
    record = check_grid_edge(
        "Laplace prior precision (validation NLL)",
        [v for v, _ in tried],
        chosen,
        low=LOW_DELTA,
        high=HIGH_DELTA,
        remedy="widen the grid" if not extend else "pass a wider grid",
        stacklevel=3,
    )
    return torch.tensor(chosen, dtype=la.dtype, device=la.device), tried, record
