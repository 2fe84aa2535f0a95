"""Curvature backends of the Laplace posterior: precision Σ⁻¹ = s·H + diag(δ).

H is the GGN of the *sum* loss L = Σ_n ℓ_n at θ*, s a scale (1/σ² for regression,
times N/n when H was computed on n of N training examples), δ the prior precision with
one value per prior group (a scalar δ is the same value for every group). A backend
covers P parameters in the flat order of :func:`tacitbayes.functional.flatten` over its
``param_names`` and provides:

* ``logdet(delta)`` = log det(sH + diag δ), differentiable in ``delta`` (shape (n_groups,));
* ``sample_transform(z, delta)``: standard-normal columns z (P, k) ↦ N(0, (sH + diag δ)⁻¹);
* ``variance(delta)`` = diag (sH + diag δ)⁻¹;
* ``covariance_apply(V, delta)`` = (sH + diag δ)⁻¹ V for a block V (P, k), from the
  backend's own factors (never a P×P inverse);
* ``state()`` and ``from_state(...)`` to store and restore the curvature exactly;
* ``fit(model, loss, data, param_names)``: the curvature at scale 1 in ONE pass over the
  data, with ``n_data``, ``n_outputs`` and ``loss_sum`` (Σ_n ℓ_n at θ*) read on the way;
  the caller sets ``scale`` afterwards.

Backends:

* :class:`DiagonalCurvature`: H ≈ diag(GGN), exact (``curvature.columns``: layer formulas
  for Linear/Conv2d, per-example columns for the rest); groups are the modules that own
  the parameters (:func:`module_groups`).
* :class:`KroneckerCurvature`: H ≈ KFAC = diag_l(G_l ⊗ A_l) for Linear/Conv2d layers and
  exact diagonal blocks for every other module (norms, embeddings); groups are the same
  modules (the KFAC blocks, reordered to :func:`module_groups` order).
  Uses sH + δ = s(H + δ/s): logdet = P log s + logdet_KFAC(δ/s), samples = T_KFAC(z, δ/s)/√s.
* :class:`DenseCurvature`: H = the GGN block of the covered parameters as a dense P×P matrix
  from per-example columns (last-layer Laplace; 5,130 parameters for 512→10 take 105 MB in
  float32); one group.
  logdet from the eigenvalues of H (eigvalsh once: closed form for every δ); solves and
  samples from the Cholesky factor of sH + δI (cached for the last δ).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tacitbayes.curvature import KFAC
from tacitbayes.curvature.columns import dense_ggn_pass, diagonal_ggn_pass
from tacitbayes.curvature.layers import split_layers
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel
from tacitbayes.linalg.cholesky import jittered_cholesky
from tacitbayes.linalg.eigen import symmetric_eigh
from tacitbayes.posteriors.glm_factored import LayerCovariance

__all__ = [
    "MAX_DENSE_PARAMS",
    "DenseCurvature",
    "DiagonalCurvature",
    "KroneckerCurvature",
    "module_groups",
    "per_parameter",
]

MAX_DENSE_PARAMS = 20_000  # a dense P×P curvature above this needs > 3 GB in float64


def module_groups(model: nn.Module, param_names: Sequence[str]) -> tuple[list[str], Tensor]:
    """Prior groups = owning modules: (module names in order, sizes (n_groups,) of their flat ranges).

    A module's own parameters are consecutive in flat order, so group g covers the
    contiguous range of ``sizes[g]`` entries after the groups before it.
    """
    params = FunctionalModel(model, param_names).params()
    groups: list[str] = []
    sizes: list[int] = []
    for name, t in params.items():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if not groups or groups[-1] != owner:
            if owner in groups:
                raise InputError(f"the parameters of module {owner!r} are not consecutive")
            groups.append(owner)
            sizes.append(0)
        sizes[-1] += t.numel()
    return groups, torch.tensor(sizes, dtype=torch.long)


def per_parameter(values: Tensor, sizes: Tensor) -> Tensor:
    """Expand one value per group to the flat parameter vector (group g repeated sizes[g] times)."""
    return torch.repeat_interleave(values, sizes.to(values.device), output_size=int(sizes.sum()))


def _check_scale(scale: float) -> float:
    scale = float(scale)
    if not (scale > 0 and scale < float("inf")):
        raise InputError(f"curvature scale must be finite and > 0, got {scale}")
    return scale


class _Scaled:
    """The curvature scale s of sH + diag δ and the statistics of the fitting pass."""

    _scale = 1.0
    n_data = 0
    n_outputs = 0
    loss_sum = 0.0

    @property
    def scale(self) -> float:
        """s > 0."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        self._scale = _check_scale(value)
        self._chol = None  # a cached factor of sH + δI no longer holds

    def _record(self, n_data: int, n_outputs: int, loss_sum: float) -> None:
        self.n_data, self.n_outputs, self.loss_sum = n_data, n_outputs, loss_sum


