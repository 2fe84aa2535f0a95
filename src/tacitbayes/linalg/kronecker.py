"""A single Kronecker product ``A ⊗ B`` of square factors, applied without forming it.

Convention (the one ``torch.kron`` uses): with ``A`` of shape (m, m) and ``B`` of
shape (n, n), a flat vector ``v`` of length m·n is the row-major ``vec`` of a matrix
``W`` of shape (m, n), ``v = W.reshape(-1)``, and ``(A ⊗ B) v = (A W Bᵀ).reshape(-1)``.
Every operation also takes a block ``V`` of shape (m·n, k) of k right-hand sides and
returns the same shape.  Only :meth:`KroneckerProduct.to_dense` forms the
(m·n) × (m·n) matrix.

The private helpers here (input checks, factor application) are shared with
:mod:`tacitbayes.linalg.kronecker_sum`.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tacitbayes.errors import InputError

if TYPE_CHECKING:
    from tacitbayes.linalg.kronecker_sum import KroneckerProductSum

__all__ = ["KroneckerProduct"]

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


class KroneckerProduct:
    """The matrix A ⊗ B (A: m×m, B: n×n) acting on row-major vec(W), W of shape (m, n).

    It can stand for a precision or a covariance matrix; :meth:`sample` says which.
    Costs: matvec O(mn(m + n)) per column, solve/logdet/inverse/sample O(m³ + n³)
    for the factorisations plus O(mn(m + n)) per column.  Factorisations are cached
    (unless the factors require grad), so do not modify A or B in place afterwards.
    """

    def __init__(self, A: Tensor, B: Tensor) -> None:
        """Store the factors A (m×m) and B (n×n); both must share dtype and device."""
        _check_factor(A, "A")
        _check_factor(B, "B")
        _check_same_kind([A, B], ["A", "B"])
        self.A = A
        self.B = B
        self._chol: tuple[Tensor, Tensor] | None = None
        self._spd_checked = False

    # ---- basic properties -------------------------------------------------------------
    @property
    def m(self) -> int:
        """Size m of the first factor A."""
        return self.A.shape[0]

    @property
    def n(self) -> int:
        """Size n of the second factor B."""
        return self.B.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """Shape (m·n, m·n) of A ⊗ B."""
        size = self.m * self.n
        return (size, size)

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype shared by both factors."""
        return self.A.dtype

    @property
    def device(self) -> torch.device:
        """Device holding both factors."""
        return self.A.device

    def __repr__(self) -> str:
        return f"KroneckerProduct(m={self.m}, n={self.n}, dtype={self.dtype}, device={self.device})"

    # ---- products -----------------------------------------------------------------------
    def matvec(self, v: Tensor) -> Tensor:
        """(A ⊗ B) v = vec(A W Bᵀ) for v = vec(W); v of shape (m·n,) or (m·n, k)."""
        V, was_vector = _as_block(v, self.shape[0], self.dtype, self.device)
        return _restore(_apply_factors(_left(self.A), _left(self.B), V, self.m, self.n), was_vector)

    def __matmul__(self, other: Tensor | KroneckerProduct) -> Tensor | KroneckerProduct:
        """(A ⊗ B) v for a tensor; (A ⊗ B)(C ⊗ D) = (AC) ⊗ (BD) for a KroneckerProduct."""
        if isinstance(other, KroneckerProduct):
            if (other.m, other.n) != (self.m, self.n):
                raise InputError(
                    f"factor sizes differ: ({self.m}, {self.n}) vs ({other.m}, {other.n})"
                )
            _check_same_kind([self.A, other.A], ["left operand", "right operand"])
            return KroneckerProduct(self.A @ other.A, self.B @ other.B)
        return self.matvec(other)

    def transpose(self) -> KroneckerProduct:
        """(A ⊗ B)ᵀ = Aᵀ ⊗ Bᵀ."""
        return KroneckerProduct(self.A.mT, self.B.mT)

    # ---- arithmetic ---------------------------------------------------------------------
    def __mul__(self, scalar: float) -> KroneckerProduct:
        """c (A ⊗ B) = (c A) ⊗ B for a real scalar c."""
        if isinstance(scalar, bool) or not isinstance(scalar, (Real, Tensor)):
            return NotImplemented
        if isinstance(scalar, Tensor) and scalar.numel() != 1:
            raise InputError("a KroneckerProduct can only be multiplied by a scalar")
        return KroneckerProduct(self.A * scalar, self.B)

    __rmul__ = __mul__

    def __neg__(self) -> KroneckerProduct:
        """−(A ⊗ B) = (−A) ⊗ B."""
        return KroneckerProduct(-self.A, self.B)

    def __add__(self, other: object) -> KroneckerProductSum:
        """A ⊗ B + (another Kronecker product or sum of them) as a KroneckerProductSum."""
        from tacitbayes.linalg.kronecker_sum import KroneckerProductSum

        if isinstance(other, KroneckerProduct):
            return KroneckerProductSum([self, other])
        if isinstance(other, KroneckerProductSum):
            return KroneckerProductSum([self, *other.terms])
        return NotImplemented

    def __radd__(self, other: object) -> KroneckerProduct | KroneckerProductSum:
        """Support ``sum([...])``: 0 + A ⊗ B = A ⊗ B."""
        if isinstance(other, (int, float)) and other == 0:
            return self
        return NotImplemented

    # ---- factorisations -----------------------------------------------------------------
    def _cholesky(self) -> tuple[Tensor, Tensor] | None:
        """Cholesky factors (L_A, L_B) when both factors are SPD, else None (cached when safe)."""
        if self._spd_checked:
            return self._chol
        LA = _cholesky_or_none(self.A)
        LB = _cholesky_or_none(self.B) if LA is not None else None
        chol = (LA, LB) if LA is not None and LB is not None else None
        grad_live = torch.is_grad_enabled() and (self.A.requires_grad or self.B.requires_grad)
        if not grad_live:
            self._chol, self._spd_checked = chol, True
        return chol

    def is_spd(self) -> bool:
        """True when both A and B are symmetric positive definite (so A ⊗ B is SPD)."""
        return self._cholesky() is not None

    def _require_spd(self, what: str) -> tuple[Tensor, Tensor]:
        chol = self._cholesky()
        if chol is None:
            raise InputError(f"{what} needs both factors A and B symmetric positive definite")
        return chol

    def solve(self, v: Tensor) -> Tensor:
        """(A ⊗ B)⁻¹ v = vec(A⁻¹ W B⁻ᵀ): Cholesky of each factor if SPD, else LU."""
        V, was_vector = _as_block(v, self.shape[0], self.dtype, self.device)
        chol = self._cholesky()
        if chol is not None:
            LA, LB = chol
            left, right = _chol_solver(LA), _chol_solver(LB)
        else:
            left, right = _lu_solver(self.A, "A"), _lu_solver(self.B, "B")
        return _restore(_apply_factors(left, right, V, self.m, self.n), was_vector)

    def logdet(self) -> Tensor:
        """log det(A ⊗ B) = n·log det A + m·log det B; raises InputError unless det > 0."""
        chol = self._cholesky()
        if chol is not None:
            LA, LB = chol
            ldA = 2 * LA.diagonal().log().sum()
            ldB = 2 * LB.diagonal().log().sum()
            return self.n * ldA + self.m * ldB
        sA, ldA = torch.linalg.slogdet(self.A)
        sB, ldB = torch.linalg.slogdet(self.B)
        sign = sA**self.n * sB**self.m
        if not bool(sign > 0):
            raise InputError("log det(A ⊗ B) is undefined: the determinant is not positive")
        return self.n * ldA + self.m * ldB

    def inverse(self) -> KroneckerProduct:
        """(A ⊗ B)⁻¹ = A⁻¹ ⊗ B⁻¹."""
        chol = self._cholesky()
        if chol is not None:
            return KroneckerProduct(
                torch.cholesky_inverse(chol[0]), torch.cholesky_inverse(chol[1])
            )
        eyes = [torch.eye(k, dtype=self.dtype, device=self.device) for k in (self.m, self.n)]
        return KroneckerProduct(_lu_solver(self.A, "A")(eyes[0]), _lu_solver(self.B, "B")(eyes[1]))

    # ---- Gaussian sampling --------------------------------------------------------------
    def sample_transform(self, Z: Tensor, as_precision: bool = True) -> Tensor:
        """Map standard-normal columns Z (m·n, k) by G with G Gᵀ = (A ⊗ B)⁻¹ (or A ⊗ B).

        With A = L_A L_Aᵀ and B = L_B L_Bᵀ: G = L_A⁻ᵀ ⊗ L_B⁻ᵀ when ``as_precision``
        (A ⊗ B is a precision), else G = L_A ⊗ L_B (A ⊗ B is a covariance).
        """
        V, was_vector = _as_block(Z, self.shape[0], self.dtype, self.device)
        LA, LB = self._require_spd("sampling")
        if as_precision:
            out = _apply_factors(_lower_inv_t(LA), _lower_inv_t(LB), V, self.m, self.n)
        else:
            out = _apply_factors(_left(LA), _left(LB), V, self.m, self.n)
        return _restore(out, was_vector)

    def sample(
        self,
        n_samples: int = 1,
        as_precision: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draws (n_samples, m·n) from N(0, (A ⊗ B)⁻¹) if ``as_precision`` else N(0, A ⊗ B).

        Reshaped to (n_samples, m, n), each draw is a matrix-normal W = L_A⁻ᵀ Z L_B⁻¹
        (precision) or W = L_A Z L_Bᵀ (covariance) with Z standard normal.
        """
        n_samples = _check_n_samples(n_samples)
        Z = torch.randn(
            self.shape[0], n_samples, dtype=self.dtype, device=self.device, generator=generator
        )
        return self.sample_transform(Z, as_precision=as_precision).mT

    # ---- cheap summaries ----------------------------------------------------------------
    def trace(self) -> Tensor:
        """tr(A ⊗ B) = tr A · tr B."""
        return self.A.trace() * self.B.trace()

    def diag(self) -> Tensor:
        """diag(A ⊗ B) = diag A ⊗ diag B, a vector of length m·n."""
        return torch.outer(self.A.diagonal(), self.B.diagonal()).reshape(-1)

    def to_dense(self) -> Tensor:
        """The dense (m·n) × (m·n) matrix A ⊗ B (for tests and small problems only)."""
        return torch.kron(self.A, self.B)


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
