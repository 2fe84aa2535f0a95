"""Learned Kronecker priors from a source task (Schnaus et al. 2023) and their Laplace posteriors.

A source network trained on a source task gives, per layer l, the prior

    p(W̃_l) = N(W̃_src, τ (β F_src + α δ_l I)⁻¹),

F_src = s·G_l ⊗ A_l the source Laplace's KFAC block of the *summed* loss (so F_src ≈ N_src·E[…]),
δ_l the source Laplace's prior precision for that layer (the precision of its isotropic
prior N(0, δ⁻¹I), in the units of the summed loss: a network trained on the mean loss with
coupled weight decay wd has δ = N_src·wd; after ``optimize_prior_precision`` it is the evidence
maximiser), α, β > 0 scales and τ the covariance scale. Two Kronecker terms per layer: exact.

The prior must not see the bound's data: :func:`data_fingerprint` records SHA-1 digests of the
source examples and :func:`check_prior_independent` refuses a target set that shares any.
The target posterior (:func:`laplace_posterior`) has precision F_t + Λ_P (F_t the target KFAC
block of the summed loss): three exact terms, compressed to two (the isotropic term kept
exactly, the rest replaced by its nearest Kronecker product). A PAC-Bayes bound with that
compressed Q is valid, because KL(Q‖P) is computed exactly for the Q actually used.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tacitbayes.curvature.kfac import KFAC
from tacitbayes.errors import InputError, NotFittedError
from tacitbayes.linalg import KroneckerProduct, KroneckerProductSum
from tacitbayes.linalg.eigen import psd_projection
from tacitbayes.posteriors import Laplace
from tacitbayes.priors.kronecker_gaussian import KroneckerGaussian, ParameterLayout

__all__ = [
    "KroneckerPrior",
    "check_prior_independent",
    "data_fingerprint",
    "laplace_posterior",
]

Fingerprint = frozenset[str]


def data_fingerprint(inputs: Tensor) -> Fingerprint:
    """{SHA-1 of each example's dtype, shape and raw bytes}; compare sets in one representation."""
    if not isinstance(inputs, Tensor) or inputs.ndim < 1 or len(inputs) == 0:
        raise InputError("inputs must be a non-empty Tensor with a leading example dimension")
    x = inputs.detach().cpu().contiguous()
    header = f"{x.dtype}{tuple(x.shape[1:])}".encode()
    rows = x.reshape(len(x), -1).view(torch.uint8).numpy()
    return frozenset(hashlib.sha1(header + row.tobytes()).hexdigest() for row in rows)


def check_prior_independent(prior: KroneckerGaussian, target_inputs: Tensor) -> str:
    """ "verified" if no target example is among the prior's source examples, "unverified" if unknown.

    Raises InputError when they overlap: a PAC-Bayes prior must not depend on the bound's data.
    """
    source = getattr(prior, "source_fingerprint", None)
    if source is None:
        return "unverified"
    target = data_fingerprint(target_inputs)
    shared = len(target & source)
    if shared:
        raise InputError(
            "prior was built on examples of the bound's data: the bound would be invalid "
            f"({shared} of {len(target)} distinct target examples are source examples)"
        )
    return "verified"


def _positive(name: str, value: float, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value < math.inf
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise InputError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _per_layer(
    name: str, value: float | Mapping[str, float], layers: list[str], allow_zero: bool = False
) -> dict[str, float]:
    """A scalar or a {layer: value} mapping as one positive (or, if allowed, zero) value per layer."""
    if isinstance(value, Mapping):
        if sorted(value) != sorted(layers):
            raise InputError(f"{name} must give one value per layer {layers}, got {sorted(value)}")
        return {k: _positive(f"{name}[{k!r}]", float(value[k]), allow_zero) for k in layers}
    return dict.fromkeys(layers, _positive(name, value, allow_zero))


class KroneckerPrior(KroneckerGaussian):
    """A Gaussian prior N(M, τΛ⁻¹) with the fingerprint of the data it was built on.

    ``source_fingerprint``: SHA-1 digests of the source examples (None: unknown; an empty set:
    built on no data). ``hyperparameters``: the α, β, δ, τ (or λ) it was built with.
    """

    def __init__(
        self,
        layout: ParameterLayout,
        means: Mapping[str, Tensor],
        precisions: Mapping[str, KroneckerProductSum | KroneckerProduct],
        tau: float = 1.0,
        source_fingerprint: Fingerprint | None = None,
        hyperparameters: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(layout, means, precisions, tau)
        self.source_fingerprint = source_fingerprint
        self.hyperparameters = dict(hyperparameters or {})

    @classmethod
    def from_kfac(
        cls,
        kfac: KFAC,
        model: nn.Module,
        alpha: float = 1.0,
        beta: float | Mapping[str, float] = 1.0,
        delta: float | Mapping[str, float] = 1.0,
        tau: float = 1.0,
        source_inputs: Tensor | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> KroneckerPrior:
        """N(W̃_model, τ(β G ⊗ A + αδ_l I)⁻¹) per layer from a (sum-loss) KFAC of the source task."""
        if not isinstance(kfac, KFAC):
            raise InputError(f"kfac must be a tacitbayes KFAC, got {type(kfac).__name__}")
        layout = ParameterLayout(model, kfac.param_names)
        return cls._build(
            layout,
            layout.read(model),
            {n: (G, A) for n, (A, G) in kfac.factors.items()},
            alpha,
            beta,
            delta,
            tau,
            source_inputs,
            dtype,
        )

    @classmethod
    def from_laplace(
        cls,
        la_source: Laplace,
        alpha: float = 1.0,
        beta: float | Mapping[str, float] = 1.0,
        tau: float = 1.0,
        source_inputs: Tensor | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> KroneckerPrior:
        """N(w_src, τ(β F_src + α δ_l I)⁻¹) per layer from a fitted ``Laplace(structure="kron")``.

        F_src = s·G ⊗ A is the Laplace's KFAC block (summed loss, times its data scale s), δ_l
        its prior precision for the layer (``la_source.prior_precision``), w_src its mean.
        ``beta`` is one β ≥ 0 or a {layer: β_l} mapping (β_l = 0: that layer's prior is the
        isotropic N(w_src, τ(αδ_l)⁻¹I), e.g. an output layer whose classes change).
        """
        if not isinstance(la_source, Laplace) or la_source.structure != "kron":
            raise InputError("from_laplace needs a fitted tacitbayes Laplace with structure='kron'")
        curv = la_source.curvature
        if la_source.mean is None:
            raise NotFittedError("from_laplace needs a fitted Laplace: call la_source.fit first")
        layout = ParameterLayout(la_source.model, la_source.param_names)
        prior = la_source.prior_precision.detach()
        deltas = {
            g: float(prior if prior.ndim == 0 else prior[i]) for i, g in enumerate(la_source.groups)
        }
        factors = {n: (curv.scale * G, A) for n, (A, G) in curv.kfac.factors.items()}
        return cls._build(
            layout,
            layout.blocks(la_source.mean),
            factors,
            alpha,
            beta,
            deltas,
            tau,
            source_inputs,
            dtype,
        )

    @classmethod
    def _build(
        cls,
        layout: ParameterLayout,
        means: Mapping[str, Tensor],
        factors: Mapping[str, tuple[Tensor, Tensor]],
        alpha: float,
        beta: float | Mapping[str, float],
        delta: float | Mapping[str, float],
        tau: float,
        source_inputs: Tensor | None,
        dtype: torch.dtype,
    ) -> KroneckerPrior:
        """Terms [αδ_l I ⊗ I, β_l G ⊗ A] per layer (the first alone where β_l = 0); factors {layer: (G, A)}.

        G and A are projected onto the PSD cone (see :func:`~tacitbayes.linalg.eigen.psd_projection`).
        """
        alpha = _positive("alpha", alpha)
        betas = _per_layer("beta", beta, layout.layers, allow_zero=True)
        deltas = _per_layer("delta", delta, layout.layers)
        precs: dict[str, KroneckerProductSum | KroneckerProduct] = {}
        kw = {"dtype": dtype}
        for s in layout.slots:
            G, A = (
                psd_projection(M.to(dtype), f"source KFAC factor of layer {s.name!r}")
                for M in factors[s.name]
            )
            iso = KroneckerProduct(
                alpha * deltas[s.name] * torch.eye(s.n_out, **kw), torch.eye(s.d, **kw)
            )
            b = betas[s.name]
            precs[s.name] = iso + KroneckerProduct(b * G, A) if b else iso
        fingerprint = None if source_inputs is None else data_fingerprint(source_inputs)
        shared = len(set(betas.values())) == 1
        hyper = {"alpha": alpha, "beta": betas[layout.layers[0]] if shared else betas}
        hyper.update(delta=deltas, tau=tau)
        means64 = {n: m.detach().to(dtype) for n, m in means.items()}
        return cls(layout, means64, precs, tau, fingerprint, hyper)

    @classmethod
    def isotropic(
        cls,
        model: nn.Module,
        precision: float | Mapping[str, float],
        mean: nn.Module | Tensor | None = None,
        param_names: str | Sequence[str] | None = None,
        tau: float = 1.0,
        source_inputs: Tensor | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> KroneckerPrior:
        """N(μ, (τ/λ_l) I) per layer; μ = 0 (mean=None), a network's weights, or a flat vector (P,).

        A zero-mean prior uses no data (its fingerprint is the empty set); one centred at a
        trained network's weights needs ``source_inputs`` to be verified.
        """
        layout = ParameterLayout(model, param_names)
        lams = _per_layer("precision", precision, layout.layers)
        if mean is None:
            means = {s.name: torch.zeros(s.n_out, s.d, dtype=dtype) for s in layout.slots}
        elif isinstance(mean, nn.Module):
            means = {n: w.detach().to(dtype) for n, w in layout.read(mean).items()}
        elif isinstance(mean, Tensor) and mean.shape == (layout.n_params,):
            means = {n: w.detach().to(dtype) for n, w in layout.blocks(mean).items()}
        else:
            raise InputError(
                f"mean must be None, an nn.Module or a vector of length {layout.n_params}"
            )
        precs = {
            s.name: KroneckerProduct(
                lams[s.name] * torch.eye(s.n_out, dtype=dtype), torch.eye(s.d, dtype=dtype)
            )
            for s in layout.slots
        }
        if source_inputs is not None:
            fingerprint: Fingerprint | None = data_fingerprint(source_inputs)
        else:
            fingerprint = frozenset() if mean is None else None
        return cls(layout, means, precs, tau, fingerprint, {"precision": lams, "tau": tau})


def laplace_posterior(
    prior: KroneckerGaussian, kfac: KFAC, model: nn.Module, tau: float = 1.0, compress: bool = True
) -> KroneckerGaussian:
    """Q = N(W̃_model, τ(F_t + Λ_P/τ_P)⁻¹): target KFAC block (reduction="sum") plus the prior precision.

    Exact as a sum of Kronecker terms; with ``compress`` (needed for log det, samples and KL when
    the prior has two terms) the terms after the first are replaced by their nearest Kronecker
    product and the relative errors recorded in ``compression_error``. Bounds stay valid: KL is
    exact for the Q returned.
    """
    if kfac.reduction != "sum":
        raise InputError("the target KFAC must use reduction='sum' (the GGN of the summed loss)")
    post = prior.with_curvature(kfac, model)
    return (post.compressed() if compress else post).tempered(tau)
