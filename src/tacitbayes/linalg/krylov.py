"""Matrix-free Krylov solvers (CG, MINRES, LSQR), vectorised over independent columns.

An operator is a callable ``matvec(V) -> V'`` acting on a block V of shape (P, k), or
any object supporting ``op @ V`` (a dense tensor, a :class:`KroneckerProduct`, ...).
Right-hand sides come as a vector (N,) or a block (N, k); every column runs its own
recurrence with its own scalars and its own stopping test (this is not a block-Krylov
method), but each iteration applies the operator once to the whole block, so
``operator_applications`` in :class:`KrylovInfo` counts passes over the data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from tacitbayes.errors import InputError

__all__ = ["KrylovInfo", "cg", "lsqr", "minres"]


class SupportsMatmul(Protocol):
    """Anything with ``op @ V`` for a block V: a tensor, a KroneckerProduct, ..."""

    def __matmul__(self, V: Tensor, /) -> Tensor: ...


Operator = Callable[[Tensor], Tensor] | SupportsMatmul
Inner = Callable[[Tensor, Tensor], Tensor]
"""Per-column inner products (A, B) -> (k,) of two blocks; a sharded space sums over ranks."""


@dataclass
class KrylovInfo:
    """What a Krylov solve did: iterations, per-column convergence and residuals, op counts."""

    iterations: int
    """Iterations run (the most any column needed)."""
    converged: Tensor
    """(k,) bool: the column met its stopping test."""
    column_iterations: Tensor
    """(k,) int64: the iteration at which each column stopped (0 if it needed none)."""
    residual_norms: Tensor
    """(k,) ‖b − A x‖ per column, from the solver's recurrences."""
    normal_residual_norms: Tensor | None = None
    """(k,) ‖Aᵀ(b − A x)‖ (LSQR, damped: ‖Aᵀr − damp² x‖) or ‖A r‖ (MINRES); None for CG."""
    operator_applications: int = 0
    """Calls of the forward operator, each on the whole (P, k) block."""
    adjoint_applications: int = 0
    """Calls of the transpose operator (LSQR only)."""
    preconditioner_applications: int = 0
    """Calls of the preconditioner."""
    relative_residual_history: list[float] = field(default_factory=list)
    """LSQR and CG: max over columns of ‖b − A x‖/‖b‖ after each iteration (recurrences)."""


class CountedOperator:
    """Wrap an operator as a function on blocks, checking its output and counting its calls."""

    def __init__(self, op: Operator, name: str, out_rows: int | None) -> None:
        if isinstance(op, Tensor) or hasattr(type(op), "__matmul__"):
            self._fn: Callable[[Tensor], Tensor] = lambda V: op @ V
        elif callable(op):
            self._fn = op
        else:
            raise InputError(f"{name} must be a callable V -> op(V) or support `{name} @ V`")
        self.name, self.out_rows, self.calls = name, out_rows, 0

    def __call__(self, V: Tensor) -> Tensor:
        self.calls += 1
        out = self._fn(V)
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[1] != V.shape[1]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise InputError(f"{self.name} must map a (P, {V.shape[1]}) block to (N, k), got {got}")
        if self.out_rows is not None and out.shape[0] != self.out_rows:
            raise InputError(f"{self.name} returned {out.shape[0]} rows, expected {self.out_rows}")
        if out.dtype != V.dtype or out.device != V.device:
            raise InputError(
                f"{self.name} changed dtype/device: {V.dtype}/{V.device} -> {out.dtype}/{out.device}"
            )
        return out


