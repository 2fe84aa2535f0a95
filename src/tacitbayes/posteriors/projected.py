"""The null-space projected posterior q(θ) = N(θ*, α⁻¹ 𝒫), 𝒫 = I − J⁺J (Miani et al., 2025).

Every sample θ* + α^{-1/2} 𝒫ε leaves the linearised network's outputs on the fitted
training data unchanged, so the posterior cannot underfit. ``loss_projected=True``
projects onto the null space of the per-example loss gradients instead (a superset of
null(J), linear in P and independent of the number of outputs). ``rows="ggn"`` projects
onto the null space of the GGN JᵀΛJ, the rows S_nᵀJ_n with Λ_n = S_nS_nᵀ: for softmax a
superset of null(J) by the per-example shifts of every logit alike, which leave the
linearised training probabilities exactly unchanged; the residual ‖SᵀJ𝒫ε‖/‖SᵀJε‖ is then
measured in the GGN's norm, the one the training NLL's change (≈ ½δᵀJᵀΛJδ) is measured in.

Usage, as laplace-torch users expect::

    post = ProjectedPosterior(model, "classification")   # every training example, tol 1e-3
    post.fit(train_loader)                     # streams the loader, never concatenates it
    post.optimize_prior_precision()            # evidence: α = rank(J) / ‖θ*‖²
    probs = post.predict(x, n_samples=32)      # linearised predictive
    cov = post.linearized_covariance(x)        # sample-free α⁻¹(K** − K*X K⁺ K_X*)

Solvers (``solver=``): ``"auto"`` (default) picks ``"gram"`` when the dense NTK Gram
K = J Jᵀ and its Cholesky factor fit in ``memory_budget`` bytes in float64,
``"gram_float32"`` (CG preconditioned by the in-place float32 Cholesky factor of the
Jacobi-scaled K, :mod:`kernel_cholesky`) when K fits in float32, ``"block"`` (block
MINRES on the matrix-free K, one Krylov space for all samples) otherwise; ``"nystrom"``
(Nyström-preconditioned CG or MINRES), ``"krylov"`` (LSQR on J) and ``"alternating"``
(the paper's sweeps, which keep the batches in memory) are the others. See
:mod:`kernel_projection` and :mod:`tacitbayes.posteriors.solvers`.

torch.distributed: give every rank the same loaders; each reads its shard (:class:`DataJacobian`).
Parameter-space vectors (the samples) are replicated. ``block``, ``nystrom`` and ``krylov`` keep
data-space vectors sharded: a pass all-reduces one P·k block and a few k-number sums,
whatever N. ``gram`` holds the dense K on every rank and gathers data-space vectors.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tacitbayes.batches import Inputs, n_examples, slice_inputs
from tacitbayes.budget import items_per_chunk
from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.curvature.ntk import kernel_factors, ntk_blocks, ntk_cross
from tacitbayes.data_pass import DataPass
from tacitbayes.distributed import is_distributed
from tacitbayes.errors import InputError, NotFittedError
from tacitbayes.functional import FunctionalModel
from tacitbayes.likelihoods import sample_predictive
from tacitbayes.posteriors.contract import likelihood_loss, tuning_method
from tacitbayes.posteriors.laplace_api import check_prediction, closed_form_output
from tacitbayes.posteriors.nll_tolerance import residual_for_nll, row_rank_bound
from tacitbayes.posteriors.null_space import ProjectionInfo, null_space_residual
from tacitbayes.posteriors.predictive import (
    sample_logits,
    validation_nll,
)
from tacitbayes.posteriors.projected_options import (
    check_options,
    hold_products,
)
from tacitbayes.posteriors.solvers import (
    NullSpaceSolver,
    SolverSettings,
    auto_chain,
    build_solver,
)
from tacitbayes.posteriors.solvers.gram import GramProjection
from tacitbayes.posteriors.solvers.parameter import ParameterProjection
from tacitbayes.search import check_grid_edge

__all__ = ["ProjectedPosterior"]

#: Solvers whose iterations are products with the training Jacobian (held factors help).
FACTOR_SOLVERS = ("nystrom", "block", "krylov", "gram_float32")
#: Solvers that stop at a residual (their Hutchinson rank estimate is then biased low).
ITERATIVE_SOLVERS = ("nystrom", "gram_float32", "block", "krylov", "alternating")
NOT_FITTED = "call fit(train_loader) (or load_state_dict with samples) before using the posterior"


class ProjectedPosterior:
    """N(θ*, α⁻¹(I − J⁺J)) around a trained network, sampled matrix-free."""

    def __init__(
        self,
        model: nn.Module,
        likelihood: str = "classification",
        *,
        solver: str = "auto",
        loss_projected: bool = False,
        rows: str = "logits",
        prior_precision: float = 1.0,
        tol: float = 1e-3,
        nll_tol: float | None = None,
        param_names: str | Sequence[str] | None = None,
        chunk_size: int | None = None,
        seed: int = 0,
        progress: bool = False,
        sigma_noise: float | None = None,
        **solver_options: Any,
    ) -> None:
        """``solver_options``: the solvers' own settings, fields of :class:`SolverSettings`
        (``max_iters`` 300, ``n_sweeps`` 100, ``projection_batch_size`` 16, ``nystrom_rank``
        2,000, ``memory_budget`` 4 GiB, ``cutoff`` 1e-6, ``krylov`` "cg" or "minres",
        ``products`` "auto", "factors" or "autograd": J V and Jᵀ U from per-layer factors
        held in memory, where they fit ``memory_budget`` with "auto", else memory-mapped
        from temporary files within ``disk_budget``, 32 GiB); each solver reads
        its own. ``nll_tol`` (rows="ggn", classification or binary): stop the projection
        at the loosest residual whose second-order training-NLL change per sample,
        r²·tr(JᵀΛJ)/(2Nα) with α the evidence precision, is at most ``nll_tol``
        (:mod:`tacitbayes.posteriors.nll_tolerance`), or at ``tol`` if that is looser;
        the residual used is ``effective_tol``."""
        options = check_options(
            likelihood, solver, rows, loss_projected, tol, nll_tol, solver_options
        )
        self.nll_tol = None if nll_tol is None else float(nll_tol)
        self.effective_tol = tol
        self.krylov, self.products = options["krylov"], options["products"]
        self.disk_budget = options["disk_budget"]
        max_iters, n_sweeps = options["max_iters"], options["n_sweeps"]
        projection_batch_size, cutoff = options["projection_batch_size"], options["cutoff"]
        nystrom_rank, memory_budget = options["nystrom_rank"], options["memory_budget"]
        self.model = model
        self.likelihood = likelihood
        self.solver = solver
        self.loss_projected = loss_projected
        self.rows = rows
        self.prior_precision = self._check_precision(prior_precision)
        self.tuning: dict[str, Any] = {}  # how optimize_prior_precision chose α
        self.evidence_precision: float | None = None
        self.tol, self.max_iters, self.n_sweeps = tol, max_iters, n_sweeps
        self.projection_batch_size = projection_batch_size
        self.nystrom_rank, self.memory_budget = nystrom_rank, memory_budget
        self.cutoff, self.param_names, self.chunk_size, self.seed = (
            cutoff,
            param_names,
            chunk_size,
            seed,
        )
        self.progress = progress
        if likelihood != "regression" and sigma_noise is not None:
            raise InputError("sigma_noise applies to likelihood='regression' only")
        if sigma_noise is not None and not (0 < float(sigma_noise) < math.inf):
            raise InputError(f"sigma_noise must be finite and > 0, got {sigma_noise}")
        # regression: σ given, or estimated by the evidence (see estimate_sigma_noise)
        self.sigma_noise: float | None = None if sigma_noise is None else float(sigma_noise)
        self.estimate_sigma = likelihood == "regression" and sigma_noise is None
        self.solver_used: str | None = None
        self._jac: DataJacobian | None = None
        self._solver: NullSpaceSolver | None = None
        self._chain: list[str] = []
        self._theta: Tensor | None = None
        self._eps = torch.empty(0)
        self._projected = torch.empty(0)
        self.infos: list[ProjectionInfo] = []
        self.setup_seconds = 0.0

    @staticmethod
    def _check_precision(alpha: float) -> float:
        alpha = float(alpha)
        if not (alpha > 0 and math.isfinite(alpha)):
            raise InputError(f"prior precision must be a positive number, got {alpha}")
        return alpha

    # ------------------------------------------------------------------ fitting
    def _jacobian(self, data: Iterable[Any], cache: bool = False) -> DataJacobian:
        return DataJacobian(
            self.model,
            data,
            outputs="loss" if self.loss_projected else self.rows,
            loss=likelihood_loss(self.likelihood),
            param_names=self.param_names,
            chunk_size=self.chunk_size,
            cache=cache,
        )

    def _settings(self) -> SolverSettings:
        return SolverSettings(
            tol=self.tol,
            max_iters=self.max_iters,
            n_sweeps=self.n_sweeps,
            projection_batch_size=self.projection_batch_size,
            nystrom_rank=self.nystrom_rank,
            memory_budget=self.memory_budget,
            cutoff=self.cutoff,
            krylov=self.krylov,
            products=self.products,
            seed=self.seed,
            progress=self.progress,
        )

    def fit(self, train_loader: Iterable[Any]) -> ProjectedPosterior:
        """Take the training data that defines null(J) (every batch of the loader, streamed).

        The solver (:mod:`tacitbayes.posteriors.solvers`) is fitted here: ``gram`` builds and
        factorises K = J Jᵀ, ``parameter`` eigendecomposes JᵀJ, ``nystrom`` builds its
        preconditioner, ``alternating`` eigendecomposes every J_b J_bᵀ. The projection itself
        runs at the first use of the samples.
        """
        start = time.perf_counter()
        if self.solver == "alternating" and is_distributed():
            raise InputError("solver='alternating' does not run under torch.distributed yet")
        self._jac = self._jacobian(DataPass(train_loader, what="train_loader"))
        self._theta = self._jac.params_flat()
        self._chain = (
            [self.solver] if self.solver != "auto" else auto_chain(self._jac, self._settings())
        )
        if self._chain[0] in FACTOR_SOLVERS:
            self._hold_factors(self._jac)
        self.effective_tol = self.tol
        if self.nll_tol is not None:  # the loosest residual that keeps the training NLL
            bound = row_rank_bound(self._jac, softmax_ggn=self.likelihood == "classification")
            alpha = max(bound, 1) / float(self._theta.pow(2).sum())
            self.effective_tol = max(self.tol, residual_for_nll(self._jac, alpha, self.nll_tol))
        settings = dataclasses.replace(self._settings(), tol=self.effective_tol)
        self._solver = build_solver(self._chain[0], self._jac, settings)
        self.solver_used = self._solver.name
        self._eps = torch.empty(self.n_params, 0, dtype=self._theta.dtype)
        self._projected = torch.empty_like(self._eps)
        self.infos = []
        if self.estimate_sigma:
            self.sigma_noise = None  # re-estimated for these data at first use
        self.setup_seconds = time.perf_counter() - start
        return self

    def _hold_factors(self, jac: DataJacobian) -> None:
        """Per-layer factors for the products, as ``products`` asks (:func:`hold_products`)."""
        hold_products(jac, self.products, self.memory_budget, self.disk_budget)

    @property
    def n_params(self) -> int:
        """Number of parameters the posterior covers."""
        if self._theta is None:
            raise NotFittedError(NOT_FITTED)
        return int(self._theta.numel())

    @property
    def n_fit(self) -> int:
        """Number of training examples the posterior was fitted on."""
        return self._fitted().n_data

    def _fitted(self) -> DataJacobian:
        if self._jac is None:
            raise NotFittedError(NOT_FITTED)
        return self._jac

    def project(self, V: Tensor) -> tuple[Tensor, ProjectionInfo]:
        """𝒫V for a block V of shape (P, k), with the fitted solver.

        With ``solver="auto"`` a solver that stops above ``tol`` hands over to the next one
        of :func:`~tacitbayes.posteriors.solvers.auto_chain` (said once, with the figures);
        the projection returned is the one with the smallest residual.
        """
        jac = self._fitted()
        if V.ndim != 2 or V.shape[0] != jac.shape[1]:
            raise InputError(f"V must have shape ({jac.shape[1]}, k), got {tuple(V.shape)}")
        if self._solver is None:
            raise NotFittedError(NOT_FITTED)
        projected, info = self._solver.project(V)
        while info.max_residual > self.effective_tol and self._solver.name in self._chain[:-1]:
            following = self._chain[self._chain.index(self._solver.name) + 1]
            warnings.warn(
                f"the null-space solver {self._solver.name!r} stopped at residual "
                f"{info.max_residual:.2e} > tol {self.effective_tol:g}; solver='auto' continues with "
                f"{following!r}",
                RuntimeWarning,
                stacklevel=2,
            )
            settings = dataclasses.replace(self._settings(), tol=self.effective_tol)
            if following in FACTOR_SOLVERS:
                self._hold_factors(jac)
            self._solver = build_solver(following, jac, settings)
            self.solver_used = self._solver.name
            projected, info = self._solver.project(V)
        return projected, info

    def _fix_hint(self) -> str:
        """The option that moves a residual above ``tol`` below it, for the solver in use."""
        name = self.solver_used
        if name == "block":
            return f"raise max_iters (now {self.max_iters}), or project more samples at once"
        if name in ("nystrom", "gram_float32", "krylov"):
            return f"raise max_iters (now {self.max_iters}) or nystrom_rank"
        if name == "alternating":
            return f"raise n_sweeps (now {self.n_sweeps}) or use solver='auto'"
        return "use solver='block' with a larger max_iters, or a larger tol"

    def projected_noise(self, n_samples: int) -> Tensor:
        """The first ``n_samples`` projected standard normals 𝒫ε_s, shape (P, n_samples)."""
        if not isinstance(n_samples, int) or n_samples < 1:
            raise InputError(f"n_samples must be a positive integer, got {n_samples!r}")
        have = self._projected.shape[1] if self._projected.ndim == 2 else 0
        if n_samples > have:
            if self._jac is None:
                raise NotFittedError(NOT_FITTED)
            jac = self._jac
            gen = torch.Generator().manual_seed(self.seed * 7919 + have)
            eps = torch.randn(jac.shape[1], n_samples - have, generator=gen, dtype=jac.dtype)
            eps = eps.to(jac.device)
            solver = self.solver_used
            projected, info = self.project(eps)
            if self.solver_used != solver and have:  # auto moved on: earlier samples too
                self._projected = self._solver.project(self._eps)[0]
            info.setup_seconds = self.setup_seconds if not self.infos else 0.0
            self.infos.append(info)
            if info.max_residual > self.effective_tol:
                warnings.warn(
                    f"the null-space projection stopped at residual {info.max_residual:.2e} "
                    f"> tol {self.effective_tol:g} ({info.solver}, {info.iterations} iterations): the "
                    f"samples move the training predictions; {self._fix_hint()}",
                    RuntimeWarning,
                    stacklevel=2,
                )
            self._eps = torch.cat([self._eps.reshape(jac.shape[1], -1).to(jac.device), eps], dim=1)
            self._projected = torch.cat(
                [self._projected.reshape(jac.shape[1], -1).to(jac.device), projected], dim=1
            )
        return self._projected[:, :n_samples]

    # ------------------------------------------------------------------ sampling and prediction
    def sample(self, n_samples: int = 1) -> Tensor:
        """Flat weight samples θ* + α^{-1/2} 𝒫ε, shape (n_samples, P)."""
        deltas = self.projected_noise(n_samples).T / math.sqrt(self.prior_precision)
        if self._theta is None:
            raise NotFittedError(NOT_FITTED)
        return self._theta + deltas

    def sample_outputs(self, x: Inputs, n_samples: int = 32, linearized: bool = True) -> Tensor:
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
        self, x: Inputs, n_samples: int = 32, linearized: bool = True, exact: bool = True
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Classification: (1/S) Σ_s softmax(f_s(x)), shape (N, C). Regression: (mean, variance).

        Regression, linearized, with ``exact`` (default) and a solver that has the sample-free
        covariance (``gram``, ``parameter``): the closed form (f(θ*, x), diag J 𝒫 Jᵀ/α + σ²),
        MAP's output as the mean. Otherwise the moments of ``n_samples`` samples.
        """
        closed = isinstance(self._solver, (GramProjection, ParameterProjection))
        if self.likelihood == "regression" and linearized and exact and closed:
            return self(x, pred_type="glm", n_samples=n_samples)
        outputs = self.sample_outputs(x, n_samples, linearized)
        noise = self.noise_variance(n_samples) if self.likelihood == "regression" else 0.0
        return sample_predictive(self.likelihood, outputs, noise)

    def noise_variance(self, n_samples: int = 32) -> float:
        """σ² of the regression likelihood: given, or estimated by :meth:`estimate_sigma_noise`."""
        if self.likelihood != "regression":
            raise InputError("the observation noise applies to likelihood='regression' only")
        sigma = self.sigma_noise
        if sigma is None:
            sigma = self.estimate_sigma_noise(n_samples)
        return sigma**2

    def estimate_sigma_noise(self, n_samples: int = 32) -> float:
        """σ² = ‖y − f(θ*)‖²/(N·O − rank J), rank J = P − tr 𝒫 (Hutchinson): the evidence's fixed point.

        Warns, and uses σ_ML = ‖y − f‖/√(N·O), when N·O − rank J < 5% of N·O (the network
        (nearly) interpolates its targets): then pass ``sigma_noise`` or tune on validation data.
        """
        from tacitbayes.posteriors.noise import projected_sigma

        if self.likelihood != "regression":
            raise InputError("the observation noise applies to likelihood='regression' only")
        jac = self._fitted()
        values = jac.n_data * jac.network_outputs
        rank = self.rank_estimate(n_samples)
        sigma, reliable = projected_sigma(jac.loss_sum, values, rank)
        if not reliable:
            warnings.warn(
                f"rank J ≈ {rank:.0f} of N·O = {values} training values: the network fits its "
                f"targets, so the residuals say little about σ; using σ_ML = {sigma:.3g}. Pass "
                "sigma_noise=... or tune on validation data",
                RuntimeWarning,
                stacklevel=2,
            )
        self.sigma_noise = sigma
        return sigma

    def linearized_covariance(self, x: Inputs, max_bytes: int | None = None) -> Tensor:
        """Sample-free Cov[J(x)δ] = α⁻¹ J(x) 𝒫 J(x)ᵀ per input: (N, O, O). Needs ``gram`` or ``parameter``.

        ``gram``: α⁻¹(K** − K*X K⁺ K_X*), only the per-input blocks K**_n = J_n J_nᵀ formed, the
        inputs in chunks whose test factors, cross kernel (rows × chunk·O) and its solve fit
        ``max_bytes`` (default: the working budget of :mod:`tacitbayes.budget`).
        ``parameter``: α⁻¹(K** − (J_n U_r)(J_n U_r)ᵀ) with U_r the basis of row(J).
        """
        jac = self._fitted()
        names = list(jac.params)
        n = n_examples(x)
        if isinstance(self._solver, ParameterProjection):
            blocks = []
            basis = self._solver.basis.to(jac.dtype)
            one = kernel_factors(
                self.model, slice_inputs(x, 0, 1), outputs="logits", param_names=names
            )
            chunk = items_per_chunk(one.nbytes() + 8 * basis.shape[1] * one.n_outputs, n, max_bytes)
            for start in range(0, n, chunk):
                part = slice_inputs(x, start, min(n, start + chunk))
                test = kernel_factors(self.model, part, outputs="logits", param_names=names)
                with torch.no_grad():
                    f0 = FunctionalModel(self.model, names)(jac.params, part)
                    rows = (
                        sample_logits(self.model, part, basis.T, linearized=True, param_names=names)
                        - f0
                    )
                rows = rows.to(torch.float64)  # (r, m, O)
                blocks.append(ntk_blocks(test) - torch.einsum("rmi,rmj->mij", rows, rows))
            return torch.cat(blocks) / self.prior_precision
        if not isinstance(self._solver, GramProjection):
            raise InputError(
                "the sample-free covariance needs solver='gram' or 'parameter'; "
                "use link_approx='mc' or sample_outputs(x).var(0) for the Monte Carlo estimate"
            )
        kernel, factors = self._solver.kernel, self._solver.factors
        one = kernel_factors(self.model, slice_inputs(x, 0, 1), outputs="logits", param_names=names)
        per_input = one.nbytes() + 6 * 8 * kernel.rows * one.n_outputs
        chunk = items_per_chunk(per_input, n, max_bytes)
        blocks = []
        for start in range(0, n, chunk):
            part = slice_inputs(x, start, min(n, start + chunk))
            test = kernel_factors(self.model, part, outputs="logits", param_names=names)
            m, o = test.n, test.n_outputs
            cross = ntk_cross(factors, [test])  # (rows, m·O)
            solved = kernel.solve(cross, max_steps=2)
            explained = torch.einsum("rni,rnj->nij", cross.view(-1, m, o), solved.view(-1, m, o))
            blocks.append(ntk_blocks(test) - explained)
        return torch.cat(blocks) / self.prior_precision

    def __call__(
        self, x: Inputs, pred_type: str = "glm", link_approx: str = "probit", n_samples: int = 100
    ) -> Tensor | tuple[Tensor, Tensor]:
        """laplace-torch-style predictive: probit/bridge of N(f(θ*, x), :meth:`linearized_covariance`) or "mc".

        Regression with "glm": (f(θ*, x), diag Cov + σ²) in closed form. Monte Carlo
        (``link_approx="mc"``) is :meth:`predict` with ``n_samples`` projected samples.
        """
        if not check_prediction(self.likelihood, pred_type, link_approx):
            return self.predict(x, n_samples, linearized=pred_type == "glm")
        names = list(self._fitted().params)
        fmodel = FunctionalModel(self.model, names)
        with torch.no_grad():
            mean = fmodel(fmodel.params(), x)
        cov = self.linearized_covariance(x).to(mean.dtype)
        noise = self.noise_variance(n_samples) if self.likelihood == "regression" else 0.0
        return closed_form_output(self.likelihood, mean, cov, link_approx, noise)

    # ------------------------------------------------------------------ prior precision
    def rank_estimate(self, n_samples: int = 32) -> float:
        """rank J: exact from ``parameter``; P − tr 𝒫 (Hutchinson) clipped to the row bound; the bound itself after an inexact Krylov solve.

        The bound is min(P, rows) (GGN rows of a softmax: N·(O − 1), Λ_n has rank O − 1).
        A Krylov solve stopped at residual r > 1e-6 has not reached the row-space
        directions of the smallest singular values of J; they stay in 𝒫̃ε and the
        Hutchinson estimate misses them (on 5,000 fashion-mnist images at r = 0.03 it
        gave 6,000 for a rank of 45,000), so the bound is used: the rank of J where it
        has full row rank, the usual case when P > N·O, and an α on the safe side
        (narrower samples) where it has not.
        """
        if isinstance(self._solver, ParameterProjection):
            return float(self._solver.rank)
        jac = self._fitted()
        softmax_ggn = self.rows == "ggn" and self.likelihood == "classification"
        bound = float(row_rank_bound(jac, softmax_ggn))
        trace = self.trace_projector(n_samples)
        worst = max((info.max_residual for info in self.infos), default=0.0)
        if self.solver_used in ITERATIVE_SOLVERS and worst > 1e-6:
            return bound
        return min(max(self.n_params - trace, 0.0), bound)

    def trace_projector(self, n_samples: int = 32) -> float:
        """Hutchinson estimate of tr 𝒫 = dim null(J): mean of εᵀ𝒫ε = ‖𝒫ε‖² over the samples."""
        projected = self.projected_noise(n_samples)
        return float((self._eps[:, :n_samples] * projected).sum(0).mean())

    def evidence_prior_precision(self, n_samples: int = 32) -> float:
        """α* = r/‖θ*‖², r = P − tr 𝒫: the maximiser of −(α/2)‖θ*‖² + (r/2) log α."""
        rank = max(self.rank_estimate(n_samples), 1.0)
        if self._theta is None:
            raise NotFittedError(NOT_FITTED)
        self.evidence_precision = rank / float(self._theta.pow(2).sum())
        return self.evidence_precision

    def optimize_prior_precision(
        self,
        method: str = "marglik",
        val_loader: Iterable[Any] | None = None,
        grid: Sequence[float] | None = None,
        n_samples: int = 32,
    ) -> float:
        """Set α by the linearised evidence (α = r/‖θ*‖², default) or by validation NLL.

        The validation grid spans 10⁻²…10⁶ times the evidence value in half decades; the
        validation loader is streamed (one batch at a time). ``tuning`` records the grid, its
        NLLs and whether α stopped at an end of the grid (then a RuntimeWarning).
        """
        method = tuning_method(method)
        if method == "marglik":
            self.tuning = {"method": "marglik"}
            self.prior_precision = self._check_precision(self.evidence_prior_precision(n_samples))
            if self.estimate_sigma:
                self.estimate_sigma_noise(n_samples)
            return self.prior_precision
        if val_loader is None:
            raise InputError("method='validation' needs val_loader")
        centre = self.evidence_prior_precision(n_samples)
        grid = (
            [self._check_precision(a) for a in grid]
            if grid is not None
            else [centre * 10.0**e for e in torch.arange(-2, 6.01, 0.5).tolist()]
        )
        nll = validation_nll(
            self.model,
            self.projected_noise(n_samples).T,
            DataPass(val_loader, what="val_loader"),
            grid,
            param_names=self.param_names,
            chunk_size=self.chunk_size or 8,
            likelihood=self.likelihood,
            noise_variance=self.noise_variance(n_samples)
            if self.likelihood == "regression"
            else 0.0,
        )
        self.prior_precision = grid[int(torch.tensor(nll).argmin())]
        edge = check_grid_edge(
            "projected prior precision (validation NLL)",
            grid,
            self.prior_precision,
            low="the posterior is as wide as the prior allows and may underfit",
            high="the posterior may predict like MAP",
        )
        self.tuning = {"method": "validation", "grid": list(grid), "nll": list(nll), **edge}
        return self.prior_precision

    # ------------------------------------------------------------------ diagnostics and state
    def null_space_residual(self, loader: Iterable[Any] | None = None, n_samples: int = 8) -> float:
        """max over samples of ‖J𝒫ε‖/‖Jε‖ on ``loader`` (default: the fitted training data)."""
        jac = self._fitted() if loader is None else self._jacobian(DataPass(loader))
        projected = self.projected_noise(n_samples)
        return float(null_space_residual(jac, self._eps[:, :n_samples], projected).max())

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to predict again without refitting (not the training data)."""
        return {
            "prior_precision": self.prior_precision,
            "sigma_noise": self.sigma_noise,
            "theta": None if self._theta is None else self._theta.clone(),
            "eps": self._eps.clone(),
            "projected": self._projected.clone(),
            "settings": {
                "likelihood": self.likelihood,
                "solver": self.solver_used or self.solver,
                "loss_projected": self.loss_projected,
                "rows": self.rows,
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
        if state.get("sigma_noise") is not None:
            self.sigma_noise = float(state["sigma_noise"])
        self._theta, self._eps, self._projected = (
            theta.clone(),
            state["eps"].clone(),
            state["projected"].clone(),
        )

    def _current_params(self) -> list[Tensor]:
        return list(FunctionalModel(self.model, self.param_names).params().values())
