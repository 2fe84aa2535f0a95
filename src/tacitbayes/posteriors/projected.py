"""The null-space projected posterior q(θ) = N(θ*, α⁻¹ 𝒫), 𝒫 = I − J⁺J (Miani et al., 2025).

Every sample θ* + α^{-1/2} 𝒫ε leaves the linearised network's outputs on the fitted
training data unchanged, so the posterior cannot underfit. ``loss_projected=True``
projects onto the null space of the per-example loss gradients instead (a superset of
null(J), linear in P and independent of the number of outputs).

Usage, as laplace-torch users expect::

    post = ProjectedPosterior(model, "classification", solver="krylov")
    post.fit(train_loader)
    post.optimize_prior_precision()            # evidence: α = rank(J) / ‖θ*‖²
    probs = post.predict(x, n_samples=32)      # linearised predictive
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel, eval_mode
from tacitbayes.posteriors.null_space import (
    BatchInverse,
    ProjectionInfo,
    alternating_projection,
    batch_inverses,
    krylov_projection,
    null_space_residual,
)
from tacitbayes.posteriors.predictive import average_probabilities, sample_logits

__all__ = ["ProjectedPosterior"]

SOLVERS = ("krylov", "alternating")
LIKELIHOODS = {"classification": "cross_entropy", "regression": "mse"}


def _collect(loader: Iterable[Any]) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for batch in loader:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise InputError("the loader must yield (x, y) batches")
        xs.append(batch[0])
        ys.append(batch[1])
    if not xs:
        raise InputError("the training loader yields no batch")
    return torch.cat(xs), torch.cat(ys)


def _batches(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


class ProjectedPosterior:
    """N(θ*, α⁻¹(I − J⁺J)) around a trained network, sampled matrix-free."""

    def __init__(
        self,
        model: nn.Module,
        likelihood: str = "classification",
        *,
        solver: str = "krylov",
        loss_projected: bool = False,
        prior_precision: float = 1.0,
        tol: float = 1e-3,
        max_iters: int = 300,
        n_sweeps: int = 100,
        projection_batch_size: int = 16,
        pass_batch_size: int = 256,
        cutoff: float = 1e-6,
        param_names: str | Sequence[str] | None = None,
        chunk_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if likelihood not in LIKELIHOODS:
            raise InputError(
                f"unknown likelihood {likelihood!r}; available: {', '.join(LIKELIHOODS)}"
            )
        if solver not in SOLVERS:
            raise InputError(f"unknown solver {solver!r}; available: {', '.join(SOLVERS)}")
        for name, value in (
            ("max_iters", max_iters),
            ("n_sweeps", n_sweeps),
            ("projection_batch_size", projection_batch_size),
            ("pass_batch_size", pass_batch_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not tol > 0:
            raise InputError(f"tol must be positive, got {tol}")
        self.model = model
        self.likelihood = likelihood
        self.solver = solver
        self.loss_projected = loss_projected
        self.prior_precision = self._check_precision(prior_precision)
        self.tol, self.max_iters, self.n_sweeps = tol, max_iters, n_sweeps
        self.projection_batch_size, self.pass_batch_size = projection_batch_size, pass_batch_size
        self.cutoff, self.param_names, self.chunk_size, self.seed = (
            cutoff,
            param_names,
            chunk_size,
            seed,
        )
        self._jac: DataJacobian | None = None
        self._small_jac: DataJacobian | None = None
        self._inverses: list[BatchInverse] | None = None
        self._theta: Tensor | None = None
        self._eps = torch.empty(0)
        self._projected = torch.empty(0)
        self.infos: list[ProjectionInfo] = []

    @staticmethod
    def _check_precision(alpha: float) -> float:
        alpha = float(alpha)
        if not (alpha > 0 and math.isfinite(alpha)):
            raise InputError(f"prior precision must be a positive number, got {alpha}")
        return alpha

    # ------------------------------------------------------------------ fitting
    def _jacobian(self, data: list[tuple[Tensor, Tensor]]) -> DataJacobian:
        return DataJacobian(
            self.model,
            data,
            outputs="loss" if self.loss_projected else "logits",
            loss=LIKELIHOODS[self.likelihood],
            param_names=self.param_names,
            chunk_size=self.chunk_size,
        )

    def fit(self, train_loader: Iterable[Any]) -> ProjectedPosterior:
        """Take the training data that defines null(J); for alternating, eigendecompose J_b J_bᵀ."""
        x, y = _collect(train_loader)
        self._jac = self._jacobian(_batches(x, y, self.pass_batch_size))
        self._theta = self._jac.params_flat()
        if self.solver == "alternating":
            self._small_jac = self._jacobian(_batches(x, y, self.projection_batch_size))
            self._inverses = batch_inverses(self._small_jac, self.cutoff)
        self._eps = torch.empty(self.n_params, 0, dtype=self._theta.dtype)
        self._projected = torch.empty_like(self._eps)
        self.infos = []
        return self

    @property
    def n_params(self) -> int:
        """Number of parameters the posterior covers."""
        if self._theta is None:
            raise InputError("call fit(train_loader) first")
        return int(self._theta.numel())

    def _fitted(self) -> DataJacobian:
        if self._jac is None:
            raise InputError("call fit(train_loader) first")
        return self._jac

    def project(self, V: Tensor) -> tuple[Tensor, ProjectionInfo]:
        """𝒫V for a block V of shape (P, k), with the configured solver."""
        jac = self._fitted()
        if V.ndim != 2 or V.shape[0] != jac.shape[1]:
            raise InputError(f"V must have shape ({jac.shape[1]}, k), got {tuple(V.shape)}")
        if self.solver == "alternating":
            assert self._small_jac is not None and self._inverses is not None
            return alternating_projection(
                self._small_jac, V, self._inverses, self.n_sweeps, tol=self.tol, check_every=10
            )
        return krylov_projection(jac, V, tol=self.tol, max_iters=self.max_iters)

    def projected_noise(self, n_samples: int) -> Tensor:
        """The first ``n_samples`` projected standard normals 𝒫ε_s, shape (P, n_samples)."""
        if not isinstance(n_samples, int) or n_samples < 1:
            raise InputError(f"n_samples must be a positive integer, got {n_samples!r}")
        have = self._projected.shape[1] if self._projected.ndim == 2 else 0
        if n_samples > have:
            jac = self._fitted()
            gen = torch.Generator().manual_seed(self.seed * 7919 + have)
            eps = torch.randn(jac.shape[1], n_samples - have, generator=gen, dtype=jac.dtype)
            eps = eps.to(jac.device)
            projected, info = self.project(eps)
            self.infos.append(info)
            self._eps = torch.cat([self._eps.reshape(jac.shape[1], -1).to(jac.device), eps], dim=1)
            self._projected = torch.cat(
                [self._projected.reshape(jac.shape[1], -1).to(jac.device), projected], dim=1
            )
        return self._projected[:, :n_samples]

    # ------------------------------------------------------------------ sampling and prediction
    def sample(self, n_samples: int = 1) -> Tensor:
        """Flat weight samples θ* + α^{-1/2} 𝒫ε, shape (n_samples, P)."""
        deltas = self.projected_noise(n_samples).T / math.sqrt(self.prior_precision)
        assert self._theta is not None
        return self._theta + deltas

    def sample_outputs(self, x: Tensor, n_samples: int = 32, linearized: bool = True) -> Tensor:
        """Network outputs under posterior samples, shape (n_samples, N, O)."""
        deltas = self.projected_noise(n_samples).T / math.sqrt(self.prior_precision)
        return sample_logits(
            self.model,
            x,
            deltas,
            linearized=linearized,
            param_names=self.param_names,
            chunk_size=self.chunk_size or 8,
        )

    def predict(
        self, x: Tensor, n_samples: int = 32, linearized: bool = True
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Classification: (1/S) Σ_s softmax(f_s(x)), shape (N, C). Regression: (mean, variance)."""
        outputs = self.sample_outputs(x, n_samples, linearized)
        if self.likelihood == "classification":
            return average_probabilities(outputs)
        return outputs.mean(0), outputs.var(0, unbiased=False)

    # ------------------------------------------------------------------ prior precision
    def trace_projector(self, n_samples: int = 32) -> float:
        """Hutchinson estimate of tr 𝒫 = dim null(J): mean of εᵀ𝒫ε = ‖𝒫ε‖² over the samples."""
        projected = self.projected_noise(n_samples)
        return float((self._eps[:, :n_samples] * projected).sum(0).mean())

    def evidence_prior_precision(self, n_samples: int = 32) -> float:
        """α* = r/‖θ*‖², r = P − tr 𝒫: the maximiser of −(α/2)‖θ*‖² + (r/2) log α."""
        rank = max(self.n_params - self.trace_projector(n_samples), 1.0)
        assert self._theta is not None
        return rank / float(self._theta.pow(2).sum())

    def optimize_prior_precision(
        self,
        method: str = "evidence",
        val_loader: Iterable[Any] | None = None,
        grid: Sequence[float] | None = None,
        n_samples: int = 32,
    ) -> float:
        """Set α by the linearised evidence (α = r/‖θ*‖²) or by validation NLL on a log grid.

        The default grid spans 10⁻²…10⁶ times the evidence value in half decades.
        """
        if method == "evidence":
            self.prior_precision = self._check_precision(self.evidence_prior_precision(n_samples))
            return self.prior_precision
        if method != "validation":
            raise InputError(f"unknown method {method!r}; available: evidence, validation")
        if self.likelihood != "classification":
            raise InputError("validation tuning is implemented for classification")
        if val_loader is None:
            raise InputError("method='validation' needs val_loader")
        x, y = _collect(val_loader)
        centre = self.evidence_prior_precision(n_samples)
        grid = (
            list(grid)
            if grid is not None
            else [centre * 10.0**e for e in torch.arange(-2, 6.01, 0.5).tolist()]
        )
        deltas = self.projected_noise(n_samples).T
        with torch.no_grad(), eval_mode(self.model):
            f0 = self.model(x)
        shifts = (
            sample_logits(
                self.model,
                x,
                deltas,
                linearized=True,
                param_names=self.param_names,
                chunk_size=self.chunk_size or 8,
            )
            - f0
        )
        y = y.to(f0.device)
        best, best_nll = grid[0], math.inf
        for alpha in grid:
            alpha = self._check_precision(alpha)
            probs = average_probabilities(f0 + shifts / math.sqrt(alpha))
            nll = float(-probs.gather(1, y[:, None]).clamp_min(1e-12).log().mean())
            if nll < best_nll:
                best, best_nll = alpha, nll
        self.prior_precision = best
        return best

    # ------------------------------------------------------------------ diagnostics and state
    def null_space_residual(self, loader: Iterable[Any] | None = None, n_samples: int = 8) -> float:
        """max over samples of ‖J𝒫ε‖/‖Jε‖ on ``loader`` (default: the fitted training data)."""
        jac = (
            self._fitted()
            if loader is None
            else self._jacobian(_batches(*_collect(loader), self.pass_batch_size))
        )
        projected = self.projected_noise(n_samples)
        return float(null_space_residual(jac, self._eps[:, :n_samples], projected).max())

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to predict again without refitting (not the training data)."""
        return {
            "prior_precision": self.prior_precision,
            "theta": None if self._theta is None else self._theta.clone(),
            "eps": self._eps.clone(),
            "projected": self._projected.clone(),
            "settings": {
                "likelihood": self.likelihood,
                "solver": self.solver,
                "loss_projected": self.loss_projected,
                "seed": self.seed,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the samples and α saved by :meth:`state_dict` (the model must hold θ*)."""
        settings = state.get("settings", {})
        if settings.get("likelihood", self.likelihood) != self.likelihood:
            raise InputError("state_dict was saved for a different likelihood")
        theta = state["theta"]
        current = torch.cat([p.detach().reshape(-1) for p in self._current_params()])
        if (
            theta is None
            or theta.shape != current.shape
            or not torch.equal(theta, current.to(theta.dtype))
        ):
            raise InputError("the model's parameters are not the θ* this state_dict was fitted at")
        self.prior_precision = self._check_precision(state["prior_precision"])
        self._theta, self._eps, self._projected = (
            theta.clone(),
            state["eps"].clone(),
            state["projected"].clone(),
        )

    def _current_params(self) -> list[Tensor]:
        return list(FunctionalModel(self.model, self.param_names).params().values())