class DiagonalCurvature(_Scaled):
    """sH + diag δ with H = diag(GGN): logdet Σ log(s h_i + δ_g(i)), samples z/√(s h + δ)."""

    kind = "diag"

    def __init__(self, diagonal: Tensor, scale: float, groups: list[str], group_sizes: Tensor):
        if diagonal.ndim != 1 or diagonal.shape[0] != int(group_sizes.sum()):
            raise InputError(
                f"diagonal of shape {tuple(diagonal.shape)} does not fit "
                f"{int(group_sizes.sum())} parameters"
            )
        negative = bool((diagonal < 0).any())  # a GGN diagonal is ≥ 0 up to rounding
        self.diagonal = diagonal.clamp_min(0) if negative else diagonal
        self.scale = scale
        self.groups, self.group_sizes = groups, group_sizes

    @classmethod
    def fit(
        cls, model: nn.Module, loss: str, data: Iterable[Any], param_names: Sequence[str]
    ) -> DiagonalCurvature:
        """Exact GGN diagonal of the sum loss, scale 1 (one forward, C batched backward passes per batch)."""
        result = diagonal_ggn_pass(model, loss, data, param_names)
        out = cls(result.curvature, 1.0, *module_groups(model, param_names))
        out._record(result.n_data, result.n_outputs, result.loss_sum)
        return out

    def _precision(self, delta: Tensor) -> Tensor:
        return self.scale * self.diagonal + per_parameter(delta, self.group_sizes)

    def logdet(self, delta: Tensor) -> Tensor:
        """Σ_i log(s h_i + δ_g(i)), logs and sum in float64."""
        return self._precision(delta).double().log().sum()

    def sample_transform(self, z: Tensor, delta: Tensor) -> Tensor:
        """z_i / √(s h_i + δ_g(i)) for z of shape (P, k)."""
        return z * self._precision(delta).rsqrt().unsqueeze(1)

    def variance(self, delta: Tensor) -> Tensor:
        """1 / (s h_i + δ_g(i))."""
        return self._precision(delta).reciprocal()

    def covariance_apply(self, V: Tensor, delta: Tensor) -> Tensor:
        """(sH + diag δ)⁻¹ V = V_i / (s h_i + δ_g(i)) row-wise, V of shape (P, k)."""
        return V * self._precision(delta).reciprocal().unsqueeze(1)

    def layer_covariances(
        self, delta: Tensor, model: nn.Module, param_names: Sequence[str]
    ) -> dict[str, LayerCovariance]:
        """Σ on each Linear/Conv2d layer's W̃ = [W, b]: the variances as an (out × d) grid."""
        variance = self.variance(delta)
        layers, _ = split_layers(model, tuple(param_names))
        return {
            la.name: LayerCovariance(None, None, la.read(variance[:, None])[0]) for la in layers
        }

    def state(self) -> dict[str, Any]:
        """The GGN diagonal and the scale."""
        return {"diagonal": self.diagonal.clone(), "scale": self.scale}

    @classmethod
    def from_state(
        cls, state: dict[str, Any], model: nn.Module, loss: str, param_names: Sequence[str]
    ) -> DiagonalCurvature:
        """Rebuild from :meth:`state` (the groups come from the model)."""
        return cls(state["diagonal"].clone(), state["scale"], *module_groups(model, param_names))


