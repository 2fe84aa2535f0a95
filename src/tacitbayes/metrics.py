"""Evaluation metrics for probabilistic classifiers.

Every metric takes ``probs``, a floating-point tensor of shape ``(N, C)`` whose
rows are predicted class probabilities, and (where needed) ``labels``, an
integer tensor of shape ``(N,)`` with values in ``[0, C)``. Inputs are checked
and bad ones raise :class:`tacitbayes.errors.InputError`. Scalar metrics return
Python floats and are computed in float64.

Calibration binning (:func:`ece`, :func:`reliability_bins`) follows Guo et al.
(2017): ``n_bins`` equal-width bins over ``[0, 1]`` that are closed on the
right, ``(k/n, (k+1)/n]`` (the first bin also holds 0), so a confidence of
exactly 1.0 falls in the last bin. ``torchmetrics``' ``multiclass_calibration_error``
gives the same value except that it puts confidences equal to 1.0 into an extra
bin of their own and works in float32; it has no public per-bin output, so one
binning routine here serves both the scalar ECE and the reliability diagram.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from tacitbayes.errors import InputError

__all__ = [
    "accuracy",
    "auroc_from_scores",
    "brier",
    "ece",
    "evaluate",
    "logit_variance",
    "max_probability",
    "mutual_information",
    "nll",
    "ood_auroc",
    "predictive_entropy",
    "reliability_bins",
    "total_variation",
]

#: Largest allowed ``|sum_c p_c - 1|`` for a row of probabilities.
ROW_SUM_TOL = 1e-3
#: Slack allowed outside ``[0, 1]`` for single probabilities (float round-off).
RANGE_TOL = 1e-6

OODScore = Literal["max_prob", "entropy"]
_OOD_SCORES = ("max_prob", "entropy")


# --------------------------------------------------------------------------- checks


def _check_probs(probs: Any, name: str = "probs") -> torch.Tensor:
    """Validate a probability matrix; return it detached, float64, clamped to [0, 1]."""
    if not isinstance(probs, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(probs).__name__}")
    if not probs.dtype.is_floating_point:
        raise InputError(f"{name} must be a floating-point tensor, got dtype {probs.dtype}")
    if probs.dim() != 2:
        raise InputError(f"{name} must have shape (N, C), got shape {tuple(probs.shape)}")
    n, c = probs.shape
    if n == 0 or c == 0:
        raise InputError(f"{name} must be non-empty, got shape {tuple(probs.shape)}")
    p = probs.detach().to(torch.float64)
    if not bool(torch.isfinite(p).all()):
        raise InputError(f"{name} contains NaN or infinite values")
    lo, hi = float(p.min()), float(p.max())
    if lo < -RANGE_TOL or hi > 1.0 + RANGE_TOL:
        raise InputError(f"{name} must lie in [0, 1], got values in [{lo:.6g}, {hi:.6g}]")
    dev = float((p.sum(dim=1) - 1.0).abs().max())
    if dev > ROW_SUM_TOL:
        raise InputError(
            f"rows of {name} must sum to 1 (tolerance {ROW_SUM_TOL:g}), worst deviation {dev:.6g}"
        )
    return p.clamp(0.0, 1.0)


def _check_labels(labels: Any, n: int, c: int) -> torch.Tensor:
    """Validate integer labels of shape (n,) in [0, c); return them as int64."""
    if not isinstance(labels, torch.Tensor):
        raise InputError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    dt = labels.dtype
    if dt.is_floating_point or dt.is_complex or dt == torch.bool:
        raise InputError(f"labels must be an integer tensor, got dtype {dt}")
    if labels.dim() != 1:
        raise InputError(f"labels must have shape (N,), got shape {tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise InputError(f"labels has {labels.shape[0]} entries but probs has {n} rows")
    y = labels.detach().to(torch.int64)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= c:
        raise InputError(f"labels must lie in [0, {c}) for {c} classes, got values in [{lo}, {hi}]")
    return y


def _check_pair(probs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    p = _check_probs(probs)
    y = _check_labels(labels, p.shape[0], p.shape[1]).to(p.device)
    return p, y


def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise InputError(f"n_bins must be a positive integer, got {n_bins!r}")
    return n_bins


# ------------------------------------------------------------- implementations (checked)


def _accuracy(p: torch.Tensor, y: torch.Tensor) -> float:
    return float((p.argmax(dim=1) == y).to(torch.float64).mean())


def _nll(p: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    py = p.gather(1, y.unsqueeze(1)).squeeze(1)
    return float(-py.clamp_min(eps).log().mean())


def _brier(p: torch.Tensor, y: torch.Tensor) -> float:
    onehot = torch.nn.functional.one_hot(y, num_classes=p.shape[1]).to(p.dtype)
    return float(((p - onehot) ** 2).sum(dim=1).mean())


def _bins(p: torch.Tensor, y: torch.Tensor, n_bins: int) -> dict[str, torch.Tensor]:
    """Per-bin count, summed confidence and summed correctness (float64)."""
    conf, pred = p.max(dim=1)
    correct = (pred == y).to(torch.float64)
    edges = torch.arange(n_bins + 1, dtype=torch.float64, device=p.device) / n_bins
    # right=False: index k such that edges[k] < conf <= edges[k + 1] (0 goes to bin 0).
    idx = torch.bucketize(conf, edges[1:-1], right=False)
    zeros = torch.zeros(n_bins, dtype=torch.float64, device=p.device)
    count = zeros.scatter_add(0, idx, torch.ones_like(conf))
    conf_sum = zeros.scatter_add(0, idx, conf)
    acc_sum = zeros.scatter_add(0, idx, correct)
    return {"edges": edges, "count": count, "conf_sum": conf_sum, "acc_sum": acc_sum}


def _ece(p: torch.Tensor, y: torch.Tensor, n_bins: int) -> float:
    b = _bins(p, y, n_bins)
    # sum_b |B_b|/N * |acc_b - conf_b| = sum_b |acc_sum_b - conf_sum_b| / N
    return float((b["acc_sum"] - b["conf_sum"]).abs().sum() / p.shape[0])


# ------------------------------------------------------------------------- public API


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy: (1/N) sum_i 1[argmax_c p_ic = y_i]."""
    return _accuracy(*_check_pair(probs, labels))


