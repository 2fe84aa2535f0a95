"""Closed-form (GLM) predictives of the linearised network under a Gaussian weight posterior.

Linearised at θ*, f_lin(θ, x) = f(θ*, x) + J(x)(θ − θ*); with θ ~ N(θ*, Σ) every output
vector is Gaussian, f_lin(x_n) ~ N(f(θ*, x_n), Σ_f(x_n)) with Σ_f(x_n) = J(x_n) Σ J(x_n)ᵀ.

:func:`functional_covariance` computes Σ_f without a P×P matrix: per-example Jacobians
J(x_n) (O×P, one vmapped VJP per output) for as many examples as keep ~4·O·P numbers per
example under the working budget (:mod:`tacitbayes.budget`), and Σ applied to the block
[J(x_n)ᵀ]_n of shape (P, chunk·O) by a callable (a Laplace backend's ``covariance_apply``).

Links from N(μ, Σ_f) to class probabilities, without samples:

* :func:`probit`: E[softmax(f)]_k ≈ softmax_k(μ_k / √(1 + (π/8) Σ_kk)). One output (a
  Bernoulli logit): σ(a) ≈ Φ(λa) with λ² = π/8 and E[Φ(λf)] = Φ(λμ / √(1 + λ²v)) exactly,
  so E[σ(f)] ≈ σ(μ / √(1 + (π/8) v)), returned as [1 − p, p].
* :func:`laplace_bridge` (Hobbhahn, Kristiadi & Hennig, 2022): the Dirichlet whose Laplace
  approximation in the softmax basis z (π = softmax(z)) has mean μ and variances Σ_kk.
  The Dirichlet's log density in z is Σ_k α_k z_k − α₀ logsumexp(z) (α₀ = Σ_k α_k), with
  mode μ_k = log α_k − (1/K) Σ_l log α_l (the sum-zero representative) and, on the sum-zero
  subspace, covariance C diag(α)⁻¹ C with C = I − 11ᵀ/K:
  Σ_kl = δ_kl/α_k − (1/K)(1/α_k + 1/α_l) + (1/K²) Σ_j 1/α_j (:func:`dirichlet_to_gaussian`).
  With α_j = A e^{μ_j} (A = exp mean log α) the diagonal inverts exactly to
  α_k = (1/Σ_kk)(1 − 2/K + (e^{μ_k}/K²) Σ_l e^{−μ_l}); the predictive is the mean α/α₀.
  softmax(f) is unchanged by f ↦ f + c1, so a full covariance is first projected onto the
  sum-zero subspace (μ ↦ Cμ, Σ ↦ CΣC), which leaves the distribution of softmax(f) exactly
  as it was; variances alone (shape (..., K)) are taken as already in that basis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from tacitbayes.batches import Inputs, move_inputs, n_examples
from tacitbayes.budget import WORKING_BYTES
from tacitbayes.curvature.columns import per_example_columns
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel

__all__ = [
    "LINK_APPROXIMATIONS",
    "bridge_concentration",
    "dirichlet_to_gaussian",
    "functional_covariance",
    "glm_predictive",
    "laplace_bridge",
    "probit",
]

LINK_APPROXIMATIONS = ("probit", "bridge", "mc")
PROBIT_SCALE = math.pi / 8  # λ² of σ(a) ≈ Φ(λa)

CovarianceApply = Callable[[Tensor], Tensor]


def glm_predictive(
    model: nn.Module,
    x: Inputs,
    covariance_apply: CovarianceApply,
    param_names: str | Sequence[str] | None = None,
    max_bytes: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(μ, Σ_f): μ_n = f(θ*, x_n) of shape (N, O) and Σ_f(x_n) = J(x_n) Σ J(x_n)ᵀ of shape (N, O, O).

    ``covariance_apply`` maps a block V of shape (P, k) to ΣV, P the covered parameters in
    flat order; ``max_bytes`` bounds the Jacobian blocks (default ``budget.WORKING_BYTES``).
    """
    if not isinstance(x, (Tensor, dict)) or n_examples(x) < 1:
        raise InputError("x must be a Tensor (or keyword inputs) with a batch dimension")
    if not callable(covariance_apply):
        raise InputError("covariance_apply must map a block (P, k) to Σ times it")
    fmodel = FunctionalModel(model, param_names)
    params = {k: v.detach() for k, v in fmodel.params().items()}
    first = next(iter(params.values()))
    x = move_inputs(x, first.device, first.dtype)
    with torch.no_grad():
        mean = fmodel(params, x)
    if mean.ndim != 2:
        raise InputError(f"the model must map a batch to (N, O) outputs, got {tuple(mean.shape)}")
    n, o = mean.shape
    n_p = sum(t.numel() for t in params.values())
    eye = torch.eye(o, dtype=mean.dtype, device=mean.device).expand(n, o, o)
    budget = WORKING_BYTES if max_bytes is None else int(max_bytes)
    covs = []
    # per_example_columns keeps 2·O·P numbers per example; Σ J_nᵀ and its work as many again
    for block in per_example_columns(model, fmodel.param_names, x, eye, max_bytes=budget // 2):
        b = block.shape[0]  # block: (b, O, P), row o of example n is J(x_n)[o]
        applied = covariance_apply(block.reshape(b * o, n_p).mT)
        if applied.shape != (n_p, b * o):
            raise InputError(
                f"covariance_apply returned shape {tuple(applied.shape)}, expected {(n_p, b * o)}"
            )
        cov = block @ applied.mT.reshape(b, o, n_p).mT
        covs.append(0.5 * (cov + cov.mT))
    return mean, torch.cat(covs)


def functional_covariance(
    model: nn.Module,
    x: Inputs,
    covariance_apply: CovarianceApply,
    param_names: str | Sequence[str] | None = None,
    max_bytes: int | None = None,
) -> Tensor:
    """Σ_f(x_n) = J(x_n) Σ J(x_n)ᵀ for every example, shape (N, O, O); never a P×P matrix."""
    return glm_predictive(model, x, covariance_apply, param_names, max_bytes)[1]


def _variances(mean: Tensor, cov: Tensor) -> Tensor:
    """Σ_kk from a covariance (..., K, K) or variances (..., K), clamped at 0 (rounding)."""
    if not isinstance(mean, Tensor) or not isinstance(cov, Tensor) or mean.ndim < 1:
        raise InputError("mean must be a Tensor (..., K) and cov a Tensor (..., K, K) or (..., K)")
    if cov.shape == mean.shape:
        var = cov
    elif cov.shape == (*mean.shape, mean.shape[-1]):
        var = cov.diagonal(dim1=-2, dim2=-1)
    else:
        raise InputError(
            f"cov of shape {tuple(cov.shape)} fits neither the covariance "
            f"{(*mean.shape, mean.shape[-1])} nor the variances {tuple(mean.shape)} of the mean"
        )
    return var.clamp_min(0)


def probit(mean: Tensor, cov: Tensor) -> Tensor:
    """softmax_k(μ_k / √(1 + (π/8) Σ_kk)); one output: [1 − p, p] with p = σ(μ / √(1 + (π/8) σ²))."""
    kappa = torch.rsqrt(1 + PROBIT_SCALE * _variances(mean, cov))
    if mean.shape[-1] == 1:
        p = torch.sigmoid(kappa * mean)
        return torch.cat([1 - p, p], dim=-1)
    return torch.softmax(kappa * mean, dim=-1)


def _sum_zero(mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
    """(Cμ, CΣC) with C = I − 11ᵀ/K: the same distribution of softmax(f), on the sum-zero subspace."""
    centred = cov - cov.mean(-1, keepdim=True)
    centred = centred - centred.mean(-2, keepdim=True)
    return mean - mean.mean(-1, keepdim=True), centred


def bridge_concentration(mean: Tensor, cov: Tensor) -> Tensor:
    """Dirichlet α of the Laplace bridge: α_k = (1/Σ_kk)(1 − 2/K + (e^{μ_k}/K²) Σ_l e^{−μ_l})."""
    k = mean.shape[-1] if isinstance(mean, Tensor) and mean.ndim >= 1 else 0
    if k < 2:
        raise InputError(
            f"the Laplace bridge needs K ≥ 2 classes, got mean of shape {tuple(getattr(mean, 'shape', ()))}; "
            "use probit for a single (Bernoulli) output"
        )
    if cov.shape == (*mean.shape, k):
        mean, cov = _sum_zero(mean, cov)
    var = _variances(mean, cov)
    if bool((var <= 0).any()):
        raise InputError("the Laplace bridge needs every variance Σ_kk > 0")
    # e^{μ_k} Σ_l e^{−μ_l} / K² = exp(μ_k + logsumexp(−μ) − 2 log K), stable for large |μ|
    spread = torch.exp(mean + torch.logsumexp(-mean, dim=-1, keepdim=True) - 2 * math.log(k))
    return (1 - 2 / k + spread) / var


def laplace_bridge(mean: Tensor, cov: Tensor) -> Tensor:
    """Predictive class probabilities α/α₀ of the Laplace-bridge Dirichlet (:func:`bridge_concentration`)."""
    alpha = bridge_concentration(mean, cov)
    return alpha / alpha.sum(-1, keepdim=True)


def dirichlet_to_gaussian(alpha: Tensor) -> tuple[Tensor, Tensor]:
    """Laplace approximation of Dir(α) in the softmax basis: μ_k = log α_k − mean log α, Σ = C diag(α)⁻¹ C."""
    if not isinstance(alpha, Tensor) or alpha.ndim < 1 or alpha.shape[-1] < 2:
        raise InputError("alpha must be a Tensor (..., K) with K ≥ 2")
    if not bool(torch.isfinite(alpha).all()) or bool((alpha <= 0).any()):
        raise InputError("alpha must be finite and > 0")
    log_alpha = alpha.log()
    mean = log_alpha - log_alpha.mean(-1, keepdim=True)
    inv = alpha.reciprocal()
    return mean, _sum_zero(mean, torch.diag_embed(inv))[1]
