"""Kronecker products ``A ⊗ B`` of square factors and sums ``S = Σ_i A_i ⊗ B_i`` of them.

Convention (the one ``torch.kron`` uses): with ``A`` of shape (m, m) and ``B`` of
shape (n, n), a flat vector ``v`` of length m·n is the row-major ``vec`` of a matrix
``W`` of shape (m, n), ``v = W.reshape(-1)``, and ``(A ⊗ B) v = (A W Bᵀ).reshape(-1)``.
Every operation also takes a block ``V`` of shape (m·n, k) of k right-hand sides and
returns the same shape.  Only ``to_dense`` forms the (m·n) × (m·n) matrix.

:class:`KroneckerProduct` and :class:`KroneckerProductSum` live in one module because
each refers to the other (A ⊗ B + C ⊗ D is a sum; a sum holds products);
:mod:`tacitbayes.linalg.kronecker_sum` re-exports the sum. The factor-level helpers are in
:mod:`tacitbayes.linalg.kronecker_factors`.

Sums: exact ``logdet``/``solve``/``sample`` exist for one term and for two terms
``A₁ ⊗ B₁ + A₂ ⊗ B₂`` with A₂, B₂ SPD and A₁, B₁ symmetric.  Writing the
generalised eigendecompositions A₁U = A₂UΛ (UᵀA₂U = I) and B₁V = B₂VM (VᵀB₂V = I),

    S = (U⁻ᵀ ⊗ V⁻ᵀ) (Λ ⊗ M + I ⊗ I) (U⁻¹ ⊗ V⁻¹),

so with d = 1 + λ ⊗ μ: log det S = n·log det A₂ + m·log det B₂ + Σ log d,
S⁻¹ = (U ⊗ V) diag(1/d) (Uᵀ ⊗ Vᵀ).  Cost O(m³ + n³) once, then O(mn(m + n)) per
column.  For three or more terms use :func:`nearest_kronecker` (Van Loan–Pitsianis).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor

from tacitbayes.errors import InputError
from tacitbayes.linalg.kronecker_factors import (
    _apply_factors,
    _as_block,
    _check_factor,
    _check_n_samples,
    _check_same_kind,
    _chol_solver,
    _cholesky_or_none,
    _generalized_eigh,
    _inverse_condition,
    _is_symmetric,
    _left,
    _lower_inv_t,
    _lu_solver,
    _restore,
)

__all__ = ["KroneckerProduct", "KroneckerProductSum", "nearest_kronecker"]


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


TermLike = KroneckerProduct | tuple[Tensor, Tensor]


def _coerce_terms(terms: object) -> list[KroneckerProduct]:
    """Validate terms (KroneckerProducts or (A, B) pairs) and return them as KroneckerProducts."""
    if isinstance(terms, KroneckerProductSum):
        return list(terms.terms)
    if isinstance(terms, KroneckerProduct):
        return [terms]
    if isinstance(terms, (Tensor, str, bytes)) or not isinstance(terms, Sequence):
        raise InputError("terms must be a sequence of KroneckerProduct or (A, B) pairs")
    if len(terms) < 1:
        raise InputError("a sum of Kronecker products needs at least one term")
    out: list[KroneckerProduct] = []
    for i, term in enumerate(terms):
        if isinstance(term, KroneckerProduct):
            out.append(term)
        elif isinstance(term, (tuple, list)) and len(term) == 2:
            out.append(KroneckerProduct(term[0], term[1]))
        else:
            raise InputError(f"term {i} must be a KroneckerProduct or an (A, B) pair")
    first = out[0]
    for i, t in enumerate(out[1:], start=1):
        if (t.m, t.n) != (first.m, first.n):
            raise InputError(
                f"term {i} has factor sizes ({t.m}, {t.n}) but term 0 has ({first.m}, {first.n})"
            )
        if t.dtype != first.dtype:
            raise InputError(f"dtype mismatch: term 0 is {first.dtype} but term {i} is {t.dtype}")
        if t.device != first.device:
            raise InputError(
                f"device mismatch: term 0 is on {first.device} but term {i} is on {t.device}"
            )
    return out


class _PairEig:
    """Simultaneous diagonalisation of A₁ ⊗ B₁ + A₂ ⊗ B₂ (A₂, B₂ SPD; A₁, B₁ symmetric)."""

    def __init__(self, sym: KroneckerProduct, spd: KroneckerProduct, LA: Tensor, LB: Tensor):
        self.m, self.n = sym.m, sym.n
        lam, self.U, self.U_inv_t = _generalized_eigh(0.5 * (sym.A + sym.A.mT), LA)
        mu, self.V, self.V_inv_t = _generalized_eigh(0.5 * (sym.B + sym.B.mT), LB)
        self.d = (1 + torch.outer(lam, mu)).reshape(-1, 1)
        self.logdet_spd = (
            2 * self.n * LA.diagonal().log().sum() + 2 * self.m * LB.diagonal().log().sum()
        )

    def require_pd(self, what: str) -> None:
        """Raise InputError unless every 1 + λ_i μ_j > 0, i.e. the sum is positive definite."""
        if not bool((self.d > 0).all()):
            raise InputError(f"{what} needs a positive definite sum, and this sum is not")

    def require_nonsingular(self) -> None:
        """Raise InputError when some 1 + λ_i μ_j vanishes (to rounding)."""
        eps = torch.finfo(self.d.dtype).eps
        a = self.d.abs()
        if bool(a.min() <= 10 * eps * a.max()):
            raise InputError("the sum of Kronecker products is singular and cannot be solved")

    def logdet(self) -> Tensor:
        """n·log det A₂ + m·log det B₂ + Σ_ij log(1 + λ_i μ_j)."""
        return self.logdet_spd + self.d.log().sum()

    def solve(self, V: Tensor) -> Tensor:
        """(U ⊗ V) diag(1/d) (Uᵀ ⊗ Vᵀ) V."""
        Y = _apply_factors(_left(self.U.mT), _left(self.V.mT), V, self.m, self.n) / self.d
        return _apply_factors(_left(self.U), _left(self.V), Y, self.m, self.n)

    def transform(self, Z: Tensor, as_precision: bool) -> Tensor:
        """(U ⊗ V) d^{-1/2} Z (covariance S⁻¹) or (U⁻ᵀ ⊗ V⁻ᵀ) d^{1/2} Z (covariance S)."""
        if as_precision:
            return _apply_factors(_left(self.U), _left(self.V), Z * self.d.rsqrt(), self.m, self.n)
        Y = Z * self.d.sqrt()
        return _apply_factors(_left(self.U_inv_t), _left(self.V_inv_t), Y, self.m, self.n)


class KroneckerProductSum:
    """The matrix S = Σ_i A_i ⊗ B_i (all A_i: m×m, all B_i: n×n), never formed densely.

    matvec costs O(k·mn(m + n)) per column for k terms.  logdet/solve/sample are exact
    for one term and for two terms (one with SPD factors, the other with symmetric
    factors); for more terms they raise InputError unless ``approximate=True``, which
    replaces S by :func:`nearest_kronecker` and warns.  The two-term diagonalisation is
    cached (unless a factor requires grad); do not modify factors in place afterwards.
    """

    def __init__(self, terms: Sequence[TermLike]) -> None:
        """Store the terms: KroneckerProducts or (A_i, B_i) pairs of equal sizes, dtype, device."""
        self._terms = _coerce_terms(terms)
        self._pair: _PairEig | None = None

    @property
    def terms(self) -> list[KroneckerProduct]:
        """The terms A_i ⊗ B_i as KroneckerProducts (a new list)."""
        return list(self._terms)

    @property
    def m(self) -> int:
        """Size m of every A_i."""
        return self._terms[0].m

    @property
    def n(self) -> int:
        """Size n of every B_i."""
        return self._terms[0].n

    @property
    def shape(self) -> tuple[int, int]:
        """Shape (m·n, m·n) of the sum."""
        return self._terms[0].shape

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of all factors."""
        return self._terms[0].dtype

    @property
    def device(self) -> torch.device:
        """Device of all factors."""
        return self._terms[0].device

    def __len__(self) -> int:
        return len(self._terms)

    def __repr__(self) -> str:
        return f"KroneckerProductSum(terms={len(self)}, m={self.m}, n={self.n}, dtype={self.dtype})"

    # ---- products and arithmetic ---------------------------------------------------------
    def matvec(self, v: Tensor) -> Tensor:
        """S v = Σ_i vec(A_i W B_iᵀ) for v = vec(W); v of shape (m·n,) or (m·n, k)."""
        V, was_vector = _as_block(v, self.shape[0], self.dtype, self.device)
        out = _apply_factors(_left(self._terms[0].A), _left(self._terms[0].B), V, self.m, self.n)
        for t in self._terms[1:]:
            out = out + _apply_factors(_left(t.A), _left(t.B), V, self.m, self.n)
        return _restore(out, was_vector)

    def __matmul__(self, v: Tensor) -> Tensor:
        """S v (see :meth:`matvec`)."""
        return self.matvec(v)

    def __add__(self, other: object) -> KroneckerProductSum:
        """Concatenate terms: S + A ⊗ B or S + S'."""
        if isinstance(other, KroneckerProduct):
            return KroneckerProductSum([*self._terms, other])
        if isinstance(other, KroneckerProductSum):
            return KroneckerProductSum([*self._terms, *other._terms])
        return NotImplemented

    def __radd__(self, other: object) -> KroneckerProductSum:
        """Support ``sum([...])``: 0 + S = S."""
        if isinstance(other, (int, float)) and other == 0:
            return self
        return NotImplemented

    def __mul__(self, scalar: float) -> KroneckerProductSum:
        """c S = Σ_i (c A_i) ⊗ B_i for a real scalar c."""
        if isinstance(scalar, bool) or not isinstance(scalar, (Real, Tensor)):
            return NotImplemented
        return KroneckerProductSum([t * scalar for t in self._terms])

    __rmul__ = __mul__

    # ---- cheap summaries -----------------------------------------------------------------
    def trace(self) -> Tensor:
        """tr S = Σ_i tr A_i · tr B_i."""
        return torch.stack([t.trace() for t in self._terms]).sum()

    def diag(self) -> Tensor:
        """diag S = Σ_i diag A_i ⊗ diag B_i, a vector of length m·n."""
        return torch.stack([t.diag() for t in self._terms]).sum(0)

    def to_dense(self) -> Tensor:
        """The dense (m·n) × (m·n) matrix Σ_i A_i ⊗ B_i (for tests and small problems only)."""
        return torch.stack([t.to_dense() for t in self._terms]).sum(0)

    def nearest_kronecker(self) -> tuple[KroneckerProduct, float]:
        """Nearest A ⊗ B to S in Frobenius norm and ‖S − A ⊗ B‖_F / ‖S‖_F."""
        return nearest_kronecker(self)

    # ---- exact (or explicitly approximate) factorised operations -------------------------
    def _pair_eig(self) -> tuple[_PairEig | None, str]:
        """Diagonalise a two-term sum, or return None with the reason it cannot be done."""
        if self._pair is not None:
            return self._pair, ""
        t1, t2 = self._terms
        best: tuple[float, KroneckerProduct, KroneckerProduct, Tensor, Tensor] | None = None
        for sym, spd in ((t1, t2), (t2, t1)):  # the better-conditioned SPD term is diagonalised
            LA = _cholesky_or_none(spd.A)
            LB = _cholesky_or_none(spd.B) if LA is not None else None
            if LA is None or LB is None or not (_is_symmetric(sym.A) and _is_symmetric(sym.B)):
                continue
            score = min(_inverse_condition(LA), _inverse_condition(LB))
            if best is None or score > best[0]:
                best = (score, sym, spd, LA, LB)
        pair = _PairEig(*best[1:]) if best is not None else None
        if pair is None:
            return None, (
                "an exact factorisation of a two-term sum needs one term with symmetric positive "
                "definite factors and the other with symmetric factors"
            )
        grad_live = torch.is_grad_enabled() and any(
            t.A.requires_grad or t.B.requires_grad for t in self._terms
        )
        if not grad_live:
            self._pair = pair
        return pair, ""

    def _route(self, what: str, approximate: bool) -> KroneckerProduct | _PairEig:
        """Pick the single term, the two-term diagonalisation, or (if allowed) an approximation."""
        if len(self._terms) == 1:
            return self._terms[0]
        if len(self._terms) == 2:
            pair, reason = self._pair_eig()
            if pair is not None:
                return pair
        else:
            reason = f"{what} is exact only for sums of one or two terms, this one has {len(self)}"
        if not approximate:
            raise InputError(
                f"{reason}; call nearest_kronecker(...) to get the nearest single Kronecker "
                "product, or pass approximate=True to use it here"
            )
        approx, rel_err = nearest_kronecker(self)
        warnings.warn(
            f"{what}: using the nearest single Kronecker product instead of the sum "
            f"(relative Frobenius error {rel_err:.3g})",
            UserWarning,
            stacklevel=3,
        )
        return approx

    def logdet(self, approximate: bool = False) -> Tensor:
        """log det S (two terms: n·log det A₂ + m·log det B₂ + Σ log(1 + λ_i μ_j))."""
        route = self._route("logdet", approximate)
        if isinstance(route, KroneckerProduct):
            return route.logdet()
        route.require_pd("logdet")
        return route.logdet()

    def solve(self, v: Tensor, approximate: bool = False) -> Tensor:
        """S⁻¹ v (two terms: (U ⊗ V) diag(1/(1 + λ ⊗ μ)) (Uᵀ ⊗ Vᵀ) v)."""
        V, was_vector = _as_block(v, self.shape[0], self.dtype, self.device)
        route = self._route("solve", approximate)
        if isinstance(route, KroneckerProduct):
            return _restore(route.solve(V), was_vector)
        route.require_nonsingular()
        return _restore(route.solve(V), was_vector)

    def sample_transform(
        self, Z: Tensor, as_precision: bool = True, approximate: bool = False
    ) -> Tensor:
        """Map standard-normal columns Z by G with G Gᵀ = S⁻¹ (``as_precision``) or G Gᵀ = S."""
        V, was_vector = _as_block(Z, self.shape[0], self.dtype, self.device)
        route = self._route("sampling", approximate)
        if isinstance(route, KroneckerProduct):
            return _restore(route.sample_transform(V, as_precision=as_precision), was_vector)
        route.require_pd("sampling")
        return _restore(route.transform(V, as_precision), was_vector)

    def sample(
        self,
        n_samples: int = 1,
        as_precision: bool = True,
        generator: torch.Generator | None = None,
        approximate: bool = False,
    ) -> Tensor:
        """Draws (n_samples, m·n) from N(0, S⁻¹) if ``as_precision`` else from N(0, S)."""
        n_samples = _check_n_samples(n_samples)
        Z = torch.randn(
            self.shape[0], n_samples, dtype=self.dtype, device=self.device, generator=generator
        )
        return self.sample_transform(Z, as_precision=as_precision, approximate=approximate).mT