def rhs_block(B: object, sharded: bool = False) -> tuple[Tensor, bool]:
    """Check a right-hand side (N,) or (N, k) of float32/float64 and return it as a block.

    A shard (``sharded``) may hold no rows: its process still joins every reduction.
    """
    if not isinstance(B, Tensor):
        raise InputError(f"the right-hand side must be a torch.Tensor, got {type(B).__name__}")
    empty = B.ndim >= 1 and B.shape[0] == 0 and not sharded
    if B.ndim not in (1, 2) or empty or (B.ndim == 2 and B.shape[1] == 0):
        raise InputError(
            f"the right-hand side must have shape (N,) or (N, k), got {tuple(B.shape)}"
        )
    if B.dtype not in (torch.float32, torch.float64):
        raise InputError(f"the right-hand side must be float32 or float64, got {B.dtype}")
    return (B.unsqueeze(1), True) if B.ndim == 1 else (B, False)


def check_krylov_settings(tol: float, max_iters: int | None) -> None:
    if not tol >= 0:
        raise InputError(f"tol must be non-negative, got {tol}")
    if max_iters is not None and (isinstance(max_iters, bool) or max_iters < 0):
        raise InputError(f"max_iters must be a non-negative integer, got {max_iters}")


def _safe_div(a: Tensor, b: Tensor) -> Tensor:
    """a / b where b ≠ 0, else 0 (keeps finished or empty columns finite)."""
    nz = b != 0
    return torch.where(nz, a / torch.where(nz, b, torch.ones_like(b)), torch.zeros_like(a))


def _norms(T: Tensor, inner: Inner | None) -> Tensor:
    """Per-column 2-norms, with ``inner`` when the block is sharded."""
    if inner is None:
        return torch.linalg.vector_norm(T, dim=0)
    return inner(T, T).clamp_min(0).sqrt()


def _dots(A: Tensor, B: Tensor, inner: Inner | None) -> Tensor:
    """Per-column inner products, with ``inner`` when the blocks are sharded."""
    return (A * B).sum(0) if inner is None else inner(A, B)


def _sharded_iters(max_iters: int | None, inner: Inner | None) -> None:
    if inner is not None and max_iters is None:
        raise InputError("max_iters must be given with inner= (a shard does not know N)")


def _out(X: Tensor, was_vector: bool) -> Tensor:
    return X.squeeze(1) if was_vector else X


def cg(
    matvec: Operator,
    B: Tensor,
    x0: Tensor | None = None,
    tol: float = 1e-6,
    max_iters: int | None = None,
    preconditioner: Operator | None = None,
    atol: float = 0.0,
    inner: Inner | None = None,
) -> tuple[Tensor, KrylovInfo]:
    """Solve A X = B for SPD A (or PSD A with consistent B) by preconditioned CG, per column.

    Column j stops when ‖b_j − A x_j‖ ≤ max(tol·‖b_j‖, atol) (recurrence residual).
    ``preconditioner`` applies M ≈ A⁻¹ (SPD).  ``max_iters`` defaults to 10·N.  Raises
    InputError on negative curvature pᵀAp < 0 (the operator is not PSD).
    ``inner`` computes the per-column inner products when the rows of B (and of every
    vector of the recurrence) are split over processes: each process passes its rows and
    ``inner`` sums over them, so every process takes the same decisions.
    """
    check_krylov_settings(tol, max_iters)
    _sharded_iters(max_iters, inner)
    Bb, was_vector = rhs_block(B, sharded=inner is not None)
    N, k = Bb.shape
    A = CountedOperator(matvec, "matvec", N)
    M = CountedOperator(preconditioner, "preconditioner", N) if preconditioner is not None else None
    max_iters = 10 * N if max_iters is None else max_iters
    if x0 is None:
        X, R = torch.zeros_like(Bb), Bb.clone()
    else:
        if not isinstance(x0, Tensor) or x0.shape != B.shape:
            raise InputError("x0 must be a tensor with the shape of B")
        if x0.dtype != Bb.dtype or x0.device != Bb.device:
            raise InputError("x0 must have the dtype and device of B")
        X = (x0.unsqueeze(1) if was_vector else x0).clone()
        R = Bb - A(X)
    b_norm = _norms(Bb, inner)
    threshold = torch.clamp(tol * b_norm, min=atol)
    rnorm = _norms(R, inner)
    active = rnorm > threshold
    col_iters = torch.zeros(k, dtype=torch.int64, device=Bb.device)
    history: list[float] = []
    Z = M(R) if M is not None else R
    Pdir = Z.clone()
    rz = _dots(R, Z, inner)
    it = 0
    eps = torch.finfo(Bb.dtype).eps
    while bool(active.any()) and it < max_iters:
        it += 1
        AP = A(Pdir)
        pAp = _dots(Pdir, AP, inner)
        scale = _norms(Pdir, inner) * _norms(AP, inner)
        if bool((active & (pAp < -(eps**0.5) * scale)).any()):
            raise InputError(
                "cg needs a symmetric positive (semi)definite operator: found pᵀAp < 0"
            )
        moving = active & (pAp > 0)
        alpha = torch.where(moving, _safe_div(rz, pAp), torch.zeros_like(rz))
        X = X + alpha * Pdir
        R = R - alpha * AP
        rnorm = torch.where(active, _norms(R, inner), rnorm)
        col_iters = torch.where(active, torch.full_like(col_iters, it), col_iters)
        active = moving & (rnorm > threshold)
        history.append(float(_safe_div(rnorm, b_norm).max()) if k else 0.0)
        if not bool(active.any()):
            break
        Z = M(R) if M is not None else R
        rz_new = _dots(R, Z, inner)
        beta = torch.where(active, _safe_div(rz_new, rz), torch.zeros_like(rz))
        Pdir = Z + beta * Pdir
        rz = rz_new
    info = KrylovInfo(
        iterations=it,
        converged=rnorm <= threshold,
        column_iterations=col_iters,
        residual_norms=rnorm,
        operator_applications=A.calls,
        preconditioner_applications=M.calls if M is not None else 0,
        relative_residual_history=history,
    )
    return _out(X, was_vector), info


