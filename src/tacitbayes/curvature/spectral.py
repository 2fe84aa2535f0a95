"""Matrix-free spectral estimates of a symmetric operator A ∈ R^{n×n}.

``op`` can be anything with ``op.shape == (n, n)`` and ``op @ v`` for a flat vector v
(a :class:`~tacitbayes.curvature.operators.LinearOperator`, a dense Tensor, ...).  Its dtype
and device are read from ``op.dtype`` / ``op.device`` when present.  Operators that accept
blocks (LinearOperators and Tensors) get the probe vectors of the stochastic estimators a
block at a time (``op @ V`` with V of shape (n, b)), which amortises the network passes.

Random vectors are drawn on the CPU from ``generator`` (or a fresh generator seeded with
``seed``; the global RNG when both are None) and moved to the operator's device, so results
are reproducible across devices. Under ``torch.distributed`` the operators' products are
all-reduced and these routines need no change: pass ``seed`` (or identically seeded
generators) so every rank draws the same vectors and takes the same decisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tacitbayes.curvature.operators import LinearOperator
from tacitbayes.errors import InputError

__all__ = [
    "DiagonalEstimate",
    "EigenResult",
    "PowerResult",
    "TraceEstimate",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "power_iteration",
    "top_eigenvalues",
]


# --------------------------------------------------------------------------- results


@dataclass
class EigenResult:
    """Top eigenpairs from :func:`top_eigenvalues`."""

    eigenvalues: Tensor  # (k,), descending
    eigenvectors: Tensor | None = field(repr=False)  # (n, k) orthonormal columns, or None
    residuals: Tensor  # (k,) Ritz residual estimates ‖A y − θ y‖
    n_matvecs: int
    converged: bool
    ritz_history: list[float] = field(default_factory=list, repr=False)  # top Ritz value per matvec


@dataclass
class PowerResult:
    """Dominant eigenpair from :func:`power_iteration`."""

    eigenvalue: float
    eigenvector: Tensor = field(repr=False)  # (n,), unit norm
    residual: float  # ‖A v − λ v‖
    n_matvecs: int
    converged: bool

    def __float__(self) -> float:
        return self.eigenvalue


@dataclass
class TraceEstimate:
    """Hutchinson estimate of tr(A); ``float(result)`` is the estimate."""

    estimate: float
    stderr: float  # standard error of the mean of the samples (nan for one sample)
    n_samples: int
    samples: Tensor = field(repr=False)  # (n_samples,) the individual vᵀ A v

    def __float__(self) -> float:
        return self.estimate


@dataclass
class DiagonalEstimate:
    """Hutchinson estimate of diag(A) with per-entry standard errors."""

    estimate: Tensor  # (n,)
    stderr: Tensor  # (n,) (nan for one sample)
    n_samples: int


# --------------------------------------------------------------------------- helpers


def _meta(op: Any) -> tuple[int, torch.dtype, torch.device]:
    shape = getattr(op, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise InputError(f"need a square operator with a .shape (n, n), got shape {shape}")
    dtype = getattr(op, "dtype", None) or torch.get_default_dtype()
    device = torch.device(getattr(op, "device", None) or "cpu")
    if not dtype.is_floating_point:
        raise InputError(f"need a floating-point operator, got dtype {dtype}")
    return int(shape[0]), dtype, device


def _rng(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    if generator is not None:
        return generator
    if seed is not None:
        return torch.Generator().manual_seed(int(seed))
    return None


def _random(
    shape: tuple[int, ...], kind: str, gen: torch.Generator | None, dtype, device
) -> Tensor:
    if kind == "rademacher":
        v = torch.randint(0, 2, shape, generator=gen).to(dtype).mul_(2).sub_(1)
    elif kind in ("gaussian", "normal"):
        v = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    else:
        raise InputError(f"unknown distribution {kind!r}; choose 'rademacher' or 'gaussian'")
    return v.to(device)


def _apply_block(op: Any, v: Tensor) -> Tensor:
    if isinstance(op, (LinearOperator, Tensor)):
        return op @ v
    return torch.stack([op @ c for c in v.unbind(1)], dim=1)


def _check_count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an int ≥ {minimum}, got {value!r}")
    return value


def _check_tol(tol: float) -> float:
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise InputError(f"tol must be a positive number, got {tol!r}")
    return float(tol)


def _unit(v: Tensor) -> Tensor:
    return v / v.norm()


def _orthogonalise(w: Tensor, basis: Tensor) -> Tensor:
    """w − V Vᵀ w, applied twice (classical Gram–Schmidt with reorthogonalisation)."""
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _grow(basis: Tensor, limit: int) -> Tensor:
    """The rows of ``basis`` in a buffer of twice as many rows (at most ``limit``)."""
    grown = basis.new_empty(min(2 * basis.shape[0], limit), basis.shape[1])
    grown[: basis.shape[0]] = basis
    return grown


def _tridiagonal(alphas: list[float], betas: list[float]) -> Tensor:
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if len(alphas) > 1:
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


def _tridiagonal_eigh(alphas: list[float], betas: list[float]) -> tuple[Tensor, Tensor]:
    """Ritz values (ascending) and vectors of the Lanczos tridiagonal T (in float64)."""
    return torch.linalg.eigh(_tridiagonal(alphas, betas))


# --------------------------------------------------------------------------- eigenvalues


def top_eigenvalues(
    op: Any,
    k: int = 1,
    max_iters: int | None = None,
    tol: float = 1e-6,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_eigenvectors: bool = False,
) -> EigenResult:
    """The k largest (algebraic) eigenvalues λ_1 ≥ … ≥ λ_k of symmetric A by Lanczos.

    Lanczos with full (twice-repeated Gram–Schmidt) reorthogonalisation builds
    A V_m = V_m T_m + β_m v_{m+1} e_mᵀ; the Ritz values of T_m approximate the eigenvalues.
    It stops when every wanted Ritz pair has residual β_m |s_mi| ≤ tol·|θ_i| + ε·‖T_m‖
    (ε the dtype's machine epsilon), or after ``max_iters`` matvecs (default min(n, 200)).

    When the Krylov space becomes invariant (β_m ≈ 0) the Ritz values are exact but copies of
    a repeated eigenvalue may be missing, so it restarts from a random vector orthogonal to
    the basis and stops at such a breakdown only once the latest restarted chain added
    nothing above the current k-th Ritz value.  Like every single-vector Krylov method it can
    still miss copies of an exactly repeated eigenvalue in unlucky cases.
    Memory: at most 2·m vectors of length n for m matvecs (the basis grows by doubling).
    """
    n, dtype, device = _meta(op)
    k = _check_count("k", k)
    if k > n:
        raise InputError(f"k={k} exceeds the operator size {n}")
    tol = _check_tol(tol)
    m_max = min(n, 200) if max_iters is None else min(n, _check_count("max_iters", max_iters))
    if m_max < k:
        raise InputError(f"max_iters={max_iters} is smaller than k={k}")
    gen = _rng(seed, generator)
    eps = torch.finfo(dtype).eps

    basis = torch.empty(min(m_max, 16), n, dtype=dtype, device=device)  # grows by doubling
    basis[0] = _unit(_random((n,), "gaussian", gen, dtype, device))
    alphas: list[float] = []
    betas: list[float] = []  # off-diagonal couplings (0 between restarted chains)
    chain_start, converged = 0, False
    history: list[float] = []
    theta = s = idx = res = None
    for j in range(m_max):
        w = op @ basis[j]
        alpha = float(basis[j] @ w)
        w = w - alpha * basis[j]
        if j > chain_start:
            w = w - betas[-1] * basis[j - 1]
        w = _orthogonalise(w, basis[: j + 1])
        beta = float(w.norm())
        alphas.append(alpha)

        theta, s = _tridiagonal_eigh(alphas, betas)
        history.append(float(theta[-1]))
        idx = torch.arange(j, max(j - k, -1), -1)  # top min(k, j+1) Ritz values, descending
        res = beta * s[-1, idx].abs()
        t_norm = float(theta.abs().max())
        done = j + 1 >= k and bool((res <= tol * theta[idx].abs() + eps * t_norm).all())
        breakdown = beta <= 100 * eps * t_norm  # rounding-level: the basis spans an invariant space
        if breakdown and done:  # did the chain that just closed reach into the top k?
            chain = torch.linalg.eigvalsh(_tridiagonal(alphas[chain_start:], betas[chain_start:]))
            kth = float(theta[idx[-1]])
            done = float(chain.max()) <= kth + tol * abs(kth) + eps * t_norm
        if done or j + 1 == m_max:
            converged = done or j + 1 == n
            break
        if j + 1 == basis.shape[0]:
            basis = _grow(basis, m_max)
        if not breakdown:
            basis[j + 1] = w / beta
            betas.append(beta)
        else:  # invariant subspace: restart from a random vector orthogonal to the basis
            w = _random((n,), "gaussian", gen, dtype, device)
            basis[j + 1] = _unit(_orthogonalise(w, basis[: j + 1]))
            betas.append(0.0)
            chain_start = j + 1

    assert theta is not None and s is not None and idx is not None and res is not None
    m = len(alphas)
    vectors = None
    if return_eigenvectors:
        vectors = basis[:m].T @ s[:, idx].to(dtype=dtype, device=device)
    return EigenResult(
        eigenvalues=theta[idx].to(dtype=dtype, device=device),
        eigenvectors=vectors,
        residuals=res.to(dtype=dtype),
        n_matvecs=len(alphas),
        converged=converged,
        ritz_history=history,
    )


def power_iteration(
    op: Any,
    max_iters: int = 1000,
    tol: float = 1e-6,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> PowerResult:
    """The dominant (largest |λ|) eigenpair of symmetric A by v ← Av/‖Av‖, λ = vᵀAv.

    Stops when the Rayleigh-quotient residual ‖Av − λv‖ ≤ (tol + ε)·|λ| (the relative
    Ritz-residual rule of :func:`top_eigenvalues`), or after ``max_iters`` matvecs.  The
    simple reference method: Lanczos needs far fewer matvecs.
    """
    n, dtype, device = _meta(op)
    max_iters = _check_count("max_iters", max_iters)
    tol = _check_tol(tol)
    eps = torch.finfo(dtype).eps
    v = _random((n,), "gaussian", _rng(seed, generator), dtype, device)
    v = v / v.norm()
    lam, residual, converged = 0.0, math.inf, False
    for i in range(1, max_iters + 1):
        w = op @ v
        lam = float(v @ w)
        residual = float((w - lam * v).norm())
        if residual <= (tol + eps) * abs(lam):
            converged = True
            return PowerResult(lam, v, residual, i, converged)
        norm = float(w.norm())
        if norm == 0.0:  # v lies in the null space: A = 0 on the Krylov space
            return PowerResult(0.0, v, 0.0, i, True)
        v = w / norm
    return PowerResult(lam, v, residual, max_iters, converged)


# --------------------------------------------------------------------------- Hutchinson


def _probe_products(
    op: Any,
    n_samples: int,
    seed: int | None,
    generator: torch.Generator | None,
    distribution: str,
    block_size: int,
):
    """Yield (V, A V) for blocks of probe vectors, n_samples columns in all."""
    n, dtype, device = _meta(op)
    _check_count("n_samples", n_samples)
    _check_count("block_size", block_size)
    _random((1,), distribution, None, dtype, device)  # validate the name before any work
    gen = _rng(seed, generator)
    done = 0
    while done < n_samples:
        b = min(block_size, n_samples - done)
        v = _random((n, b), distribution, gen, dtype, device)
        yield v, _apply_block(op, v)
        done += b


def hutchinson_trace(
    op: Any,
    n_samples: int = 100,
    seed: int | None = None,
    distribution: str = "rademacher",
    block_size: int = 16,
    generator: torch.Generator | None = None,
) -> TraceEstimate:
    """tr(A) ≈ (1/S) Σ_s v_sᵀ A v_s with E[v vᵀ] = I (Rademacher or Gaussian probes).

    Returns a :class:`TraceEstimate` (``float(result)`` is the estimate) with the standard
    error std(v_sᵀ A v_s)/√S.  Probes are applied ``block_size`` at a time.
    """
    samples = torch.cat(
        [
            (v * av).sum(0)
            for v, av in _probe_products(op, n_samples, seed, generator, distribution, block_size)
        ]
    )
    estimate = float(samples.mean())
    stderr = float(samples.std() / math.sqrt(n_samples)) if n_samples > 1 else math.nan
    return TraceEstimate(estimate, stderr, n_samples, samples)


def hutchinson_diagonal(
    op: Any,
    n_samples: int = 100,
    seed: int | None = None,
    distribution: str = "rademacher",
    block_size: int = 16,
    generator: torch.Generator | None = None,
) -> DiagonalEstimate:
    """diag(A) ≈ (1/S) Σ_s v_s ⊙ (A v_s), with per-entry standard errors; memory O(n·block_size)."""
    mean = m2 = None  # running mean and sum of squared deviations (Chan et al. merge)
    count = 0
    for v, av in _probe_products(op, n_samples, seed, generator, distribution, block_size):
        z = v * av
        b = z.shape[1]
        z_mean = z.mean(1)
        z_m2 = (z - z_mean.unsqueeze(1)).square().sum(1)
        if mean is None or m2 is None:
            mean, m2 = z_mean, z_m2
        else:
            delta = z_mean - mean
            mean = mean + delta * (b / (count + b))
            m2 = m2 + z_m2 + delta.square() * (count * b / (count + b))
        count += b
    assert mean is not None and m2 is not None
    if n_samples > 1:
        stderr = (m2 / (n_samples - 1) / n_samples).sqrt()
    else:
        stderr = torch.full_like(mean, math.nan)
    return DiagonalEstimate(mean, stderr, n_samples)