def nll(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-12) -> float:
    """Negative log-likelihood: -(1/N) sum_i log max(p_{i,y_i}, eps)."""
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0.0 < eps < 1.0:
        raise InputError(f"eps must be a number in (0, 1), got {eps!r}")
    return _nll(*_check_pair(probs, labels), float(eps))


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error: sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over equal-width bins of max_c p_ic."""
    n_bins = _check_n_bins(n_bins)
    return _ece(*_check_pair(probs, labels), n_bins)


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Brier score: (1/N) sum_i sum_c (p_ic - 1[c = y_i])^2, in [0, 2]."""
    return _brier(*_check_pair(probs, labels))


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy per row: H_i = -sum_c p_ic log p_ic (0 log 0 = 0), in nats."""
    p = _check_probs(probs)
    return torch.special.entr(p).sum(dim=1).to(probs.dtype)


def max_probability(probs: torch.Tensor) -> torch.Tensor:
    """Confidence per row: max_c p_ic."""
    p = _check_probs(probs)
    return p.max(dim=1).values.to(probs.dtype)


def ood_auroc(
    probs_in: torch.Tensor, probs_out: torch.Tensor, score: OODScore = "max_prob"
) -> float:
    """AUROC of OOD (positive) vs in-distribution with score s = -max_c p_c or H(p): P(s_out > s_in) + P(s_out = s_in)/2."""
    if score not in _OOD_SCORES:
        raise InputError(f"score must be one of {', '.join(_OOD_SCORES)}, got {score!r}")
    p_in = _check_probs(probs_in, "probs_in")
    p_out = _check_probs(probs_out, "probs_out")
    if p_in.shape[1] != p_out.shape[1]:
        raise InputError(
            f"probs_in and probs_out must have the same number of classes, "
            f"got {p_in.shape[1]} and {p_out.shape[1]}"
        )
    if score == "max_prob":
        s_in, s_out = -p_in.max(dim=1).values, -p_out.max(dim=1).values
    else:
        s_in = torch.special.entr(p_in).sum(dim=1)
        s_out = torch.special.entr(p_out).sum(dim=1)
    return auroc_from_scores(s_in, s_out)


def mutual_information(sample_probs: torch.Tensor) -> torch.Tensor:
    """BALD score per input: H[(1/S) Σ_s p_s] − (1/S) Σ_s H[p_s]; sample_probs of shape (S, N, C)."""
    if not isinstance(sample_probs, torch.Tensor) or sample_probs.ndim != 3:
        raise InputError("sample_probs must be a tensor of shape (S, N, C)")
    p = sample_probs.to(torch.float64)
    total = torch.special.entr(p.mean(0)).sum(-1)
    return (total - torch.special.entr(p).sum(-1).mean(0)).clamp_min(0.0)


def logit_variance(sample_logits: torch.Tensor) -> torch.Tensor:
    """Summed predictive variance of the logits per input: Σ_c Var_s f_c; input (S, N, C)."""
    if not isinstance(sample_logits, torch.Tensor) or sample_logits.ndim != 3:
        raise InputError("sample_logits must be a tensor of shape (S, N, C)")
    return sample_logits.to(torch.float64).var(0, unbiased=False).sum(-1)


def auroc_from_scores(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    """AUROC of OOD (positive) against in-distribution for scores that grow with uncertainty."""
    s_in, s_out = scores_in.reshape(-1), scores_out.reshape(-1)
    if not (len(s_in) and len(s_out)):
        raise InputError("both score sets must be non-empty")
    if not (torch.isfinite(s_in).all() and torch.isfinite(s_out).all()):
        raise InputError("scores must be finite")
    target = np.concatenate(
        [np.zeros(len(s_in), dtype=np.int64), np.ones(len(s_out), dtype=np.int64)]
    )
    scores = torch.cat([s_in, s_out]).double().cpu().numpy()
    return float(roc_auc_score(target, scores))


def total_variation(probs: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over inputs of the total-variation distance ½ Σ_c |p_c − q_c| to ``reference``."""
    p, q = _check_probs(probs), _check_probs(reference, "reference")
    if p.shape != q.shape:
        raise InputError(f"probs {tuple(p.shape)} and reference {tuple(q.shape)} differ in shape")
    return float(0.5 * (p - q).abs().sum(-1).mean())