def minres(
    matvec: Operator,
    B: Tensor,
    tol: float = 1e-6,
    max_iters: int | None = None,
    preconditioner: Operator | None = None,
    inner: Inner | None = None,
) -> tuple[Tensor, KrylovInfo]:
    """Minimise ‖b − A x‖ over Krylov spaces for symmetric (possibly indefinite or singular) A.

    Paige–Saunders MINRES from x0 = 0, per column; with a consistent right-hand side
    on a singular A it returns the minimum-norm solution.  Column j stops when
    ‖r‖ ≤ tol·‖b‖ or ‖A r‖ ≤ tol·‖A‖·‖r‖ (a least-squares solution).  The
    preconditioner M must be SPD; residuals are then measured in the M-norm.
    ``inner``: per-column inner products over rows split between processes, as in :func:`cg`.
    """
    check_krylov_settings(tol, max_iters)
    _sharded_iters(max_iters, inner)
    Bb, was_vector = rhs_block(B, sharded=inner is not None)
    N, k = Bb.shape
    A = CountedOperator(matvec, "matvec", N)
    M = CountedOperator(preconditioner, "preconditioner", N) if preconditioner is not None else None
    max_iters = 10 * N if max_iters is None else max_iters
    eps = torch.finfo(Bb.dtype).eps

    def m_norm(Rv: Tensor, Yv: Tensor) -> Tensor:
        sq = _dots(Rv, Yv, inner)
        if bool((sq < 0).any()):
            raise InputError("the preconditioner of minres must be positive definite")
        return sq.sqrt()

    zeros = torch.zeros(k, dtype=Bb.dtype, device=Bb.device)
    X = torch.zeros_like(Bb)
    r1 = Bb.clone()
    y = M(r1) if M is not None else r1
    beta1 = m_norm(r1, y)
    r2, beta, oldb = r1, beta1, zeros
    dbar, epsln, phibar, tnorm2 = zeros, zeros, beta1, zeros
    cs, sn = -torch.ones_like(zeros), zeros
    W, W2 = torch.zeros_like(Bb), torch.zeros_like(Bb)
    rnorm, arnorm = beta1.clone(), zeros.clone()
    active = beta1 > 0
    converged = ~active
    col_iters = torch.zeros(k, dtype=torch.int64, device=Bb.device)
    history: list[float] = []
    it = 0
    while bool(active.any()) and it < max_iters:
        it += 1
        V = y * _safe_div(torch.ones_like(beta), beta)
        y = A(V)
        if it >= 2:
            y = y - _safe_div(beta, oldb) * r1
        alfa = _dots(V, y, inner)
        y = y - _safe_div(alfa, beta) * r2
        r1, r2 = r2, y
        y = M(r2) if M is not None else r2
        oldb, beta = beta, m_norm(r2, y)
        tnorm2 = tnorm2 + alfa**2 + oldb**2 + beta**2
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln, dbar = sn * beta, -cs * beta
        root = torch.hypot(gbar, dbar)
        gamma = torch.clamp(torch.hypot(gbar, beta), min=eps)
        cs, sn = gbar / gamma, beta / gamma
        phi, phibar_new = cs * phibar, sn * phibar
        W1, W2 = W2, W
        W = (V - oldeps * W1 - delta * W2) / gamma
        X = X + torch.where(active, phi, zeros) * W
        anorm = tnorm2.sqrt()
        rnorm = torch.where(active, phibar_new.abs(), rnorm)
        arnorm = torch.where(active, phibar * root, arnorm)
        phibar = phibar_new
        test1 = _safe_div(rnorm, beta1)
        history.append(float(test1.max()) if k else 0.0)
        test2 = _safe_div(root, anorm)
        done = (test1 <= tol) | (test2 <= tol) | (1 + test1 <= 1) | (1 + test2 <= 1)
        converged = converged | (active & done)
        col_iters = torch.where(active, torch.full_like(col_iters, it), col_iters)
        active = active & ~done
    info = KrylovInfo(
        iterations=it,
        converged=converged,
        column_iterations=col_iters,
        residual_norms=rnorm,
        normal_residual_norms=arnorm,
        operator_applications=A.calls,
        preconditioner_applications=M.calls if M is not None else 0,
        relative_residual_history=history,
    )
    return _out(X, was_vector), info


