"""A Cholesky factor that survives near-singular curvature: jitter, a warning, never NaN.

``jittered_cholesky(M)`` factors M = L Lᵀ; when M is not numerically positive definite
it retries M + μI with μ = 10⁻¹⁰, 10⁻⁸, …, 10⁻⁴ times the mean diagonal, warns
(RuntimeWarning) with the μ used, and raises InputError if even the largest fails
(a non-finite or indefinite matrix is a bug upstream, not a rounding problem).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from tacitbayes.errors import InputError

__all__ = ["JITTERS", "jittered_cholesky"]

JITTERS = (1e-10, 1e-8, 1e-6, 1e-4)  # relative to the mean diagonal


def jittered_cholesky(M: Tensor, what: str = "the matrix", jitter: float = 0.0) -> Tensor:
    """Lower L with L Lᵀ = M + μI: μ = ``jitter``·mean(diag M) first, larger μ (with a warning) if needed."""
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise InputError(f"{what} must be a square matrix, got shape {tuple(M.shape)}")
    if not bool(torch.isfinite(M).all()):
        raise InputError(f"{what} holds NaN or infinite entries")
    scale = float(M.diagonal().abs().mean()) if len(M) else 1.0
    scale = scale if scale > 0 else 1.0
    eye = torch.eye(len(M), dtype=M.dtype, device=M.device)
    for rel in (jitter, *(j for j in JITTERS if j > jitter)):
        L, info = torch.linalg.cholesky_ex(M + (rel * scale) * eye if rel > 0 else M)
        if int(info) == 0:
            if rel > jitter:
                warnings.warn(
                    f"{what} is not numerically positive definite; factored with jitter "
                    f"{rel:g} × its mean diagonal added",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return L
    raise InputError(
        f"{what} is not positive definite even with jitter {JITTERS[-1]:g} × its mean "
        "diagonal; use a larger prior precision or float64"
    )
