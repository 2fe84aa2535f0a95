"""Factor-level helpers of the Kronecker operators: input checks and applying A ⊗ B to blocks.

Shared by :mod:`tacitbayes.linalg.kronecker` and :mod:`tacitbayes.priors.kronecker_gaussian`;
they act on the factors (m×m and n×n tensors) and import no operator class.
Vec convention: ``(A ⊗ B) vec(W) = vec(A W Bᵀ)`` with row-major ``vec(W) = W.reshape(-1)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tacitbayes.errors import InputError
from tacitbayes.linalg.eigen import symmetric_eigh

_FLOAT_DTYPES = (torch.float32, torch.float64)

FactorMap = Callable[[Tensor], Tensor]


def _check_factor(M: object, name: str) -> Tensor:
    """Return ``M`` if it is a square float32/float64 matrix, else raise InputError."""
    if not isinstance(M, Tensor):
        raise InputError(f"factor {name} must be a torch.Tensor, got {type(M).__name__}")
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] == 0:
        raise InputError(
            f"factor {name} must be a non-empty square matrix, got shape {tuple(M.shape)}"
        )
    if M.dtype not in _FLOAT_DTYPES:
        raise InputError(f"factor {name} must be float32 or float64, got {M.dtype}")
    return M


def _check_same_kind(tensors: list[Tensor], names: list[str]) -> None:
    """Raise InputError unless all tensors share one dtype and one device."""
    first, first_name = tensors[0], names[0]
    for M, name in zip(tensors[1:], names[1:], strict=True):
        if M.dtype != first.dtype:
            raise InputError(
                f"dtype mismatch: {first_name} is {first.dtype} but {name} is {M.dtype}"
            )
        if M.device != first.device:
            raise InputError(
                f"device mismatch: {first_name} is on {first.device} but {name} is on {M.device}"
            )


def _as_block(
    v: object, size: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, bool]:
    """View a vector (size,) or block (size, k) as a block; also say whether it was a vector."""
    if not isinstance(v, Tensor):
        raise InputError(f"expected a torch.Tensor, got {type(v).__name__}")
    if v.ndim not in (1, 2) or v.shape[0] != size:
        raise InputError(
            f"expected a vector of length {size} or a block of shape ({size}, k), "
            f"got shape {tuple(v.shape)}"
        )
    if v.dtype != dtype:
        raise InputError(f"dtype mismatch: operator is {dtype} but the vector is {v.dtype}")
    if v.device != device:
        raise InputError(
            f"device mismatch: operator is on {device} but the vector is on {v.device}"
        )
    return (v.unsqueeze(1), True) if v.ndim == 1 else (v, False)


def _restore(V: Tensor, was_vector: bool) -> Tensor:
    """Undo :func:`_as_block`: drop the column axis of a one-column block made from a vector."""
    return V.squeeze(1) if was_vector else V


def _apply_factors(left: FactorMap, right: FactorMap, V: Tensor, m: int, n: int) -> Tensor:
    """Compute (L ⊗ R) V for a block V (m·n, k), where ``left(X) = L X`` and ``right(Y) = R Y``."""
    k = V.shape[1]
    T = left(V.reshape(m, n * k)).reshape(m, n, k)
    T = T.permute(1, 0, 2).reshape(n, m * k)
    T = right(T).reshape(n, m, k).permute(1, 0, 2)
    return T.reshape(m * n, k)


def _is_symmetric(M: Tensor) -> bool:
    """True when max|M − Mᵀ| ≤ 100·eps·max|M| (symmetric up to rounding)."""
    eps = torch.finfo(M.dtype).eps
    scale = M.abs().max()
    return bool((M - M.mT).abs().max() <= 100 * eps * scale)


def _cholesky_or_none(M: Tensor) -> Tensor | None:
    """Lower Cholesky factor L (M = L Lᵀ) of a symmetric matrix, or None if M is not SPD."""
    if not _is_symmetric(M):
        return None
    L, info = torch.linalg.cholesky_ex(0.5 * (M + M.mT))
    return L if int(info) == 0 else None


def _lower_inv_t(L: Tensor) -> FactorMap:
    """Map X ↦ L⁻ᵀ X for a lower-triangular L."""
    return lambda X: torch.linalg.solve_triangular(L.mT, X, upper=True)


def _lower_inv(L: Tensor) -> FactorMap:
    """Map X ↦ L⁻¹ X for a lower-triangular L."""
    return lambda X: torch.linalg.solve_triangular(L, X, upper=False)


def _chol_solver(L: Tensor) -> FactorMap:
    """Map X ↦ (L Lᵀ)⁻¹ X for a lower Cholesky factor L."""
    return lambda X: torch.cholesky_solve(X, L)


def _left(M: Tensor) -> FactorMap:
    """Map X ↦ M X."""
    return lambda X: M @ X


def _lu_solver(M: Tensor, name: str) -> FactorMap:
    """Map X ↦ M⁻¹ X through an LU factorisation; InputError if M is singular."""
    LU, pivots, info = torch.linalg.lu_factor_ex(M)
    if int(info) != 0:
        raise InputError(f"factor {name} is singular, so A ⊗ B cannot be inverted")
    return lambda X: torch.linalg.lu_solve(LU, pivots, X)


def _check_n_samples(n_samples: object) -> int:
    """Return n_samples if it is a positive int, else raise InputError."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise InputError(f"n_samples must be a positive integer, got {n_samples!r}")
    return n_samples


def _generalized_eigh(
    M1: Tensor, L2: Tensor, what: str = "the whitened Kronecker factor L⁻¹ M L⁻ᵀ"
) -> tuple[Tensor, Tensor, Tensor]:
    """Solve M1 U = M2 U diag(λ), Uᵀ M2 U = I, given M2 = L2 L2ᵀ; return (λ, U, U⁻ᵀ)."""
    C = torch.linalg.solve_triangular(L2, M1, upper=False)
    C = torch.linalg.solve_triangular(L2, C.mT, upper=False)  # L⁻¹ M1 L⁻ᵀ
    lam, Q = symmetric_eigh(C, what)
    U = torch.linalg.solve_triangular(L2.mT, Q, upper=True)
    return lam, U, L2 @ Q


def _inverse_condition(L: Tensor) -> float:
    """Cheap estimate (min diag L / max diag L)² of 1/cond(L Lᵀ) from a Cholesky factor."""
    d = L.detach().diagonal()
    return float((d.min() / d.max()) ** 2)
