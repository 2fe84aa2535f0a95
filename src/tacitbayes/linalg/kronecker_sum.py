"""Sums of Kronecker products ``S = Σ_i A_i ⊗ B_i`` and their nearest single Kronecker product.

:class:`KroneckerProductSum` and :func:`nearest_kronecker` are defined in
:mod:`tacitbayes.linalg.kronecker`, beside :class:`~tacitbayes.linalg.kronecker.KroneckerProduct`
(each class refers to the other, so one module holds both and no import runs both ways);
this module keeps the import path ``tacitbayes.linalg.kronecker_sum``.
"""

from __future__ import annotations

from tacitbayes.linalg.kronecker import KroneckerProductSum, TermLike, nearest_kronecker

__all__ = ["KroneckerProductSum", "TermLike", "nearest_kronecker"]