def evaluate(
    probs: torch.Tensor,
    labels: torch.Tensor,
    reference: torch.Tensor | None = None,
    decimals: int | None = None,
) -> dict[str, float]:
    """Accuracy, NLL, ECE (15 bins) and Brier score as a dict keyed by those names.

    ``reference`` (e.g. MAP's probabilities on the same inputs) adds ``"tv"``, the mean
    total-variation distance to it (:func:`total_variation`); ``decimals`` rounds every value.
    """
    p, y = _check_pair(probs, labels)
    out = {
        "accuracy": _accuracy(p, y),
        "nll": _nll(p, y, 1e-12),
        "ece": _ece(p, y, 15),
        "brier": _brier(p, y),
    }
    if reference is not None:
        out["tv"] = total_variation(p, reference)
    if decimals is not None:
        out = {k: round(v, decimals) for k, v in out.items()}
    return out


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, Any]:
    """Per-bin mean confidence, accuracy and count over equal-width bins (k/n, (k+1)/n] of max_c p_ic.

    Returns a dict with ``confidence``, ``accuracy`` (0.0 for empty bins), ``count``
    (lists of length ``n_bins``), ``bin_edges`` (length ``n_bins + 1``), ``n_bins``
    and ``ece`` (equal to :func:`ece` with the same ``n_bins``).
    """
    n_bins = _check_n_bins(n_bins)
    p, y = _check_pair(probs, labels)
    b = _bins(p, y, n_bins)
    count = b["count"]
    denom = count.clamp_min(1.0)
    return {
        "confidence": (b["conf_sum"] / denom).tolist(),
        "accuracy": (b["acc_sum"] / denom).tolist(),
        "count": [int(k) for k in count.tolist()],
        "bin_edges": b["edges"].tolist(),
        "n_bins": n_bins,
        "ece": float((b["acc_sum"] - b["conf_sum"]).abs().sum() / p.shape[0]),
    }
