"""Cholesky factorisation in place, by blocks: for kernels too large for a second copy.

``cholesky_in_place_(A)`` overwrites the lower triangle of a row-major symmetric matrix A
(only its lower triangle is read) with L, A = L Lᵀ, by the right-looking blocked
algorithm: for each diagonal block k, L_kk = chol(A_kk), the panel below
L_ik = A_ik L_kk⁻ᵀ, and the trailing update A_ij ← A_ij − L_ik L_jkᵀ (j ≤ i). Memory: A
itself plus one column panel (N × block) and one block; the work, N³/3 multiply-adds, is
in matrix products of whole blocks. Every product touches one row block of A at a time,
so no single BLAS call spans more than block × N entries of A (32-bit LAPACK
factorisations of a 55,000² matrix overflow their indices; this does not).

``cholesky_solve_blocked(L, B)`` solves (L Lᵀ) X = B by blocked forward and backward
substitution with the same row-block access.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tacitbayes.errors import InputError

__all__ = ["BLOCK", "cholesky_in_place_", "cholesky_solve_blocked"]

BLOCK = 2048


def _check_square(A: Tensor) -> int:
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise InputError(f"expected a square matrix, got shape {tuple(A.shape)}")
    if A.stride(1) != 1 or A.stride(0) != A.shape[1]:
        raise InputError("the matrix must be contiguous (row-major)")
    return int(A.shape[0])


def cholesky_in_place_(A: Tensor, block: int = BLOCK) -> bool:
    """Overwrite the lower triangle of A by L with L Lᵀ = A; False if A is not positive definite.

    The strict upper triangle is zeroed block by block on the diagonal only (the entries
    above the diagonal blocks are left as they were and are never read).
    """
    n = _check_square(A)
    for k0 in range(0, n, block):
        k1 = min(k0 + block, n)
        L, info = torch.linalg.cholesky_ex(A[k0:k1, k0:k1])
        if int(info) != 0:
            return False
        A[k0:k1, k0:k1] = L  # lower factor, zeros above its diagonal
        if k1 == n:
            break
        for i0 in range(k1, n, block):  # panel: L_ik = A_ik L_kk⁻ᵀ, row block by row block
            i1 = min(i0 + block, n)
            A[i0:i1, k0:k1] = torch.linalg.solve_triangular(
                L.mT, A[i0:i1, k0:k1], upper=True, left=False
            )
        panel = A[k1:n, k0:k1].contiguous()  # (n − k1) × block, copied once per step
        for i0 in range(k1, n, block):  # trailing update of row block i, columns k1 … i1
            i1 = min(i0 + block, n)
            A[i0:i1, k1:i1].addmm_(panel[i0 - k1 : i1 - k1], panel[: i1 - k1].mT, alpha=-1.0)
    return True


def cholesky_solve_blocked(L: Tensor, B: Tensor, block: int = BLOCK) -> Tensor:
    """X with (L Lᵀ) X = B for a lower factor L from :func:`cholesky_in_place_`; B of shape (n, k)."""
    n = _check_square(L)
    if B.ndim != 2 or B.shape[0] != n:
        raise InputError(f"B must have shape ({n}, k), got {tuple(B.shape)}")
    Y = B.to(L.dtype).clone()
    for i0 in range(0, n, block):  # forward: L Y = B
        i1 = min(i0 + block, n)
        if i0:
            Y[i0:i1].addmm_(L[i0:i1, :i0], Y[:i0], alpha=-1.0)
        Y[i0:i1] = torch.linalg.solve_triangular(L[i0:i1, i0:i1], Y[i0:i1], upper=False)
    starts = list(range(0, n, block))
    for i0 in reversed(starts):  # backward: Lᵀ X = Y, row block i then its effect on rows < i
        i1 = min(i0 + block, n)
        Y[i0:i1] = torch.linalg.solve_triangular(L[i0:i1, i0:i1].mT, Y[i0:i1], upper=True)
        if i0:
            Y[:i0].addmm_(L[i0:i1, :i0].mT, Y[i0:i1], alpha=-1.0)
    return Y
