"""Gaussians over the nn.Linear / nn.Conv2d layers of a network with sums of Kronecker precisions.

Per layer l the free weights W̃_l = [W_l, b_l] (out × d, the KFAC layout of
:mod:`tacitbayes.curvature.kfac`) follow vec(W̃_l) ~ N(vec M_l, τ Λ_l⁻¹), row-major vec, with
Λ_l = Σ_i G_i ⊗ A_i (G_i: out×out acting on rows, A_i: d×d on columns) a
:class:`~tacitbayes.linalg.KroneckerProductSum` and τ > 0 a temperature that scales every
covariance (τ = 1: the plain Gaussian). Layers are independent. Factors are kept in float64
by default so that log-determinants and KL divergences of large layers stay exact.

Exact log-determinants, samples and KL(Q‖·) diagonalise Λ_l (:meth:`KroneckerGaussian.eig_form`):
one term G ⊗ A = (Q_G ⊗ Q_A) diag(g ⊗ a) (Q_G ⊗ Q_A)ᵀ; two terms G₁⊗A₁ + G₂⊗A₂ (G₂, A₂ SPD) through
the generalised eigendecompositions G₁U = G₂UΛ, UᵀG₂U = I and A₁V = A₂VM, VᵀA₂V = I, so that
Λ⁻¹ = (U ⊗ V) diag(1/D) (U ⊗ V)ᵀ with D = 1 + λμᵀ. Cost O(out³ + d³) per layer, never the
(out·d)² matrix. Three or more terms need :meth:`KroneckerGaussian.compressed` first. Quadratic
forms (the penalty, Mahalanobis terms, traces against another precision) are exact for any
number of terms: vec(Δ)ᵀ(G ⊗ A)vec(Δ) = ⟨Δ, G Δ Aᵀ⟩.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tacitbayes.curvature.kfac import KFAC, find_layers
from tacitbayes.errors import InputError
from tacitbayes.functional import resolve_param_names, unflatten
from tacitbayes.linalg import KroneckerProduct, KroneckerProductSum, nearest_kronecker
from tacitbayes.linalg.eigen import psd_projection, symmetric_eigh
from tacitbayes.linalg.kronecker_factors import (
    _cholesky_or_none,
    _generalized_eigh,
    _inverse_condition,
)

__all__ = [
    "KroneckerGaussian",
    "LayerSlot",
    "ParameterLayout",
    "kl_divergence",
    "kl_terms",
    "tempered_kl",
]


@dataclass(frozen=True)
class LayerSlot:
    """One layer: module name, W̃ shape (n_out, d), covered parameter names, flat positions."""

    name: str
    n_out: int
    d: int
    weight: str | None
    bias: str | None
    index: Tensor  # (n_out·d,) positions of row-major vec(W̃) in the flat parameter vector


class ParameterLayout:
    """The covered parameters of a model (flat order of ``functional.flatten``) and their W̃ blocks."""

    def __init__(self, model: nn.Module, param_names: str | Sequence[str] | None = None) -> None:
        self.param_names = resolve_param_names(model, param_names)
        live = dict(model.named_parameters())
        self.shapes = {n: tuple(live[n].shape) for n in self.param_names}
        self.slots: list[LayerSlot] = []
        for la in find_layers(model, self.param_names):
            prefix = f"{la.name}." if la.name else ""
            self.slots.append(
                LayerSlot(
                    la.name,
                    la.n_out,
                    la.d,
                    prefix + "weight" if la.weight else None,
                    prefix + "bias" if la.bias else None,
                    la.index,
                )
            )
        self.n_params = sum(math.prod(s) for s in self.shapes.values())

    @property
    def layers(self) -> list[str]:
        """Module names of the covered layers, in ``named_modules()`` order."""
        return [s.name for s in self.slots]

    def read(self, model: nn.Module) -> dict[str, Tensor]:
        """The model's current W̃ per layer, differentiable in its parameters."""
        live = dict(model.named_parameters())
        missing = [n for n in self.param_names if n not in live]
        if missing:
            raise InputError(f"the model has no parameter(s) {missing} of this Gaussian")
        out = {}
        for s in self.slots:
            cols = []
            if s.weight is not None:
                cols.append(live[s.weight].reshape(s.n_out, -1))
            if s.bias is not None:
                cols.append(live[s.bias].reshape(s.n_out, 1))
            w = torch.cat(cols, 1)
            if w.shape != (s.n_out, s.d):
                raise InputError(
                    f"layer {s.name!r} of the model has W̃ of shape {tuple(w.shape)}, "
                    f"the Gaussian expects {(s.n_out, s.d)}"
                )
            out[s.name] = w
        return out

    def blocks(self, flat: Tensor) -> dict[str, Tensor]:
        """Split flat vectors (..., P) into W̃ blocks (..., n_out, d)."""
        if flat.shape[-1] != self.n_params:
            raise InputError(f"expected vectors of length {self.n_params}, got {tuple(flat.shape)}")
        idx = {s.name: s.index.to(flat.device) for s in self.slots}
        return {
            s.name: flat[..., idx[s.name]].reshape(*flat.shape[:-1], s.n_out, s.d)
            for s in self.slots
        }

    def flatten(self, blocks: Mapping[str, Tensor]) -> Tensor:
        """Inverse of :meth:`blocks`: W̃ blocks (..., n_out, d) to flat vectors (..., P)."""
        first = blocks[self.slots[0].name]
        out = first.new_zeros(*first.shape[:-2], self.n_params)
        for s in self.slots:
            out[..., s.index.to(first.device)] = blocks[s.name].reshape(*first.shape[:-2], -1)
        return out

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """A flat vector (P,) as the parameter dict {name: tensor} of ``functional.unflatten``."""
        like = {n: torch.empty(shape, device="meta") for n, shape in self.shapes.items()}
        return unflatten(flat, like)

    def same_as(self, other: ParameterLayout) -> bool:
        """True when both layouts cover the same parameters with the same layers."""
        return self.shapes == other.shapes and [(s.name, s.n_out, s.d) for s in self.slots] == [
            (s.name, s.n_out, s.d) for s in other.slots
        ]


