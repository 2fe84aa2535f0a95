"""Structured linear algebra: Kronecker products, sums of them, and Krylov solvers.

Vec convention throughout: ``(A ⊗ B) vec(W) = vec(A W Bᵀ)`` with row-major
``vec(W) = W.reshape(-1)`` (the convention of ``torch.kron``); blocks of shape
(m·n, k) hold k right-hand sides.
"""

from __future__ import annotations

from tacitbayes.linalg.block_krylov import block_minres
from tacitbayes.linalg.kronecker import KroneckerProduct, KroneckerProductSum, nearest_kronecker
from tacitbayes.linalg.krylov import KrylovInfo, cg, lsqr, minres

__all__ = [
    "KroneckerProduct",
    "KroneckerProductSum",
    "KrylovInfo",
    "block_minres",
    "cg",
    "lsqr",
    "minres",
    "nearest_kronecker",
]
