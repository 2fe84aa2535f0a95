"""Gaussians with diagonal precision over a network's parameters: the EWC-style prior.

N(μ, diag(λ)⁻¹) over the chosen parameters, μ and λ flat vectors (P,) in the order of
:func:`tacitbayes.functional.flatten` (``named_parameters()`` order). Its penalty
½ Σ_i λ_i (θ_i − μ_i)² is the negative log-density up to a constant.

Posterior-as-prior with the diagonal of the GGN of the *summed* loss of each task,
F_t = diag Σ_n J_nᵀ Λ_n J_n, gives online EWC (Schwarz et al. 2018, with decay γ = 1)
with the exact GGN diagonal in place of the empirical Fisher Σ_n g_n g_nᵀ:
after tasks 1 … t the precision is δ + β Σ_s F_s and the mean the weights after task t.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tacitbayes.errors import InputError
from tacitbayes.functional import flatten, resolve_param_names

__all__ = ["DiagonalGaussian", "DiagonalPrior"]


def _nonnegative(name: str, value: object) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not 0 <= value < math.inf:  # type: ignore[operator]
        raise InputError(f"{name} must be a finite number ≥ 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


class DiagonalGaussian:
    """N(μ, diag(λ)⁻¹) over the parameters ``param_names`` of a model (module docstring)."""

    def __init__(
        self,
        param_names: Sequence[str],
        shapes: Sequence[torch.Size],
        mean: Tensor,
        precision: Tensor,
    ) -> None:
        self.param_names = tuple(param_names)
        self.shapes = tuple(torch.Size(s) for s in shapes)
        if len(self.param_names) != len(self.shapes) or not self.param_names:
            raise InputError("need one shape per parameter name, and at least one parameter")
        n = sum(math.prod(s) for s in self.shapes)
        for what, v in (("mean", mean), ("precision", precision)):
            if not isinstance(v, Tensor) or v.shape != (n,):
                raise InputError(f"{what} must be a Tensor of shape ({n},)")
            if not bool(torch.isfinite(v).all()):
                raise InputError(f"{what} holds non-finite values")
        if bool((precision < 0).any()):
            raise InputError("precision must be non-negative")
        self.mean = mean.detach()
        self.precision = precision.detach()

    @property
    def n_params(self) -> int:
        """Number of covered scalars P."""
        return int(self.mean.numel())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(P={self.n_params}, params={list(self.param_names)})"

    def _weights(self, model: nn.Module) -> Tensor:
        """θ: the model's covered parameters as a flat vector, differentiable."""
        live = dict(model.named_parameters())
        missing = [n for n in self.param_names if n not in live]
        if missing:
            raise InputError(f"the model has no parameter(s) {missing} of this Gaussian")
        shapes = tuple(live[n].shape for n in self.param_names)
        if shapes != self.shapes:
            raise InputError(f"the model's parameter shapes {shapes} differ from {self.shapes}")
        return flatten({n: live[n] for n in self.param_names})

    @classmethod
    def isotropic(
        cls,
        model: nn.Module,
        precision: float,
        param_names: str | Sequence[str] | None = None,
    ) -> DiagonalGaussian:
        """N(0, δ⁻¹ I): the penalty (δ/2)‖θ‖² of weight decay."""
        names = resolve_param_names(model, param_names)
        live = dict(model.named_parameters())
        theta = flatten({n: live[n].detach() for n in names})
        delta = _nonnegative("precision", precision)
        return cls(
            names,
            [live[n].shape for n in names],
            torch.zeros_like(theta),
            torch.full_like(theta, delta),
        )

    @classmethod
    def from_curvature(
        cls,
        diag: Tensor,
        model: nn.Module,
        strength: float = 1.0,
        delta: float = 1.0,
        param_names: str | Sequence[str] | None = None,
    ) -> DiagonalGaussian:
        """N(θ_model, diag(β·F + δ)⁻¹), F a curvature diagonal (P,) such as the summed-loss GGN's."""
        names = resolve_param_names(model, param_names)
        live = dict(model.named_parameters())
        theta = flatten({n: live[n].detach() for n in names})
        beta, delta = _nonnegative("strength", strength), _nonnegative("delta", delta)
        diag = _check_diag(diag, theta)
        return cls(names, [live[n].shape for n in names], theta.clone(), beta * diag + delta)

    def with_curvature(
        self, diag: Tensor, model: nn.Module, scale: float = 1.0
    ) -> DiagonalGaussian:
        """Posterior-as-prior: N(θ_model, diag(λ + scale·F)⁻¹), F the new task's curvature diagonal."""
        theta = self._weights(model).detach()
        scale = _nonnegative("scale", scale)
        diag = _check_diag(diag, theta)
        return DiagonalGaussian(
            self.param_names, self.shapes, theta.clone(), self.precision + scale * diag
        )

    def penalty(self, model: nn.Module) -> Tensor:
        """½ Σ_i λ_i (θ_i − μ_i)² at the model's weights, differentiable in them."""
        theta = self._weights(model)
        delta = theta - self.mean.to(theta)
        return 0.5 * (self.precision.to(theta) * delta.square()).sum()


def _check_diag(diag: Tensor, theta: Tensor) -> Tensor:
    """A curvature diagonal of the parameters' length, finite and ≥ 0, in their dtype."""
    if not isinstance(diag, Tensor) or diag.shape != theta.shape:
        raise InputError(f"the curvature diagonal must be a Tensor of shape {tuple(theta.shape)}")
    if not bool(torch.isfinite(diag).all()) or bool((diag < 0).any()):
        raise InputError("the curvature diagonal must be finite and non-negative")
    return diag.detach().to(theta)


DiagonalPrior = DiagonalGaussian  # the name that mirrors KroneckerPrior
