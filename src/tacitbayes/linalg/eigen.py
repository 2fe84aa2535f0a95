"""A symmetric eigendecomposition that survives ill-conditioned curvature: retries, a warning, never NaN.

``symmetric_eigh(M)`` returns (λ, Q) with ½(M + Mᵀ) = Q diag(λ) Qᵀ, first by a plain
``torch.linalg.eigh`` of ½(M + Mᵀ). When that fails to converge (clustered or ill-conditioned
input, mostly float32) it retries in float64, then on M + μI with μ = 10⁻¹⁰, 10⁻⁸, 10⁻⁶ times
the mean |diagonal| (in float64; M + μI has M's eigenvectors, so μ is taken back off the
eigenvalues), warns (RuntimeWarning) with the remedy used, and raises InputError if all fail.
A non-finite M is an InputError up front (eigh would return NaN silently). Batches
(…, n, n) are decomposed matrix by matrix, as by ``torch.linalg.eigh``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from tacitbayes.errors import InputError

__all__ = ["EIGH_JITTERS", "psd_projection", "symmetric_eigh"]

EIGH_JITTERS = (1e-10, 1e-8, 1e-6)  # relative to the mean |diagonal|


def _shift(S: Tensor, rel: float) -> Tensor:
    """μ = rel·mean|diag S| per matrix, shape (…,) (rel where the diagonal is all zero)."""
    scale = S.diagonal(dim1=-2, dim2=-1).abs().mean(-1)
    return rel * torch.where(scale > 0, scale, torch.ones_like(scale))


def symmetric_eigh(M: Tensor, what: str = "the matrix") -> tuple[Tensor, Tensor]:
    """(λ ascending, Q) with ½(M + Mᵀ) = Q diag(λ) Qᵀ; float64 and jittered retries (with a warning) if eigh fails."""
    if M.ndim < 2 or M.shape[-1] != M.shape[-2]:
        raise InputError(f"{what} must be a square matrix, got shape {tuple(M.shape)}")
    if not bool(torch.isfinite(M).all()):
        raise InputError(
            f"{what} holds NaN or infinite entries; check the model and data for non-finite values"
        )
    S = 0.5 * (M + M.mT)
    try:
        return torch.linalg.eigh(S)
    except torch.linalg.LinAlgError:
        pass
    S64 = S.to(torch.float64)
    eye = torch.eye(S.shape[-1], dtype=torch.float64, device=S.device)
    for rel in (0.0, *EIGH_JITTERS) if S.dtype != torch.float64 else EIGH_JITTERS:
        mu = _shift(S64, rel)
        try:
            lam, Q = torch.linalg.eigh(S64 + mu[..., None, None] * eye if rel > 0 else S64)
        except torch.linalg.LinAlgError:
            continue
        remedy = "in float64" + (f" with jitter {rel:g} × its mean |diagonal|" if rel > 0 else "")
        warnings.warn(
            f"torch.linalg.eigh did not converge on {what}; eigendecomposed it {remedy}",
            RuntimeWarning,
            stacklevel=2,
        )
        return (lam - mu[..., None]).to(M.dtype), Q.to(M.dtype)
    raise InputError(
        f"torch.linalg.eigh did not converge on {what} even in float64 with jitter "
        f"{EIGH_JITTERS[-1]:g} × its mean |diagonal|; rescale it or use a larger prior precision"
    )


def psd_projection(M: Tensor, what: str = "the matrix") -> Tensor:
    """Q diag(max(λ, 0)) Qᵀ for ½(M + Mᵀ) = Q diag(λ) Qᵀ: the nearest PSD matrix in Frobenius norm.

    For curvature factors that are PSD by construction (KFAC's E[a aᵀ] and E[g gᵀ]) whose
    rounding left eigenvalues slightly below zero; such a factor times a large one would
    otherwise make a precision indefinite.
    """
    lam, Q = symmetric_eigh(M, what)
    if bool((lam >= 0).all()):
        return 0.5 * (M + M.mT)
    return (Q * lam.clamp_min(0)) @ Q.mT
