"""The IBVI theorem for overparametrized linear regression, in closed form.

For y = Xw with X ∈ R^{n×d}, d > n, and q = N(μ, SSᵀ) started at the prior
N(μ₀, S₀S₀ᵀ), gradient flow on E_q‖y − Xw‖² = ‖y − Xμ‖² + ‖XS‖²_F converges to
μ* = μ₀ + X⁺(y − Xμ₀) and S* = (I − X⁺X)S₀, the expected-loss minimiser closest to
the prior in 2-Wasserstein distance. Everything here works in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tacitbayes.errors import InputError

__all__ = [
    "expected_squared_loss",
    "gaussian_w2",
    "linear_regression_limit",
    "null_space_projector",
    "psd_sqrt",
]

DT = torch.float64


def _matrix(a: object, what: str) -> Tensor:
    if not isinstance(a, Tensor):
        raise InputError(f"{what} must be a torch.Tensor, got {type(a).__name__}")
    if not a.dtype.is_floating_point:
        raise InputError(f"{what} must be a floating-point tensor, got dtype {a.dtype}")
    if not bool(torch.isfinite(a).all()):
        raise InputError(f"{what} contains NaN or infinite values")
    return a.to(DT)


def _check(X: Tensor, y: Tensor, mu: Tensor, S: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    X, y, mu, S = (_matrix(a, w) for a, w in ((X, "X"), (y, "y"), (mu, "mu"), (S, "S")))
    if X.ndim != 2:
        raise InputError(f"X must have shape (n, d), got {tuple(X.shape)}")
    n, d = X.shape
    if y.reshape(-1).shape != (n,) or y.ndim > 2:
        raise InputError(f"y must have shape ({n},) or ({n}, 1) to match X, got {tuple(y.shape)}")
    if mu.reshape(-1).shape != (d,) or mu.ndim > 2:
        raise InputError(f"mu must have shape ({d},) to match X, got {tuple(mu.shape)}")
    if S.ndim != 2 or S.shape[0] != d:
        raise InputError(f"S must have shape ({d}, R) to match X, got {tuple(S.shape)}")
    return X, y.reshape(-1), mu.reshape(-1), S


def null_space_projector(X: Tensor) -> Tensor:
    """I − X⁺X: the orthogonal projector onto the null space of X (float64)."""
    X = _matrix(X, "X")
    if X.ndim != 2:
        raise InputError(f"X must have shape (n, d), got {tuple(X.shape)}")
    return torch.eye(X.shape[1], dtype=DT) - torch.linalg.pinv(X) @ X


def linear_regression_limit(X: Tensor, y: Tensor, mu0: Tensor, S0: Tensor) -> tuple[Tensor, Tensor]:
    """(μ*, S*) = (μ₀ + X⁺(y − Xμ₀), (I − X⁺X)S₀), in float64; μ* of shape (d,), S* of shape (d, R)."""
    X, y, mu0, S0 = _check(X, y, mu0, S0)
    X_pinv = torch.linalg.pinv(X)
    mu_star = mu0 + X_pinv @ (y - X @ mu0)
    S_star = S0 - X_pinv @ (X @ S0)
    return mu_star, S_star


def expected_squared_loss(X: Tensor, y: Tensor, mu: Tensor, S: Tensor) -> Tensor:
    """E_{w~N(μ,SSᵀ)}‖y − Xw‖² = ‖y − Xμ‖² + ‖XS‖²_F (differentiable, in the inputs' dtype)."""
    _check(X, y, mu, S)
    residual = y.reshape(-1) - X @ mu.reshape(-1)
    return residual.pow(2).sum() + (X @ S).pow(2).sum()


def psd_sqrt(A: Tensor) -> Tensor:
    """A^{1/2} of a symmetric positive semi-definite matrix via eigh (negative round-off clipped)."""
    A = _matrix(A, "A")
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise InputError(f"A must be a square matrix, got shape {tuple(A.shape)}")
    evals, evecs = torch.linalg.eigh(0.5 * (A + A.T))
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def gaussian_w2(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """W₂ between Gaussians: √(‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₂^{1/2}Σ₁Σ₂^{1/2})^{1/2}))."""
    mu1, mu2 = _matrix(mu1, "mu1").reshape(-1), _matrix(mu2, "mu2").reshape(-1)
    cov1, cov2 = _matrix(cov1, "cov1"), _matrix(cov2, "cov2")
    d = mu1.numel()
    if mu2.numel() != d or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise InputError(
            f"shapes do not match: mu1 {tuple(mu1.shape)}, mu2 {tuple(mu2.shape)}, "
            f"cov1 {tuple(cov1.shape)}, cov2 {tuple(cov2.shape)}"
        )
    root2 = psd_sqrt(cov2)
    cross = psd_sqrt(root2 @ cov1 @ root2)
    bures = torch.trace(cov1) + torch.trace(cov2) - 2 * torch.trace(cross)
    return float((mu1 - mu2).pow(2).sum() + bures.clamp_min(0)) ** 0.5