class KroneckerCurvature(_Scaled):
    """sH + diag δ with H = KFAC block diagonal G_l ⊗ A_l; solves via the KFAC object."""

    kind = "kron"

    def __init__(self, kfac: KFAC, scale: float) -> None:
        self.kfac = kfac
        self.scale = scale
        self.groups, self.group_sizes = module_groups(kfac.fmodel.module, kfac.param_names)
        if sorted(self.groups) != sorted(kfac.blocks):
            raise InputError(f"KFAC blocks {kfac.blocks} differ from the modules {self.groups}")
        # δ arrives in module_groups order; KFAC wants its own block order
        self._perm = torch.tensor([self.groups.index(n) for n in kfac.blocks], dtype=torch.long)
        self._eig: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    @classmethod
    def fit(
        cls,
        model: nn.Module,
        loss: str,
        data: Iterable[Any],
        param_names: Sequence[str],
        conv_approx: str = "expand",
    ) -> KroneckerCurvature:
        """KFAC of the sum loss, scale 1 (one forward and C batched backward passes per batch)."""
        kfac = KFAC(model, loss, data, "sum", param_names, conv_approx)
        out = cls(kfac, 1.0)
        out._record(kfac.n_data, kfac.n_outputs, kfac.loss_sum)
        return out

    def logdet(self, delta: Tensor) -> Tensor:
        """P log s + log det(KFAC + δ/s)."""
        d = delta[self._perm.to(delta.device)] / self.scale
        return self.kfac.shape[0] * math.log(self.scale) + self.kfac.logdet(d)

    def sample_transform(self, z: Tensor, delta: Tensor) -> Tensor:
        """T_KFAC(z, δ/s) / √s, covariance (1/s)(KFAC + δ/s)⁻¹ = (sH + δ)⁻¹."""
        d = delta[self._perm.to(delta.device)] / self.scale
        return self.kfac.sample_transform(z, d) / self.scale**0.5

    def covariance_apply(self, V: Tensor, delta: Tensor) -> Tensor:
        """(sH + δ)⁻¹ V = (KFAC + δ/s)⁻¹ V / s: per layer W̃ ↦ Q_G[(Q_GᵀW̃Q_A)/M]Q_Aᵀ, diagonal blocks v/(h + δ/s)."""
        d = delta[self._perm.to(delta.device)] / self.scale
        return self.kfac.solve(V, d) / self.scale

    def _eigen(self, name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(λ_G, Q_G, λ_A, Q_A) of layer ``name``'s factors, cached (eigenvalues clamped at 0)."""
        if name not in self._eig:
            A, G = self.kfac.factors[name]
            lam_g, q_g = symmetric_eigh(G, f"the KFAC factor G of layer {name!r}")
            lam_a, q_a = symmetric_eigh(A, f"the KFAC factor A of layer {name!r}")
            self._eig[name] = (lam_g.clamp_min(0), q_g, lam_a.clamp_min(0), q_a)
        return self._eig[name]

    def layer_covariances(
        self, delta: Tensor, model: nn.Module, param_names: Sequence[str]
    ) -> dict[str, LayerCovariance]:
        """Σ on each Kronecker layer: (Q_G ⊗ Q_A) diag(1/(s(λ_G λ_Aᵀ + δ/s))) (Q_G ⊗ Q_A)ᵀ."""
        out = {}
        for name, d in zip(self.groups, (delta / self.scale).unbind(0), strict=True):
            if name in self.kfac.factors:
                lam_g, q_g, lam_a, q_a = self._eigen(name)
                m = lam_g[:, None] * lam_a[None, :] + d
                out[name] = LayerCovariance(q_g, q_a, m.reciprocal() / self.scale)
        return out

    def variance(self, delta: Tensor) -> Tensor:
        """Per layer diag = (Q_G∘Q_G) M⁻¹ (Q_A∘Q_A)ᵀ / s with M = λ_G λ_Aᵀ + δ/s."""
        out = torch.empty(self.kfac.shape[0], dtype=self.kfac.dtype, device=self.kfac.device)
        for name, d in zip(self.groups, (delta / self.scale).unbind(0), strict=True):  # same order
            if name in self.kfac.diagonals:
                h = self.kfac.diagonals[name].clamp_min(0)
                out[self.kfac._diag_index[name]] = (h + d).reciprocal() / self.scale
                continue
            lam_g, q_g, lam_a, q_a = self._eigen(name)
            m = lam_g[:, None] * lam_a[None, :] + d
            block = (q_g.square() @ m.reciprocal() @ q_a.square().T) / self.scale
            layer = self.kfac._layer(name)
            layer.write(out[:, None], block.reshape(1, layer.n_out, layer.d))
        return out

    def state(self) -> dict[str, Any]:
        """The KFAC factors {layer: (A, G)}, N, the conv approximation and the scale."""
        return {
            "factors": {k: (A.clone(), G.clone()) for k, (A, G) in self.kfac.factors.items()},
            "diagonals": {k: d.clone() for k, d in self.kfac.diagonals.items()},
            "n_data": self.kfac.n_data,
            "conv_approx": self.kfac.conv_approx,
            "scale": self.scale,
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], model: nn.Module, loss: str, param_names: Sequence[str]
    ) -> KroneckerCurvature:
        """Rebuild the KFAC object from stored factors (no data pass)."""
        kfac = KFAC.from_factors(
            model,
            loss,
            state["factors"],
            state["n_data"],
            "sum",
            param_names,
            state["conv_approx"],
            diagonals=state.get("diagonals"),
        )
        return cls(kfac, state["scale"])


