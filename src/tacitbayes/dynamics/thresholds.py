"""Stability thresholds of (variational) gradient descent on a quadratic, docs/methods.md §3.

Along an eigendirection (λ, v) of the loss Hessian, with a = mᵀv the coordinate of the
mean, variational GD with step ρ, noise σ and N_s samples moves a to
a' = a − ρλ(a + ε̄), ε̄ ~ N(0, σ²/N_s), so

    E[a'²] / a² = (1 − ρλ)² + ρ²λ²σ² / (N_s a²)                 (the update factor)

and the expected loss ½λa² decreases iff this is < 1, i.e. iff λ(1 + σ²/(N_s a²)) < 2/ρ.
With c = (λa)², the squared gradient component (so a² = c/λ²), and z = N_s c/σ², the
condition reads λ(1 + λ²/z) < 2/ρ, i.e. λ³ + zλ − 2z/ρ < 0.  For z > 0 this cubic is
increasing in λ with exactly one real root, by the hyperbolic form of Cardano's formula

    h_crit = 2√(z/3) · sinh(⅓ · arsinh((3/ρ)√(3/z)))

which tends to 2/ρ (plain GD) as z → ∞ and to (2z/ρ)^{1/3} as z → 0.  These formulas agree
with docs/methods.md §3 (see tests/dynamics/test_thresholds.py, which derives them again).

Note: on an exact quadratic the noise is additive, so the iterates of VGD diverge only for
λ > 2/ρ; h_crit is where, at the current gradient level c, a step stops decreasing the
expected loss — equivalently where a² equals the stationary variance ρλσ²/(N_s(2 − ρλ))
of the noisy iteration, the level the sharp directions settle at.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tacitbayes.errors import InputError

__all__ = [
    "expected_update_factor",
    "momentum_stability_threshold",
    "stability_condition",
    "vl_stability_threshold",
    "z_from_gradient",
    "z_reference",
]


def _array(name: str, value: Any, allow_inf: bool = False) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a number or an array of numbers") from exc
    if np.isnan(arr).any() or (not allow_inf and np.isinf(arr).any()):
        raise InputError(f"{name} must be finite{' or +inf' if allow_inf else ''}, got {value!r}")
    return arr


def _positive(name: str, value: Any, allow_inf: bool = False) -> np.ndarray:
    arr = _array(name, value, allow_inf)
    if (arr <= 0).any():
        raise InputError(f"{name} must be positive, got {value!r}")
    return arr


def _nonnegative(name: str, value: Any, allow_inf: bool = False) -> np.ndarray:
    arr = _array(name, value, allow_inf)
    if (arr < 0).any():
        raise InputError(f"{name} must be non-negative, got {value!r}")
    return arr


def _out(arr: np.ndarray, *inputs: Any) -> Any:
    """A Python float for scalar inputs, a tensor if any input was a tensor, else an array."""
    if any(isinstance(x, torch.Tensor) for x in inputs):
        return torch.as_tensor(arr)
    if arr.ndim == 0:
        return arr.item()
    return arr


def vl_stability_threshold(lr: Any, z: Any) -> Any:
    """h_crit = 2√(z/3)·sinh(⅓·arsinh((3/ρ)√(3/z))), the real root of λ³ + zλ − 2z/ρ; 2/ρ at z = ∞.

    Vectorised (numpy broadcasting) over ``lr`` (ρ > 0) and ``z`` ≥ 0 (``inf`` allowed).
    """
    rho = _positive("lr", lr)
    zz = _nonnegative("z", z, allow_inf=True)
    rho, zz = np.broadcast_arrays(rho, zz)
    out = np.empty(rho.shape)
    inf = np.isinf(zz)
    tiny = ~inf & (zz < 1e-200)  # √(3/z) would overflow: use the z → 0 limit λ³ = 2z/ρ
    mid = ~inf & ~tiny
    out[inf] = 2.0 / rho[inf]
    out[tiny] = np.cbrt(2.0 * zz[tiny] / rho[tiny])
    z_m, r_m = zz[mid], rho[mid]
    out[mid] = (
        2.0 * np.sqrt(z_m / 3.0) * np.sinh(np.arcsinh((3.0 / r_m) * np.sqrt(3.0 / z_m)) / 3.0)
    )
    return _out(out, lr, z)


def expected_update_factor(lam: Any, a: Any, lr: Any, sigma: Any, n_samples: Any) -> Any:
    """E[a'²]/a² = (1 − ρλ)² + ρ²λ²σ²/(N_s a²) for one VGD step along a direction of curvature λ."""
    lam_ = _array("lam", lam)
    a_ = _array("a", a)
    if (a_ == 0).any():
        raise InputError("a must be non-zero (the factor is relative to a²)")
    rho = _positive("lr", lr)
    sig = _nonnegative("sigma", sigma)
    ns = _positive("n_samples", n_samples)
    factor = (1.0 - rho * lam_) ** 2 + rho**2 * lam_**2 * sig**2 / (ns * a_**2)
    return _out(np.asarray(factor, dtype=np.float64), lam, a, lr, sigma, n_samples)


def stability_condition(lam: Any, a: Any, lr: Any, sigma: Any, n_samples: Any) -> Any:
    """(1 − ρλ)² + ρ²λ²σ²/(N_s a²) < 1: a VGD step decreases the expected loss along this direction."""
    factor = expected_update_factor(lam, a, lr, sigma, n_samples)
    if isinstance(factor, torch.Tensor):
        return factor < 1.0
    if isinstance(factor, float):
        return factor < 1.0
    return np.asarray(factor) < 1.0


def z_from_gradient(sigma: Any, n_samples: Any, c: Any) -> Any:
    """z = N_s c/σ², with c = (gᵀv)² the squared gradient component along the direction (∞ at σ = 0)."""
    sig = _nonnegative("sigma", sigma)
    ns = _positive("n_samples", n_samples)
    cc = _nonnegative("c", c)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sig == 0, np.inf, ns * cc / np.where(sig == 0, 1.0, sig) ** 2)
    return _out(np.asarray(z, dtype=np.float64), sigma, n_samples, c)


def z_reference(sigma: Any, n_samples: Any, grad_sq_norm: Any, n_params: Any) -> Any:
    """z = N_s‖g‖²/tr Σ = N_s‖g‖²/(P σ²), the variant of the reference code (Avra98/eos-ivon)."""
    per_param = _nonnegative("grad_sq_norm", grad_sq_norm) / _positive("n_params", n_params)
    return z_from_gradient(sigma, n_samples, per_param)


def momentum_stability_threshold(lr: Any, beta1: Any) -> Any:
    """2(1 + β₁)/(α(1 − β₁)): the largest stable curvature of g ← β₁g + (1 − β₁)∇, μ ← μ − αg.

    This is heavy-ball momentum with step α(1 − β₁), whose quadratic stability limit is
    (2 + 2β₁)/(α(1 − β₁)); for IVON it bounds the preconditioned sharpness
    λ_max(D^{-1/2} H D^{-1/2}), D = diag(h + δ) (α multiplied by h₀ + δ with ``rescale_lr``).
    """
    rho = _positive("lr", lr)
    beta = _nonnegative("beta1", beta1)
    if (beta >= 1).any():
        raise InputError(f"beta1 must lie in [0, 1), got {beta1!r}")
    return _out(2.0 * (1.0 + beta) / (rho * (1.0 - beta)), lr, beta1)