def lsqr(
    A_matvec: Operator,
    AT_matvec: Operator,
    B: Tensor,
    tol: float = 1e-8,
    max_iters: int | None = None,
    damp: float = 0.0,
    atol: float | None = None,
    least_squares_stop: bool = True,
    inner: Inner | None = None,
) -> tuple[Tensor, KrylovInfo]:
    """Solve min_x ‖A x − b‖² + damp²‖x‖² per column by LSQR (Golub–Kahan bidiagonalisation).

    A (N×P) is given by ``A_matvec`` ((P, k) -> (N, k)) and ``AT_matvec`` ((N, k) -> (P, k)).
    Starting from x0 = 0 the iterates stay in range(Aᵀ), so with damp = 0 the limit is
    the minimum-norm least-squares solution A⁺ b.  Column j stops (Paige–Saunders) when
    ‖r‖ ≤ tol·‖b‖ + atol·‖A‖·‖x‖ (consistent; atol defaults to tol) or, when
    ``least_squares_stop``, ‖Aᵀr‖ ≤ tol·‖A‖·‖r‖ (least squares), ‖A‖ being the running
    Frobenius estimate.  For a consistent system where the residual itself must reach
    ‖r‖ ≤ tol·‖b‖, pass ``atol=0, least_squares_stop=False``.
    ``max_iters`` defaults to max(2·min(N, P), 20).  ``inner`` computes per-column inner
    products of data-space (N-side) blocks when their rows are split over processes: each
    process passes its rows of b, ``A_matvec`` returns its rows, ``AT_matvec`` sums over
    processes, and the parameter-space (P-side) vectors are replicated.
    """
    check_krylov_settings(tol, max_iters)
    _sharded_iters(max_iters, inner)
    if not damp >= 0:
        raise InputError(f"damp must be non-negative, got {damp}")
    Bb, was_vector = rhs_block(B, sharded=inner is not None)
    N, k = Bb.shape
    A = CountedOperator(A_matvec, "A_matvec", N)
    AT = CountedOperator(AT_matvec, "AT_matvec", None)
    zeros = torch.zeros(k, dtype=Bb.dtype, device=Bb.device)
    one = torch.ones_like(zeros)

    bnorm = _norms(Bb, inner)
    beta = bnorm
    U = Bb * _safe_div(one, beta)
    V = AT(U)
    P = V.shape[0]
    max_iters = max(2 * min(N, P), 20) if max_iters is None else max_iters
    alpha = torch.linalg.vector_norm(V, dim=0)
    V = V * _safe_div(one, alpha)
    W, X = V.clone(), torch.zeros_like(V)
    phibar, rhobar, anorm2, res2 = beta.clone(), alpha.clone(), zeros, zeros
    rnorm, arnorm = bnorm.clone(), alpha * beta
    active = arnorm > 0  # b = 0 or Aᵀb = 0: x = 0 is already the minimum-norm solution
    converged = ~active
    col_iters = torch.zeros(k, dtype=torch.int64, device=Bb.device)
    history: list[float] = []
    it = 0
    while bool(active.any()) and it < max_iters:
        it += 1
        U = A(V) - alpha * U
        beta = _norms(U, inner)
        U = U * _safe_div(one, beta)
        anorm2 = anorm2 + alpha**2 + beta**2 + damp**2
        V = AT(U) - beta * V
        alpha = torch.linalg.vector_norm(V, dim=0)
        V = V * _safe_div(one, alpha)
        if damp > 0:
            rhobar1 = torch.hypot(rhobar, torch.full_like(rhobar, damp))
            cs1, sn1 = _safe_div(rhobar, rhobar1), _safe_div(damp * one, rhobar1)
            res2 = res2 + torch.where(active, sn1 * phibar, zeros) ** 2
            phibar = cs1 * phibar
        else:
            rhobar1 = rhobar
        rho = torch.hypot(rhobar1, beta)
        cs, sn = _safe_div(rhobar1, rho), _safe_div(beta, rho)
        theta, rhobar = sn * alpha, -cs * alpha
        phi, phibar = cs * phibar, sn * phibar
        X = X + torch.where(active, _safe_div(phi, rho), zeros) * W
        W = V - _safe_div(theta, rho) * W

        anorm = anorm2.sqrt()
        xnorm = torch.linalg.vector_norm(X, dim=0)
        r2norm = torch.sqrt(phibar**2 + res2)
        r1norm = torch.sqrt(torch.clamp(r2norm**2 - damp**2 * xnorm**2, min=0))
        rnorm = torch.where(active, r1norm, rnorm)
        arnorm = torch.where(active, alpha * (sn * phi).abs(), arnorm)
        test1 = _safe_div(r2norm, bnorm)
        test2 = _safe_div(arnorm, anorm * r2norm)
        t1 = test1 / (1 + _safe_div(anorm * xnorm, bnorm))
        rtol = tol + (tol if atol is None else atol) * _safe_div(anorm * xnorm, bnorm)
        history.append(float(_safe_div(rnorm, bnorm).max()))
        done = (test1 <= rtol) | (r2norm == 0)
        if least_squares_stop:
            done = done | (test2 <= tol) | (1 + t1 <= 1) | (1 + test2 <= 1)
        converged = converged | (active & done)
        col_iters = torch.where(active, torch.full_like(col_iters, it), col_iters)
        active = active & ~done
    info = KrylovInfo(
        iterations=it,
        converged=converged,
        column_iterations=col_iters,
        residual_norms=rnorm,
        normal_residual_norms=arnorm,
        operator_applications=A.calls,
        adjoint_applications=AT.calls,
        relative_residual_history=history,
    )
    return _out(X, was_vector), info
