"""Block minimal residual: min ‖B − A X‖ per column over the Krylov space every column shares.

For symmetric A and a block B of k right-hand sides, the block Krylov space
𝒦_m = span{B, AB, …, A^{m−1}B} (dimension up to m·k) is built by a block Arnoldi
process with full re-orthogonalisation (classical Gram–Schmidt, twice):

    A Q_m = Q_{m+1} H̄_m,    B = Q_1 R_0,

and each column's residual is minimised over all of 𝒦_m by the small least-squares
problem min_Y ‖E_1 R_0 − H̄_m Y‖ (X = Q_m Y). Every column gains from the directions
the others' Krylov vectors found: where k columns of one distribution (the projected
posterior's samples) share a spectrum, m block steps do what k·m single-vector steps
would. Memory: the basis, rows × k × (m + 1) numbers; a step that would exceed
``max_bytes`` restarts the process on the current residual.

A new block is orthonormalised through the eigen-decomposition of its Gram matrix
(Cholesky-QR with deflation): directions below the working precision are dropped, so
the block shrinks when the space is exhausted and the solve stops at an exact answer.
With ``reduce`` (a sum over processes) the rows of every block may be split over
processes: only k×k and (m·k)×k blocks are reduced.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tacitbayes.errors import InputError
from tacitbayes.linalg.krylov import (
    CountedOperator,
    KrylovInfo,
    Operator,
    check_krylov_settings,
    rhs_block,
)

__all__ = ["block_minres"]

Reduce = Callable[[Tensor], Tensor]


def _identity(t: Tensor) -> Tensor:
    return t


def _orthonormal(W: Tensor, reduce: Reduce, scale: float) -> tuple[Tensor, Tensor]:
    """(Q, R) with W ≈ Q R, Qᵀ Q = I; directions of norm below 100·eps·√scale dropped."""
    gram = reduce(W.T @ W).to(torch.float64)
    values, vectors = torch.linalg.eigh(0.5 * (gram + gram.T))
    eps = torch.finfo(W.dtype).eps
    ref = max(float(values.max()) if len(values) else 0.0, scale)
    keep = values > (100 * eps) ** 2 * ref if ref > 0 else values > 0
    values, vectors = values[keep].flip(0), vectors[:, keep].flip(1)
    roots = values.sqrt()
    Q = W @ (vectors / roots).to(W.dtype)
    R = (roots[:, None] * vectors.T).to(W.dtype)
    # one more pass (the Gram matrix squares the condition number)
    gram2 = reduce(Q.T @ Q).to(torch.float64)
    L, info = torch.linalg.cholesky_ex(0.5 * (gram2 + gram2.T))
    if int(info) == 0 and len(L):
        inv = torch.linalg.solve_triangular(L, torch.eye(len(L), dtype=L.dtype), upper=False)
        Q = Q @ inv.T.to(W.dtype)
        R = (L.T.to(W.dtype)) @ R
    return Q, R


def block_minres(
    matvec: Operator,
    B: Tensor,
    tol: float = 1e-6,
    max_iters: int = 100,
    max_bytes: int = 2**32,
    reduce: Reduce | None = None,
) -> tuple[Tensor, KrylovInfo]:
    """X minimising ‖b_j − A x_j‖ over the shared block Krylov space, for symmetric A (N×N).

    Stops when every column has ‖b_j − A x_j‖ ≤ tol·‖b_j‖ (the least-squares residual,
    exact up to the basis' orthogonality), after ``max_iters`` block steps, or when the
    space is exhausted. ``reduce`` sums a small matrix over processes when the rows of B
    are split between them (each process passes its rows; every process decides alike).
    """
    check_krylov_settings(tol, max_iters)
    sharded = reduce is not None
    Bb, was_vector = rhs_block(B, sharded=sharded)
    reduce = reduce or _identity
    N, k = Bb.shape
    A = CountedOperator(matvec, "matvec", N)
    b_norm = reduce((Bb * Bb).sum(0, keepdim=True)).sqrt()[0].to(torch.float64)
    X = torch.zeros_like(Bb)
    R = Bb
    history: list[float] = []
    per_step = max(1, N * k * Bb.element_size())
    steps_per_cycle = max(2, int(max_bytes // per_step) - 1)
    iterations = 0
    res = torch.ones(k, dtype=torch.float64, device=Bb.device)
    while iterations < max_iters:
        Q1, R0 = _orthonormal(R, reduce, 0.0)
        if Q1.shape[1] == 0:
            res = torch.zeros_like(res)
            break
        basis, sizes, columns = [Q1], [Q1.shape[1]], []
        Y = torch.zeros(0, k, dtype=torch.float64, device=Bb.device)
        for _ in range(min(steps_per_cycle, max_iters - iterations)):
            iterations += 1
            W = A(basis[-1])
            scale = float(reduce((W * W).sum().reshape(1))[0])
            coefs = []
            for Qi in basis:  # two classical Gram–Schmidt passes
                c = reduce(Qi.T @ W)
                W = W - Qi @ c
                coefs.append(c)
            for i, Qi in enumerate(basis):
                c = reduce(Qi.T @ W)
                W = W - Qi @ c
                coefs[i] = coefs[i] + c
            Qn, Rn = _orthonormal(W, reduce, scale)
            columns.append([*coefs, Rn])
            H = _hessenberg(columns, sizes + [Qn.shape[1]], Bb.device)
            E = torch.zeros(H.shape[0], k, dtype=torch.float64, device=Bb.device)
            E[: R0.shape[0]] = R0.to(torch.float64)
            Y = torch.linalg.lstsq(H, E, driver="gels").solution  # QR: no rank decisions
            res = torch.linalg.vector_norm(E - H @ Y, dim=0) / b_norm.clamp_min(1e-300)
            res = torch.where(b_norm > 0, res, torch.zeros_like(res))
            history.append(float(res.max()))
            if float(res.max()) <= tol or Qn.shape[1] == 0:
                break
            basis.append(Qn)
            sizes.append(Qn.shape[1])
        # X += Q_m Y, and the residual from it (A X once more: no drift from the recurrence)
        m = len(columns)
        update = torch.cat(basis[:m], 1) @ Y[: sum(sizes[:m])].to(Bb.dtype)
        X = X + update
        if float(res.max()) <= tol or Qn.shape[1] == 0 or iterations >= max_iters:
            break
        R = R - A(update)  # a restart: the residual afresh, no drift from the recurrence
    converged = res <= tol
    info = KrylovInfo(
        iterations=iterations,
        converged=converged,
        column_iterations=torch.full((k,), iterations, dtype=torch.int64, device=Bb.device),
        residual_norms=res * b_norm,
        operator_applications=A.calls,
        relative_residual_history=history,
    )
    return (X.squeeze(1) if was_vector else X), info


def _hessenberg(columns: list[list[Tensor]], sizes: list[int], device: torch.device) -> Tensor:
    """The block upper-Hessenberg H̄ (Σ sizes × Σ sizes[:-1]) from its block columns."""
    rows, cols = sum(sizes), sum(sizes[: len(columns)])
    if rows == 0 or cols == 0:
        raise InputError("an empty Krylov space")
    H = torch.zeros(rows, cols, dtype=torch.float64, device=device)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    for j, column in enumerate(columns):
        for i, block in enumerate(column):
            H[starts[i] : starts[i] + sizes[i], starts[j] : starts[j] + sizes[j]] = block
    return H