def _sym(M: Tensor) -> Tensor:
    return 0.5 * (M + M.mT)


def _eig_form(terms: list[Term], name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(U, V, D, log det Λ) with Λ⁻¹ = (U ⊗ V) diag(1/vec D) (U ⊗ V)ᵀ (module docstring).

    One term, or one term plus c·I (c > 0): D = g aᵀ (+ c) from the eigendecompositions of
    the factors; two general terms: generalised eigendecompositions.
    """
    iso = [t for t in terms if t[2] is not None and t[2] > 0]
    if len(terms) == 1 or (len(terms) == 2 and iso):
        G, A, _ = terms[0] if len(terms) == 1 or terms[1] is iso[0] else terms[1]
        g, U = symmetric_eigh(G, f"the precision factor G of layer {name!r}")
        a, V = symmetric_eigh(A, f"the precision factor A of layer {name!r}")
        D = torch.outer(g, a) + (iso[0][2] if len(terms) == 2 else 0.0)
        base = torch.zeros((), dtype=g.dtype, device=g.device)
    elif len(terms) == 2:
        best = None
        for sym, spd in ((terms[0], terms[1]), (terms[1], terms[0])):
            LG = _cholesky_or_none(spd[0])
            LA = _cholesky_or_none(spd[1]) if LG is not None else None
            if LG is None or LA is None:
                continue
            score = min(_inverse_condition(LG), _inverse_condition(LA))
            if best is None or score > best[0]:
                best = (score, sym, LG, LA)
        if best is None:
            raise InputError(
                f"layer {name!r}: an exact two-term precision needs one term with symmetric "
                "positive definite factors"
            )
        _, sym, LG, LA = best
        what = f"the whitened precision factor {{}} of layer {name!r}"
        lam, U, _ = _generalized_eigh(_sym(sym[0]), LG, what.format("G"))
        mu, V, _ = _generalized_eigh(_sym(sym[1]), LA, what.format("A"))
        D = 1 + torch.outer(lam, mu)
        m, n = D.shape
        base = 2 * n * LG.diagonal().log().sum() + 2 * m * LA.diagonal().log().sum()
    else:
        raise InputError(
            f"layer {name!r}: exact log-determinants, samples and KL need at most 2 Kronecker "
            f"terms in the precision, this layer has {len(terms)}; call compressed() first"
        )
    if not bool((D > 0).all()):
        raise InputError(f"layer {name!r}: the precision is not positive definite")
    return U, V, D, base + D.log().sum()


Term = tuple[Tensor, Tensor, float | None]  # (G, A, c) with c set when G ⊗ A = c·I


def _terms(precision: KroneckerProductSum, dtype: torch.dtype) -> list[Term]:
    """The factors in ``dtype``, each with c when both are multiples of the identity (fast path)."""
    out: list[Term] = []
    for t in precision.terms:
        G, A = t.A.to(dtype), t.B.to(dtype)
        iso = torch.equal(G, G[0, 0] * torch.eye(len(G), dtype=dtype, device=G.device))
        iso = iso and torch.equal(A, A[0, 0] * torch.eye(len(A), dtype=dtype, device=A.device))
        out.append((G, A, float(G[0, 0] * A[0, 0]) if iso else None))
    return out


def _quadratic(terms: list[Term], delta: Tensor) -> Tensor:
    """vec(Δ)ᵀ (Σ_i G_i ⊗ A_i) vec(Δ) = Σ_i ⟨Δ, G_i Δ A_iᵀ⟩ (c‖Δ‖² for a term c·I)."""
    return sum(  # type: ignore[return-value]
        c * delta.square().sum() if c is not None else (delta * (G @ delta @ A.mT)).sum()
        for G, A, c in terms
    )


def _check_tau(tau: float) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau < math.inf:
        raise InputError(f"tau (the covariance scale) must be a finite number > 0, got {tau!r}")
    return float(tau)


class KroneckerGaussian:
    """N(M, τ Λ⁻¹) over the covered layers, Λ_l a sum of Kronecker products (module docstring).

    ``means[name]`` has shape (n_out, d); ``precisions[name]`` is a KroneckerProductSum
    (or KroneckerProduct) with factors of sizes (n_out, d). Flat vectors (samples,
    :meth:`mean_vector`) are in the ``functional.flatten`` order of ``layout.param_names``.
    """

    def __init__(
        self,
        layout: ParameterLayout,
        means: Mapping[str, Tensor],
        precisions: Mapping[str, KroneckerProductSum | KroneckerProduct],
        tau: float = 1.0,
    ) -> None:
        self.layout = layout
        self.tau = _check_tau(tau)
        names = layout.layers
        if sorted(means) != sorted(names) or sorted(precisions) != sorted(names):
            raise InputError(
                f"means and precisions must cover exactly the layers {names}; got "
                f"{sorted(means)} and {sorted(precisions)}"
            )
        self._means: dict[str, Tensor] = {}
        self._precisions: dict[str, KroneckerProductSum] = {}
        dtypes = set()
        for s in layout.slots:
            mean, prec = means[s.name], precisions[s.name]
            if isinstance(prec, KroneckerProduct):
                prec = KroneckerProductSum([prec])
            if not isinstance(prec, KroneckerProductSum) or not isinstance(mean, Tensor):
                raise InputError(f"layer {s.name!r}: need a mean Tensor and a Kronecker precision")
            if tuple(mean.shape) != (s.n_out, s.d) or (prec.m, prec.n) != (s.n_out, s.d):
                raise InputError(
                    f"layer {s.name!r}: mean {tuple(mean.shape)} and precision factors "
                    f"({prec.m}, {prec.n}) must both be {(s.n_out, s.d)}"
                )
            dtypes |= {mean.dtype, prec.dtype}
            self._means[s.name], self._precisions[s.name] = mean.detach(), prec
        if len(dtypes) != 1:
            raise InputError(
                f"means and precisions must share one dtype, got {sorted(map(str, dtypes))}"
            )
        self.dtype = dtypes.pop()
        self.compression_error: dict[str, float] = dict.fromkeys(names, 0.0)
        self._forms: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        self._cast: dict[torch.dtype, dict[str, list[Term]]] = {}

    # ---- structure ---------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Module names of the covered layers."""
        return self.layout.layers

    @property
    def param_names(self) -> tuple[str, ...]:
        """Covered parameter names, in flat order."""
        return self.layout.param_names

    @property
    def n_params(self) -> int:
        """Number of covered scalars P."""
        return self.layout.n_params

    def mean(self, name: str) -> Tensor:
        """M_l of layer ``name``, shape (n_out, d)."""
        return self._means[self._known(name)]

    def precision(self, name: str) -> KroneckerProductSum:
        """Λ_l of layer ``name`` (the covariance is τ Λ_l⁻¹)."""
        return self._precisions[self._known(name)]

    def _known(self, name: str) -> str:
        if name not in self._means:
            raise InputError(f"unknown layer {name!r}; layers are {self.layers}")
        return name

    def _factors(self, name: str, dtype: torch.dtype) -> list[Term]:
        """Layer ``name``'s precision factors in ``dtype`` (cached)."""
        if dtype not in self._cast:
            self._cast[dtype] = {n: _terms(p, dtype) for n, p in self._precisions.items()}
        return self._cast[dtype][name]

    def n_terms(self) -> dict[str, int]:
        """Number of Kronecker terms of each layer's precision."""
        return {n: len(p) for n, p in self._precisions.items()}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(layers={self.layers}, P={self.n_params}, tau={self.tau:g}, "
            f"terms={self.n_terms()})"
        )

    # ---- densities -----------------------------------------------------------------------------
    def eig_form(self, name: str) -> tuple[Tensor, Tensor, Tensor]:
        """(U, V, D) with Λ_l⁻¹ = (U ⊗ V) diag(1/vec D) (U ⊗ V)ᵀ; at most 2 terms (cached)."""
        if self._known(name) not in self._forms:
            with torch.no_grad():
                self._forms[name] = _eig_form(self._factors(name, self.dtype), name)
        return self._forms[name][:3]

    def logdet_precision(self, name: str | None = None) -> Tensor:
        """log det Λ_l of one layer, or Σ_l log det Λ_l (at most 2 terms per layer)."""
        names = [name] if name is not None else self.layers
        for n in names:
            self.eig_form(n)
        return sum(self._forms[n][3] for n in names)  # type: ignore[return-value]

    def penalty(self, model: nn.Module) -> Tensor:
        """½ Σ_l vec(W̃_l − M_l)ᵀ Λ_l vec(W̃_l − M_l) / τ at the model's weights, in their dtype.

        The negative log-density up to a constant; differentiable in the model's parameters.
        """
        total = None
        for name, w in self.layout.read(model).items():
            delta = w - self._means[name].to(w)
            value = _quadratic(self._factors(name, w.dtype), delta)
            total = value if total is None else total + value
        if total is None:
            raise InputError("the prior covers no layer of this model")
        return 0.5 * total / self.tau

    # ---- vectors and samples ---------------------------------------------------------------------
    def mean_vector(self) -> Tensor:
        """The mean as a flat vector (P,)."""
        return self.layout.flatten(self._means)

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws (n_samples, P): W̃ = M + √τ U (Z / √D) Vᵀ per layer, Z standard normal."""
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise InputError(f"n_samples must be a positive integer, got {n_samples!r}")
        blocks = {}
        for s in self.layout.slots:
            U, V, D = self.eig_form(s.name)
            mean = self._means[s.name]
            z = torch.randn(
                n_samples, s.n_out, s.d, dtype=self.dtype, device=mean.device, generator=generator
            )
            blocks[s.name] = mean + math.sqrt(self.tau) * (U @ (z * D.rsqrt()) @ V.mT)
        return self.layout.flatten(blocks)

    def as_params(self, vector: Tensor) -> dict[str, Tensor]:
        """A flat vector (P,) as {parameter name: tensor}, for ``FunctionalModel`` / functional_call."""
        return self.layout.unflatten(vector)

    @contextmanager
    def loaded(self, model: nn.Module, vector: Tensor) -> Iterator[nn.Module]:
        """Temporarily copy a flat vector (P,) into the model's covered parameters; restore on exit."""
        live = dict(model.named_parameters())
        params = self.as_params(vector)
        saved = {n: live[n].detach().clone() for n in params}
        try:
            with torch.no_grad():
                for n, t in params.items():
                    live[n].copy_(t.to(live[n].dtype))
            yield model
        finally:
            with torch.no_grad():
                for n, t in saved.items():
                    live[n].copy_(t)

    # ---- new Gaussians ---------------------------------------------------------------------------
    def tempered(self, tau: float) -> KroneckerGaussian:
        """The same Gaussian with covariance scale τ (same mean and precision; caches shared)."""
        out = copy.copy(self)
        out.tau = _check_tau(tau)
        return out

    def with_curvature(self, kfac: KFAC, model: nn.Module, scale: float = 1.0) -> KroneckerGaussian:
        """Posterior-as-prior: N(W̃_model, (Λ_l/τ + scale·G_l ⊗ A_l)⁻¹) per layer (τ = 1; terms appended).

        ``kfac`` should use ``reduction="sum"`` so G ⊗ A is the GGN of the summed loss; the
        mean is the model's current weights (the Laplace approximation around them). The
        factors are projected onto the PSD cone first (float32 rounding leaves eigenvalues
        slightly below 0, which the other factor's large ones would turn into an indefinite
        precision).
        """
        if not isinstance(kfac, KFAC):
            raise InputError(f"kfac must be a tacitbayes KFAC, got {type(kfac).__name__}")
        if sorted(kfac.layers) != sorted(self.layers):
            raise InputError(f"KFAC layers {kfac.layers} differ from the Gaussian's {self.layers}")
        if not (isinstance(scale, (int, float)) and 0 <= scale < math.inf):
            raise InputError(f"scale must be a finite number ≥ 0, got {scale!r}")
        weights = self.layout.read(model)
        means, precs = {}, {}
        for name in self.layers:
            A, G = kfac.factors[name]
            if (G.shape[0], A.shape[0]) != tuple(self._means[name].shape):
                raise InputError(f"KFAC factors of layer {name!r} do not fit its W̃")
            like = self._means[name]
            G, A = (psd_projection(M.to(like), f"KFAC factor of layer {name!r}") for M in (G, A))
            term = KroneckerProduct(scale * G, A)
            precs[name] = self._precisions[name] * (1.0 / self.tau) + term
            means[name] = weights[name].detach().to(like)
        return KroneckerGaussian(self.layout, means, precs)

    def compressed(self) -> KroneckerGaussian:
        """Keep term 0 of each precision, replace terms 1, 2, … by their nearest Kronecker product.

        Layers with at most two terms are unchanged. ``compression_error[name]`` of the result
        is ‖S − Ŝ‖_F / ‖S‖_F of the replaced sum S (0 where nothing was replaced). The result is
        a Gaussian of its own: a bound that uses it as Q stays valid, because KL(Q‖P) is then
        computed exactly for this Q.
        """
        precs, errors = {}, {}
        for name, prec in self._precisions.items():
            terms = prec.terms
            if len(terms) <= 2:
                precs[name], errors[name] = prec, self.compression_error[name]
                continue
            approx, err = nearest_kronecker(terms[1:])
            precs[name] = KroneckerProductSum([terms[0], approx])
            errors[name] = err
        out = KroneckerGaussian(self.layout, self._means, precs, self.tau)
        out.compression_error = errors
        return out


def kl_terms(q: KroneckerGaussian, p: KroneckerGaussian) -> dict[str, Tensor]:
    """Untempered pieces of KL(Q‖P), summed over layers: tr(Λ_P Λ_Q⁻¹), ΔᵀΛ_PΔ, k, ln det Λ_Q, ln det Λ_P.

    Δ = M_Q − M_P, k = Σ_l n_out·d. tr(Λ_P Λ_Q⁻¹) = Σ_i diag(UᵀG_iU)ᵀ (1/D) diag(VᵀA_iV) from Q's
    :meth:`~KroneckerGaussian.eig_form`: O(n_out³ + d³) per layer and term. Q needs at most 2
    terms per layer; P any number for the trace and Mahalanobis parts, at most 2 for ln det Λ_P.
    """
    if not isinstance(q, KroneckerGaussian) or not isinstance(p, KroneckerGaussian):
        raise InputError("kl_divergence needs two KroneckerGaussians")
    if not q.layout.same_as(p.layout):
        raise InputError(f"Q and P cover different parameters or layers: {q.layers} vs {p.layers}")
    if q.dtype != p.dtype:
        raise InputError(f"Q is {q.dtype} but P is {p.dtype}; convert one of them")
    zero = torch.zeros((), dtype=q.dtype)
    out = {"trace": zero, "mahalanobis": zero, "k": zero, "logdet_q": zero, "logdet_p": zero}
    for name in q.layers:
        U, V, D = q.eig_form(name)
        delta = q.mean(name) - p.mean(name)
        out["trace"] = out["trace"] + sum(
            (U * (G @ U)).sum(0) @ D.reciprocal() @ (V * (A @ V)).sum(0)
            for G, A, _ in p._factors(name, p.dtype)
        )
        out["mahalanobis"] = out["mahalanobis"] + _quadratic(p._factors(name, p.dtype), delta)
        out["k"] = out["k"] + delta.numel()
    out["logdet_q"], out["logdet_p"] = q.logdet_precision(), p.logdet_precision()
    return out


def tempered_kl(terms: Mapping[str, Tensor], tau_q: float, tau_p: float) -> Tensor:
    """½[(τ_Q/τ_P) tr + ΔᵀΛ_PΔ/τ_P − k + k ln(τ_P/τ_Q) + ln det Λ_Q − ln det Λ_P] from :func:`kl_terms`."""
    tau_q, tau_p = _check_tau(tau_q), _check_tau(tau_p)
    ratio = tau_q / tau_p
    return 0.5 * (
        ratio * terms["trace"]
        + terms["mahalanobis"] / tau_p
        - terms["k"] * (1 + math.log(ratio))
        + terms["logdet_q"]
        - terms["logdet_p"]
    )


def kl_divergence(q: KroneckerGaussian, p: KroneckerGaussian) -> Tensor:
    """KL(Q‖P) = Σ_l ½[(τ_Q/τ_P) tr(Λ_P Λ_Q⁻¹) + ΔᵀΛ_PΔ/τ_P − k + k ln(τ_P/τ_Q) + ln det Λ_Q − ln det Λ_P].

    Closed form, never dense (see :func:`kl_terms`); Q's covariance is τ_Q Λ_Q⁻¹, P's τ_P Λ_P⁻¹.
    """
    return tempered_kl(kl_terms(q, p), q.tau, p.tau)