class DenseCurvature(_Scaled):
    """sH + δI with H dense (P×P): logdet Σ log(sλ_i + δ), samples L⁻ᵀz with LLᵀ = sH + δI."""

    kind = "dense"

    def __init__(self, hessian: Tensor, scale: float, eigenvalues: Tensor | None = None) -> None:
        if hessian.ndim != 2 or hessian.shape[0] != hessian.shape[1]:
            raise InputError(f"dense curvature must be square, got {tuple(hessian.shape)}")
        self.hessian = 0.5 * (hessian + hessian.mT)
        self.scale = scale
        self.groups = ["all"]
        self.group_sizes = torch.tensor([hessian.shape[0]], dtype=torch.long)
        self._eigenvalues = eigenvalues
        self._chol: tuple[float, Tensor] | None = None

    @classmethod
    def fit(
        cls, model: nn.Module, loss: str, data: Iterable[Any], param_names: Sequence[str]
    ) -> DenseCurvature:
        """The dense GGN of the covered parameters, scale 1 (P² memory; P ≤ MAX_DENSE_PARAMS)."""
        n_p = FunctionalModel(model, param_names).n_params
        if n_p > MAX_DENSE_PARAMS:
            raise InputError(
                f"a dense curvature over {n_p:,} parameters needs {n_p * n_p * 8 / 1e9:.1f} GB; "
                f"use structure='diag' or 'kron', or fewer parameters (≤ {MAX_DENSE_PARAMS:,})"
            )
        result = dense_ggn_pass(model, loss, data, param_names)
        out = cls(result.curvature, 1.0)
        out._record(result.n_data, result.n_outputs, result.loss_sum)
        return out

    @property
    def eigenvalues(self) -> Tensor:
        """Eigenvalues of H clamped at 0 (computed once)."""
        if self._eigenvalues is None:
            values, _ = symmetric_eigh(self.hessian, "the dense curvature H")
            self._eigenvalues = values.clamp_min(0)
        return self._eigenvalues

    def logdet(self, delta: Tensor) -> Tensor:
        """Σ_i log(s λ_i + δ), logs and sum in float64."""
        return (self.scale * self.eigenvalues + delta[0]).double().log().sum()

    def cholesky(self, delta: Tensor) -> Tensor:
        """Lower Cholesky factor L of sH + δI (cached for the last δ)."""
        key = float(delta[0])
        if self._chol is None or self._chol[0] != key:
            eye = torch.eye(self.hessian.shape[0], dtype=self.hessian.dtype, device=delta.device)
            L = jittered_cholesky(self.scale * self.hessian + key * eye, f"sH + δI at δ = {key:g}")
            self._chol = (key, L)
        return self._chol[1]

    def sample_transform(self, z: Tensor, delta: Tensor) -> Tensor:
        """L⁻ᵀ z, covariance L⁻ᵀL⁻¹ = (sH + δI)⁻¹."""
        L = self.cholesky(delta.detach())
        return torch.linalg.solve_triangular(L.mT, z, upper=True)

    def covariance_apply(self, V: Tensor, delta: Tensor) -> Tensor:
        """(sH + δI)⁻¹ V = L⁻ᵀ L⁻¹ V from the cached Cholesky factor."""
        return torch.cholesky_solve(V, self.cholesky(delta.detach()))

    def variance(self, delta: Tensor) -> Tensor:
        """diag (LLᵀ)⁻¹ = column sums of (L⁻¹)²."""
        L = self.cholesky(delta.detach())
        eye = torch.eye(L.shape[0], dtype=L.dtype, device=L.device)
        return torch.linalg.solve_triangular(L, eye, upper=False).square().sum(0)

    def state(self) -> dict[str, Any]:
        """The dense H, its eigenvalues (if computed) and the scale."""
        eig = None if self._eigenvalues is None else self._eigenvalues.clone()
        return {"hessian": self.hessian.clone(), "eigenvalues": eig, "scale": self.scale}

    @classmethod
    def from_state(
        cls, state: dict[str, Any], model: nn.Module, loss: str, param_names: Sequence[str]
    ) -> DenseCurvature:
        """Rebuild from :meth:`state`."""
        eig = state["eigenvalues"]
        return cls(state["hessian"].clone(), state["scale"], None if eig is None else eig.clone())


BACKENDS: dict[str, type] = {
    "diag": DiagonalCurvature,
    "kron": KroneckerCurvature,
    "last_layer": DenseCurvature,
}