def nearest_kronecker(
    terms: KroneckerProductSum | KroneckerProduct | Sequence[TermLike],
) -> tuple[KroneckerProduct, float]:
    """argmin_{A,B} ‖Σ_i A_i ⊗ B_i − A ⊗ B‖_F, and the relative error ‖S − A ⊗ B‖_F / ‖S‖_F.

    Van Loan–Pitsianis: the rearrangement R(S) = Σ_i vec(A_i) vec(B_i)ᵀ = Â B̂ᵀ has the
    same Frobenius norm as S, and A ⊗ B is nearest when vec A, vec B are its top singular
    pair.  With thin QRs Â = Q_a R_a, B̂ = Q_b R_b (R_aᵀR_a and R_bᵀR_b are the Gram
    matrices tr(A_iᵀA_j), tr(B_iᵀB_j)) the SVD of the small core R_a R_bᵀ (at most k×k
    for k terms) is exact; S is never formed.  ‖S‖²_F = Σ σ_l², the error² = Σ_{l≥2} σ_l².
    The signs are fixed so tr A ≥ 0 (then tr B ≥ 0 where possible); if all factors are
    symmetric the result is symmetrised, and for SPD terms it has SPD factors.
    Cost: O(k²(m² + n²)).  Differentiable through QR/SVD; gradients can be NaN when the
    terms are linearly dependent (e.g. repeated) — merge such terms first.
    """
    kps = _coerce_terms(terms)
    m, n = kps[0].m, kps[0].n
    Qa, Ra = torch.linalg.qr(torch.stack([t.A.reshape(-1) for t in kps], dim=1))
    Qb, Rb = torch.linalg.qr(torch.stack([t.B.reshape(-1) for t in kps], dim=1))
    Y, s, Zh = torch.linalg.svd(Ra @ Rb.mT)
    total = s.square().sum()
    if not bool(total > 0):
        raise InputError(
            "the sum of Kronecker products is the zero matrix; it has no nearest factor"
        )
    root = s[0].sqrt()
    A = (Qa @ Y[:, 0] * root).reshape(m, m)
    B = (Qb @ Zh[0] * root).reshape(n, n)
    trA, trB = float(A.detach().trace()), float(B.detach().trace())
    if trA < 0 or (trA == 0 and trB < 0):
        A, B = -A, -B
    if all(_is_symmetric(t.A) and _is_symmetric(t.B) for t in kps):
        A, B = 0.5 * (A + A.mT), 0.5 * (B + B.mT)
    rel_err = math.sqrt(max(float((s[1:].square().sum() / total).detach()), 0.0))
    return KroneckerProduct(A, B), rel_err
