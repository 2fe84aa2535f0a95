"""Laplace approximation around trained weights θ*: q(θ) = N(θ*, (sH + diag δ)⁻¹).

H is the GGN of the *sum* loss over the training set (cross-entropy for classification;
log(1 + e^f) − y f for a one-logit "binary" classifier; ½‖f − y‖² for regression, with
s = 1/σ² for the observation noise σ², given or estimated: σ_ML at fit, then jointly
with δ by the evidence in ``optimize_prior_precision``), structured as
``"diag"`` (exact GGN diagonal), ``"kron"`` (KFAC) or ``"last_layer"`` (the dense GGN of
the last layer's parameters: the module that produces the output, traced on the first
batch at ``fit`` unless ``last_layer_name`` or ``param_names`` names it). δ is the prior
precision of p(θ) = N(0, diag δ⁻¹): a scalar, or one value per prior group (the modules
that own the parameters; last_layer has one group). A network trained on the mean loss
with coupled weight decay wd has the MAP of the prior δ = N·wd for the sum loss.

Laplace evidence (MacKay 1992), θ* restricted to the covered parameters, P_g in group g:
  log Z(δ) ≈ log p(D | θ*) − ½ Σ_g δ_g ‖θ*_g‖² + ½ Σ_g P_g log δ_g − ½ log det(sH + diag δ)
with log p(D | θ*) = −L(θ*) (classification) or −L(θ*)/σ² − (N·O/2) log 2πσ² (regression).
The −(P/2) log 2π of the prior and the +(P/2) log 2π of the Gaussian integral cancel. For a
linear-Gaussian model at its MAP the expression is the exact evidence.

Predictions average over weight perturbations δθ ~ N(0, (sH + diag δ)⁻¹) in the flat order of
the covered parameters, pushed through the linearized network (default) or the network itself.

Under ``torch.distributed`` every rank is given the same loaders: ``fit`` reads its shard and
the backends all-reduce the curvature, N, O and L(θ*) (global evidence, same δ on every rank).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from tacitbayes.batches import Inputs, n_examples, peek_batch
from tacitbayes.data_pass import DataPass
from tacitbayes.distributed import all_gather_cat, is_distributed, presharded
from tacitbayes.errors import InputError, NotFittedError
from tacitbayes.functional import FunctionalModel, flatten, last_layer_names, layer_names
from tacitbayes.likelihoods import LIKELIHOODS as TABLE
from tacitbayes.likelihoods import average_probabilities, bernoulli_probabilities
from tacitbayes.posteriors.contract import check_likelihood, likelihood_loss, tuning_method
from tacitbayes.posteriors.glm import glm_predictive
from tacitbayes.posteriors.glm_factored import factored_glm_predictive
from tacitbayes.posteriors.laplace_api import (
    check_prediction,
    closed_form_output,
    resolve_structure,
    validation_prediction,
)
from tacitbayes.posteriors.laplace_curvature import BACKENDS, module_groups
from tacitbayes.posteriors.laplace_tuning import marglik_edge, tune_marglik, tune_validation
from tacitbayes.posteriors.noise import maximum_likelihood_sigma, tune_marglik_noise
from tacitbayes.posteriors.predictive import (
    sample_logits,
)

__all__ = ["LIKELIHOODS", "STRUCTURES", "Laplace"]

LIKELIHOODS = TABLE  # the likelihoods and their losses (tacitbayes.likelihoods)
STRUCTURES = ("diag", "kron", "last_layer")


def _trace_last_layer(model: nn.Module, loader: DataPass) -> tuple[list[str], Iterable[Any]]:
    """(last-layer names traced on the first batch, the loader: still one pass).

    Under torch.distributed the data pass yields this rank's shard: the lowest rank holding
    a batch traces it and broadcasts the names; the rest of the pass stays this rank's.
    """
    if not is_distributed():
        first, rest = peek_batch(loader, "train_loader")
        return last_layer_names(model, first.inputs), rest
    try:
        first, rest = peek_batch(loader, "train_loader")
    except InputError:  # an empty shard of a presharded loader
        first, rest = None, loader
    device = next(model.parameters()).device  # where the backend's collectives run
    flags = all_gather_cat(torch.tensor([first is not None], dtype=torch.float64, device=device))
    holders = flags.nonzero().flatten().tolist()
    if not holders:
        raise InputError("train_loader holds no batch")
    names = [None if first is None else last_layer_names(model, first.inputs)]
    dist.broadcast_object_list(names, src=holders[0])
    traced = names[0]
    if traced is None:  # rank holders[0] traced it: only a failed broadcast gets here
        raise RuntimeError("the traced last layer did not reach every rank")
    return traced, presharded(rest)


def _check_sigma(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise InputError(f"sigma_noise must be a number, got {value!r}")
    sigma = float(value)
    if not (0 < sigma < math.inf):
        raise InputError(f"sigma_noise must be finite and > 0, got {sigma}")
    return sigma


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


class Laplace:
    """Post-hoc Gaussian N(θ*, (sH + diag δ)⁻¹) over (a subset of) a trained network's weights.

    ``fit(loader)`` computes the curvature, ``log_marginal_likelihood(δ)`` the Laplace
    evidence, ``optimize_prior_precision()`` tunes δ, ``predict(x)`` gives class
    probabilities (classification) or (mean, variance) (regression). The model must stay at
    θ* after ``fit``. ``seed`` fixes the weight samples of ``predict``/``sample`` when no
    generator is given, so every batch of a data set sees the same samples.
    laplace-torch's surface: ``Laplace(model, lik, subset_of_weights=..., hessian_structure=...)``
    and ``la(x, pred_type, link_approx)`` with closed-form probit/bridge predictives
    (:mod:`tacitbayes.posteriors.laplace_api`, :mod:`tacitbayes.posteriors.glm`).
    ``structure="last_layer"`` covers the module that produces the output, traced on the
    first batch of ``fit`` (:func:`tacitbayes.functional.find_last_layer`; InputError when
    that is ambiguous), or the submodule named by ``last_layer_name`` (or ``param_names``).
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str = "classification",
        structure: str | None = None,
        prior_precision: float | Tensor = 1.0,
        param_names: str | Sequence[str] | None = None,
        sigma_noise: float | None = None,
        seed: int = 0,
        *,
        subset_of_weights: str | None = None,
        hessian_structure: str | None = None,
        last_layer_name: str | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be an nn.Module, got {type(model).__name__}")
        check_likelihood(likelihood)
        # laplace-torch's keywords map to ``structure`` (see laplace_api); default "kron"
        structure = resolve_structure(structure, subset_of_weights, hessian_structure)
        if structure not in STRUCTURES:
            raise InputError(f"unknown structure {structure!r}; choose one of {list(STRUCTURES)}")
        if likelihood != "regression" and sigma_noise not in (None, 1.0):
            raise InputError("sigma_noise applies to likelihood='regression' only")
        # regression without a given σ: estimated (residuals at fit, evidence when tuning δ)
        self.estimate_sigma = likelihood == "regression" and sigma_noise is None
        sigma_noise = 1.0 if sigma_noise is None else _check_sigma(sigma_noise)
        self.model, self.likelihood, self.structure = model, likelihood, structure
        self.loss = likelihood_loss(likelihood)
        self.sigma_noise, self.seed = sigma_noise, int(seed)
        if last_layer_name is not None:
            if structure != "last_layer" or param_names is not None:
                raise InputError(
                    "last_layer_name names the layer of structure='last_layer'; "
                    "give it or param_names, not both"
                )
            param_names = layer_names(model, last_layer_name)
        self._fmodel: FunctionalModel | None = None
        self.param_names: tuple[str, ...] = ()
        self.groups: list[str] = ["all"]
        if param_names is not None or structure != "last_layer":
            self._cover(param_names)
        else:  # the last layer: traced on the first batch at fit
            first = next((p for p in model.parameters() if p.requires_grad), None)
            if first is None:
                raise InputError("the model has no parameter with requires_grad=True")
            self.dtype, self.device = first.dtype, first.device
        self._prior = self._check_prior(prior_precision)
        self._curv: Any = None
        self.mean: Tensor | None = None
        self.n_data = 0
        self.n_outputs = 0
        self.loss_sum: Tensor | None = None
        self.tuning: dict[str, Any] = {}
        self._ratio = 1.0  # n_data / examples seen (fit); the curvature scale is ratio/σ²

    # ---- basic properties ----------------------------------------------------------------
    def _cover(self, param_names: str | Sequence[str] | None) -> None:
        """Cover ``param_names``: the functional model, dtype/device and the prior groups."""
        self._fmodel = FunctionalModel(self.model, param_names)
        self.param_names = self._fmodel.param_names
        first = next(iter(self._fmodel.params().values()))
        self.dtype, self.device = first.dtype, first.device
        if self.structure == "last_layer":
            sizes = torch.tensor([self.n_params], dtype=torch.long)
            self.groups, self._group_sizes = ["all"], sizes
        else:
            self.groups, self._group_sizes = module_groups(self.model, self.param_names)

    @property
    def n_params(self) -> int:
        """Number P of covered parameters."""
        if self._fmodel is None:
            raise InputError(
                "the last layer is found by tracing the first batch in fit(); call fit first, "
                "or name it (last_layer_name= or param_names=)"
            )
        return self._fmodel.n_params

    @property
    def curvature(self) -> Any:
        """The fitted curvature backend (see :mod:`tacitbayes.posteriors.laplace_curvature`)."""
        self._require_fit()
        return self._curv

    @property
    def prior_precision(self) -> Tensor:
        """δ: a 0-d tensor (shared) or one value per group of ``groups``."""
        return self._prior.clone()

    @prior_precision.setter
    def prior_precision(self, value: float | Tensor) -> None:
        self._prior = self._check_prior(value)

    def _check_prior(self, value: float | Tensor) -> Tensor:
        """Validate δ (number, 0-d or (n_groups,) tensor; finite, > 0); keeps autograd history."""
        if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
            raise InputError(f"prior_precision must be a number or a Tensor, got {type(value)}")
        d = torch.as_tensor(value, dtype=self.dtype, device=self.device)
        if d.numel() == 1:
            d = d.reshape(())
        elif d.shape != (len(self.groups),):
            raise InputError(
                f"prior_precision must be a scalar or have shape ({len(self.groups)},), one per "
                f"group {self.groups}; got shape {tuple(d.shape)}"
            )
        with torch.no_grad():
            if not bool(torch.isfinite(d).all()) or bool((d <= 0).any()):
                raise InputError(f"prior_precision must be finite and > 0, got {d.tolist()}")
        return d

    def _deltas(self, prior_precision: float | Tensor | None) -> Tensor:
        """δ per group, shape (n_groups,)."""
        d = self._prior if prior_precision is None else self._check_prior(prior_precision)
        return d.expand(len(self.groups)) if d.ndim == 0 else d

    def _require_fit(self) -> None:
        """Raise NotFittedError unless fit (or load_state_dict) has run."""
        if self._curv is None or self.mean is None or self.loss_sum is None:
            raise NotFittedError(
                "call fit(train_loader) (or load_state_dict) before using the posterior"
            )

    def _fitted_mean(self) -> Tensor:
        """θ* of the fit; NotFittedError before fit."""
        self._require_fit()
        if self.mean is None:  # narrowed for the type checker; _require_fit checked it
            raise NotFittedError("the posterior has no mean; call fit(train_loader)")
        return self.mean

    def _fitted_loss(self) -> Tensor:
        """L(θ*) of the fit; NotFittedError before fit."""
        self._require_fit()
        if self.loss_sum is None:
            raise NotFittedError("the posterior has no training loss; call fit(train_loader)")
        return self.loss_sum

    # ---- fitting -------------------------------------------------------------------------
    def fit(self, train_loader: Iterable[Any], n_data: int | None = None) -> Laplace:
        """Compute L(θ*) and the curvature in ONE pass over ``train_loader`` (see :mod:`tacitbayes.batches`).

        ``n_data``: the loader is a subset of a training set of ``n_data`` examples; the
        loss and the curvature are scaled by n_data / (examples seen).
        """
        loader: Iterable[Any] = DataPass(train_loader, what="train_loader")
        if self._fmodel is None:  # last_layer, none named: trace it on the first batch
            names, loader = _trace_last_layer(self.model, loader)
            self._cover(names)
            self._prior = self._check_prior(self._prior)
        backend = BACKENDS[self.structure]
        curv = backend.fit(self.model, self.loss, loader, self.param_names)
        n_seen = curv.n_data
        ratio = 1.0 if n_data is None else _positive_int("n_data", n_data) / n_seen
        curv.scale = ratio / self.sigma_noise**2
        self._curv = curv
        self.mean = flatten(self._fmodel.params())  # a new tensor: θ* as fitted
        self.n_data = n_seen if n_data is None else int(n_data)
        self.n_outputs = curv.n_outputs
        self.loss_sum = torch.tensor(curv.loss_sum * ratio, dtype=self.dtype, device=self.device)
        self._ratio = ratio
        if self.estimate_sigma:  # maximum likelihood at θ*, σ² = 2L/(N·O); marglik refines it
            self.set_sigma_noise(
                maximum_likelihood_sigma(float(self.loss_sum), self.n_data * self.n_outputs)
            )
        return self

    # ---- evidence ------------------------------------------------------------------------
    def log_likelihood(self, sigma_noise: float | None = None) -> Tensor:
        """log p(D | θ*): −L(θ*), or −L(θ*)/σ² − (N·O/2) log 2πσ² for regression."""
        loss_sum = self._fitted_loss()
        if self.likelihood != "regression":
            return -loss_sum
        var = (self.sigma_noise if sigma_noise is None else _check_sigma(sigma_noise)) ** 2
        return -loss_sum / var - 0.5 * self.n_data * self.n_outputs * math.log(2 * math.pi * var)

    def log_marginal_likelihood(
        self, prior_precision: float | Tensor | None = None, sigma_noise: float | None = None
    ) -> Tensor:
        """log p(D|θ*) − ½Σ_g δ_g‖θ*_g‖² + ½Σ_g P_g log δ_g − ½ log det(sH + diag δ); differentiable in δ.

        ``sigma_noise`` (regression): evaluate at this σ (s = 1/σ²) instead of the current one.
        The log-determinant is summed in float64, so the value is a float64 0-d tensor.
        """
        self._require_fit()
        if sigma_noise is not None and self.likelihood != "regression":
            raise InputError("sigma_noise applies to likelihood='regression' only")
        sigma = self.sigma_noise if sigma_noise is None else _check_sigma(sigma_noise)
        saved = self._curv.scale
        self._curv.scale = self._ratio / sigma**2
        try:
            return self._log_evidence(self._deltas(prior_precision), sigma)
        finally:
            self._curv.scale = saved

    def _log_evidence(self, delta: Tensor, sigma: float) -> Tensor:
        chunks = self._fitted_mean().split(self._group_sizes.tolist())
        sq = torch.stack([c.square().sum() for c in chunks]).to(self.dtype)
        sizes = self._group_sizes.to(device=self.device, dtype=self.dtype)
        return (
            self.log_likelihood(sigma)
            - 0.5 * (delta * sq).sum()
            + 0.5 * (sizes * delta.log()).sum()
            - 0.5 * self._curv.logdet(delta)
        )

    def optimize_prior_precision(
        self,
        method: str = "marglik",
        val_loader: Iterable[Any] | None = None,
        grid: Sequence[float] | Tensor | None = None,
        n_steps: int = 100,
        lr: float = 0.1,
        prior_structure: str = "scalar",
        n_samples: int = 32,
        linearized: bool | None = None,
        *,
        pred_type: str | None = None,
        link_approx: str | None = None,
    ) -> Tensor:
        """Set δ by maximising the evidence ("marglik", alias "evidence") or minimising validation NLL ("validation").

        marglik, ``prior_structure="scalar"``: bounded 1-D search on log δ (the evidence is
        unimodal in log δ); ``"layerwise"``: then Adam on log δ_g (``n_steps``, ``lr``).
        Regression without a given ``sigma_noise``: σ is maximised jointly with δ
        (:mod:`tacitbayes.posteriors.noise`).
        validation: the scalar δ of ``grid`` (default current δ × 10^[−3, 3] in half decades,
        extended past an edge while the NLL improves) with the lowest NLL of the predictive
        on ``val_loader`` (every δ tried and its NLL in ``tuning``). Its predictive is that of
        ``self(x, pred_type, link_approx, n_samples)``: ``pred_type`` "glm" (default, same as
        ``linearized=True``) or "nn"; ``link_approx`` "mc" (default), "probit" or "bridge"
        (closed form, one Jacobian pass per δ). marglik refuses both keywords.
        Returns the chosen δ.
        """
        self._require_fit()
        method = tuning_method(method)
        linearized, link = validation_prediction(
            method, self.likelihood, pred_type, link_approx, linearized
        )
        if method == "marglik" and self.estimate_sigma:
            self._prior, sigma, sigma_edge = tune_marglik_noise(self, prior_structure, n_steps, lr)
            self.tuning = {"method": method, "prior_structure": prior_structure, "sigma": sigma}
            self.tuning["sigma_search"] = sigma_edge
            self.tuning.update(marglik_edge(self._prior))
        elif method == "marglik":
            self._prior = tune_marglik(self, prior_structure, n_steps, lr)
            self.tuning = {"method": method, "prior_structure": prior_structure}
            self.tuning.update(marglik_edge(self._prior))
        elif method == "validation":
            if val_loader is None:
                raise InputError("method='validation' needs a val_loader")
            self._prior, tried, edge = tune_validation(
                self, val_loader, grid, n_samples, linearized, link
            )
            self.tuning = {
                "method": method,
                "grid": [d for d, _ in tried],
                "nll": [v for _, v in tried],
                **edge,  # at_edge, edge, range: did δ stop at the end of what was tried?
            }
        else:
            raise InputError(f"unknown method {method!r}; choose 'marglik' or 'validation'")
        return self.prior_precision

    def set_sigma_noise(self, sigma: float) -> None:
        """Set the regression noise σ (the curvature scale becomes n_data/seen/σ²)."""
        if self.likelihood != "regression":
            raise InputError("sigma_noise applies to likelihood='regression' only")
        self.sigma_noise = _check_sigma(sigma)
        if self._curv is not None:
            self._curv.scale = self._ratio / self.sigma_noise**2

    # ---- posterior -----------------------------------------------------------------------
    def _check_mean(self) -> None:
        if not torch.equal(flatten(self._fmodel.params()), self._fitted_mean()):
            raise InputError("the model's weights changed since fit(); refit the posterior")

    def sample_deltas(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """δθ ~ N(0, (sH + diag δ)⁻¹), shape (n_samples, P); default generator seeded with ``seed``."""
        self._require_fit()
        n_samples = _positive_int("n_samples", n_samples)
        if generator is None:
            generator = torch.Generator(self.device).manual_seed(self.seed)
        z = torch.randn(
            self.n_params, n_samples, dtype=self.dtype, device=self.device, generator=generator
        )
        with torch.no_grad():
            return self._curv.sample_transform(z, self._deltas(None).detach()).mT

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Weight samples θ* + δθ of the covered parameters, shape (n_samples, P)."""
        deltas = self.sample_deltas(n_samples, generator)
        return self._fitted_mean() + deltas

    def posterior_variance(self) -> Tensor:
        """diag (sH + diag δ)⁻¹, shape (P,), in flat parameter order."""
        self._require_fit()
        with torch.no_grad():
            return self._curv.variance(self._deltas(None).detach())

    def predict(
        self,
        x: Inputs,
        n_samples: int = 32,
        linearized: bool = True,
        generator: torch.Generator | None = None,
        chunk_size: int = 8,
        exact: bool = True,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Classification: (1/S)Σ_s softmax(f_s(x)), (N, C); regression: (f(θ*, x), diag JΣJᵀ + σ²), (N, O) each.

        Regression with ``linearized`` and ``exact`` (the default): the exact moments of the
        linearised predictive, by :meth:`glm_predictive` (no samples; the same as
        ``self(x, pred_type="glm")``). Otherwise Monte Carlo over S = ``n_samples`` draws:
        f_s = f(θ*, x) + J(x)δθ_s (linearized) or f(θ* + δθ_s, x); regression returns the
        sample mean and the sample variance of f_s plus σ². Samples are processed
        ``chunk_size`` at a time. Classification and binary always sample (``exact`` unused).
        """
        self._require_fit()
        if not isinstance(x, (Tensor, dict)) or n_examples(x) < 1:
            raise InputError("x must be a Tensor (or keyword inputs) with a batch dimension")
        if not isinstance(exact, bool):
            raise InputError(f"exact must be True or False, got {exact!r}")
        self._check_mean()
        if self.likelihood == "regression" and linearized and exact:
            _positive_int("n_samples", n_samples)
            mean, cov = self.glm_predictive(x)
            return closed_form_output(self.likelihood, mean, cov, "probit", self.sigma_noise**2)
        deltas = self.sample_deltas(n_samples, generator)
        logits = sample_logits(
            self.model,
            x,
            deltas,
            linearized=linearized,
            param_names=self.param_names,
            chunk_size=chunk_size,
        )
        if self.likelihood == "classification":
            return average_probabilities(logits)
        if self.likelihood == "binary":
            return bernoulli_probabilities(logits)
        var = logits.var(0, unbiased=False) + self.sigma_noise**2
        return logits.mean(0), var

    def glm_predictive(self, x: Inputs, max_bytes: int | None = None) -> tuple[Tensor, Tensor]:
        """(f(θ*, x), J Σ Jᵀ) of the linearised network, shapes (N, O) and (N, O, O); no P×P matrix."""
        self._require_fit()
        self._check_mean()
        delta = self._deltas(None).detach()
        if hasattr(self._curv, "layer_covariances"):  # diag, kron: from the factored Jacobians
            layers = self._curv.layer_covariances(delta, self.model, self.param_names)
            return factored_glm_predictive(
                self.model,
                self.param_names,
                x,
                layers,
                self._curv.variance(delta),
                max_bytes,
            )
        with torch.no_grad():
            return glm_predictive(
                self.model,
                x,
                lambda V: self._curv.covariance_apply(V, delta),
                self.param_names,
                max_bytes,
            )

    def __call__(
        self,
        x: Inputs,
        pred_type: str = "glm",
        link_approx: str = "probit",
        n_samples: int = 100,
        generator: torch.Generator | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """laplace-torch's predictive: probit/bridge of N(f, JΣJᵀ), or Monte Carlo ("mc") by ``predict``.

        Classification: (N, C) probabilities ((N, 2) for "binary"); regression with "glm":
        (f(θ*, x), diag JΣJᵀ + σ²) in closed form (``link_approx`` "mc" samples instead).
        Valid (pred_type, link_approx): see :data:`laplace_api.VALID_PREDICTIONS`.
        """
        if not check_prediction(self.likelihood, pred_type, link_approx):
            return self.predict(x, n_samples, pred_type == "glm", generator, exact=False)
        mean, cov = self.glm_predictive(x)
        return closed_form_output(self.likelihood, mean, cov, link_approx, self.sigma_noise**2)

    # ---- persistence ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything ``load_state_dict`` needs to reproduce the fitted posterior exactly."""
        mean, loss_sum = self._fitted_mean(), self._fitted_loss()
        return {
            "likelihood": self.likelihood,
            "structure": self.structure,
            "param_names": list(self.param_names),
            "sigma_noise": self.sigma_noise,
            "seed": self.seed,
            "prior_precision": self._prior.detach().clone(),
            "mean": mean.clone(),
            "n_data": self.n_data,
            "n_outputs": self.n_outputs,
            "loss_sum": loss_sum.clone(),
            "curvature": self._curv.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> Laplace:
        """Restore a posterior saved by :meth:`state_dict` (same model, likelihood and structure)."""
        if not isinstance(state, dict) or "curvature" not in state:
            raise InputError("state must be a dict saved by Laplace.state_dict()")
        for key in ("likelihood", "structure"):
            if state.get(key) != getattr(self, key):
                raise InputError(
                    f"state has {key} {state.get(key)!r}, this posterior {getattr(self, key)!r}"
                )
        if self._fmodel is None and state.get("param_names"):  # the saved (traced) last layer
            self._cover(state["param_names"])
        if tuple(state.get("param_names", ())) != self.param_names:
            raise InputError(
                f"state covers parameters {state.get('param_names')}, this posterior {list(self.param_names)}"
            )
        if self.estimate_sigma and isinstance(state.get("sigma_noise"), (int, float)):
            self.sigma_noise = _check_sigma(state["sigma_noise"])  # the estimate saved
        if state.get("sigma_noise") != self.sigma_noise:
            raise InputError(
                f"state has sigma_noise {state.get('sigma_noise')}, not {self.sigma_noise}"
            )
        mean = state["mean"]
        if not isinstance(mean, Tensor) or mean.shape != (self.n_params,):
            raise InputError(f"state mean must have shape ({self.n_params},)")
        backend = BACKENDS[self.structure]
        self._curv = backend.from_state(state["curvature"], self.model, self.loss, self.param_names)
        self._prior = self._check_prior(state["prior_precision"])
        self.mean = mean.clone()
        self.seed = int(state["seed"])
        self.n_data, self.n_outputs = int(state["n_data"]), int(state["n_outputs"])
        self.loss_sum = state["loss_sum"].clone()
        self._ratio = self._curv.scale * self.sigma_noise**2
        return self

    def __repr__(self) -> str:
        delta = self._prior.tolist()
        return (
            f"Laplace(likelihood={self.likelihood!r}, structure={self.structure!r}, "
            f"P={self.n_params if self._fmodel is not None else None}, "
            f"prior_precision={delta}, fitted={self._curv is not None})"
        )
