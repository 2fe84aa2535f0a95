"""Laplace approximation around trained weights θ*: q(θ) = N(θ*, (sH + diag δ)⁻¹).

H is the GGN of the *sum* loss over the training set (cross-entropy for classification;
½‖f − y‖² for regression, with s = 1/σ² for a fixed observation noise σ²), structured as
``"diag"`` (exact GGN diagonal), ``"kron"`` (KFAC) or ``"last_layer"`` (the dense GGN of
the last nn.Linear's parameters). δ is the prior precision of p(θ) = N(0, diag δ⁻¹): a
scalar, or one value per prior group (the modules that own the parameters; last_layer has
one group). A network trained on the mean loss with coupled weight decay wd has the MAP of
the prior δ = N·wd for the sum loss.

Laplace evidence (MacKay 1992), θ* restricted to the covered parameters, P_g in group g:
  log Z(δ) ≈ log p(D | θ*) − ½ Σ_g δ_g ‖θ*_g‖² + ½ Σ_g P_g log δ_g − ½ log det(sH + diag δ)
with log p(D | θ*) = −L(θ*) (classification) or −L(θ*)/σ² − (N·O/2) log 2πσ² (regression).
The −(P/2) log 2π of the prior and the +(P/2) log 2π of the Gaussian integral cancel. For a
linear-Gaussian model at its MAP the expression is the exact evidence.

Predictions average over weight perturbations δθ ~ N(0, (sH + diag δ)⁻¹) in the flat order of
the covered parameters, pushed through the linearized network (default) or the network itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tacitbayes.batches import Inputs, check_loader, n_examples
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel, flatten, last_layer_names
from tacitbayes.posteriors.laplace_curvature import BACKENDS, module_groups
from tacitbayes.posteriors.predictive import average_probabilities, sample_logits

__all__ = ["LIKELIHOODS", "STRUCTURES", "Laplace"]

LIKELIHOODS = {"classification": "cross_entropy", "regression": "mse"}
STRUCTURES = ("diag", "kron", "last_layer")


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
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str = "classification",
        structure: str = "kron",
        prior_precision: float | Tensor = 1.0,
        param_names: str | Sequence[str] | None = None,
        sigma_noise: float = 1.0,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be an nn.Module, got {type(model).__name__}")
        if likelihood not in LIKELIHOODS:
            raise InputError(
                f"unknown likelihood {likelihood!r}; choose one of {list(LIKELIHOODS)}"
            )
        if structure not in STRUCTURES:
            raise InputError(f"unknown structure {structure!r}; choose one of {list(STRUCTURES)}")
        sigma_noise = float(sigma_noise)
        if not (0 < sigma_noise < math.inf):
            raise InputError(f"sigma_noise must be finite and > 0, got {sigma_noise}")
        if likelihood == "classification" and sigma_noise != 1.0:
            raise InputError("sigma_noise applies to likelihood='regression' only")
        self.model, self.likelihood, self.structure = model, likelihood, structure
        self.loss = LIKELIHOODS[likelihood]
        self.sigma_noise, self.seed = sigma_noise, int(seed)
        if param_names is None and structure == "last_layer":
            param_names = last_layer_names(model)
        self._fmodel = FunctionalModel(model, param_names)
        self.param_names: tuple[str, ...] = self._fmodel.param_names
        params = self._fmodel.params()
        first = next(iter(params.values()))
        self.dtype, self.device = first.dtype, first.device
        if structure == "last_layer":
            self.groups, sizes = ["all"], torch.tensor([self.n_params], dtype=torch.long)
        else:
            self.groups, sizes = module_groups(model, self.param_names)
        self._group_sizes = sizes
        self._prior = self._check_prior(prior_precision)
        self._curv: Any = None
        self.mean: Tensor | None = None
        self.n_data = 0
        self.n_outputs = 0
        self.loss_sum: Tensor | None = None
        self.tuning: dict[str, Any] = {}

    # ---- basic properties ----------------------------------------------------------------
    @property
    def n_params(self) -> int:
        """Number P of covered parameters."""
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
        if self._curv is None:
            raise InputError(
                "call fit(train_loader) (or load_state_dict) before using the posterior"
            )

    # ---- fitting -------------------------------------------------------------------------
    def fit(self, train_loader: Iterable[Any], n_data: int | None = None) -> Laplace:
        """Compute L(θ*) and the curvature in ONE pass over ``train_loader`` (see :mod:`tacitbayes.batches`).

        ``n_data``: the loader is a subset of a training set of ``n_data`` examples; the
        loss and the curvature are scaled by n_data / (examples seen).
        """
        loader = check_loader(train_loader, "train_loader")
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
        return self

    # ---- evidence ------------------------------------------------------------------------
    def log_likelihood(self) -> Tensor:
        """log p(D | θ*): −L(θ*), or −L(θ*)/σ² − (N·O/2) log 2πσ² for regression."""
        self._require_fit()
        assert self.loss_sum is not None
        if self.likelihood == "classification":
            return -self.loss_sum
        var = self.sigma_noise**2
        return -self.loss_sum / var - 0.5 * self.n_data * self.n_outputs * math.log(
            2 * math.pi * var
        )

    def log_marginal_likelihood(self, prior_precision: float | Tensor | None = None) -> Tensor:
        """log p(D|θ*) − ½Σ_g δ_g‖θ*_g‖² + ½Σ_g P_g log δ_g − ½ log det(sH + diag δ); differentiable in δ."""
        self._require_fit()
        assert self.mean is not None
        delta = self._deltas(prior_precision)
        chunks = self.mean.split(self._group_sizes.tolist())
        sq = torch.stack([c.square().sum() for c in chunks]).to(self.dtype)
        sizes = self._group_sizes.to(device=self.device, dtype=self.dtype)
        return (
            self.log_likelihood()
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
        linearized: bool = True,
    ) -> Tensor:
        """Set δ by maximising the evidence ("marglik") or minimising validation NLL ("validation").

        marglik, ``prior_structure="scalar"``: bounded 1-D search on log δ (the evidence is
        unimodal in log δ); ``"layerwise"``: then Adam on log δ_g (``n_steps``, ``lr``).
        validation: the scalar δ of ``grid`` (default current δ × 10^[−3, 3] in half decades,
        extended past an edge while the NLL improves) with the lowest NLL of the predictive
        on ``val_loader`` (every δ tried and its NLL in ``tuning``).
        Returns the chosen δ.
        """
        from tacitbayes.posteriors.laplace_tuning import tune_marglik, tune_validation

        self._require_fit()
        if method == "marglik":
            self._prior = tune_marglik(self, prior_structure, n_steps, lr)
            self.tuning = {"method": method, "prior_structure": prior_structure}
        elif method == "validation":
            if val_loader is None:
                raise InputError("method='validation' needs a val_loader")
            self._prior, tried = tune_validation(self, val_loader, grid, n_samples, linearized)
            self.tuning = {
                "method": method,
                "grid": [d for d, _ in tried],
                "nll": [v for _, v in tried],
            }
        else:
            raise InputError(f"unknown method {method!r}; choose 'marglik' or 'validation'")
        return self.prior_precision

    # ---- posterior -----------------------------------------------------------------------
    def _check_mean(self) -> None:
        assert self.mean is not None
        if not torch.equal(flatten(self._fmodel.params()), self.mean):
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
        assert self.mean is not None
        return self.mean + deltas

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
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Classification: (1/S)Σ_s softmax(f_s(x)), shape (N, C); regression: (mean, variance).

        f_s = f(θ*, x) + J(x)δθ_s (linearized) or f(θ* + δθ_s, x); regression variance is
        the sample variance of f_s plus σ². Samples are processed ``chunk_size`` at a time.
        """
        self._require_fit()
        if not isinstance(x, (Tensor, dict)) or n_examples(x) < 1:
            raise InputError("x must be a Tensor (or keyword inputs) with a batch dimension")
        self._check_mean()
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
        var = logits.var(0, unbiased=False) + self.sigma_noise**2
        return logits.mean(0), var

    # ---- persistence ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything ``load_state_dict`` needs to reproduce the fitted posterior exactly."""
        self._require_fit()
        assert self.mean is not None and self.loss_sum is not None
        return {
            "likelihood": self.likelihood,
            "structure": self.structure,
            "param_names": list(self.param_names),
            "sigma_noise": self.sigma_noise,
            "seed": self.seed,
            "prior_precision": self._prior.detach().clone(),
            "mean": self.mean.clone(),
            "n_data": self.n_data,
            "n_outputs": self.n_outputs,
            "loss_sum": self.loss_sum.clone(),
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
        if tuple(state.get("param_names", ())) != self.param_names:
            raise InputError(
                f"state covers parameters {state.get('param_names')}, this posterior {list(self.param_names)}"
            )
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
        return self

    def __repr__(self) -> str:
        delta = self._prior.tolist()
        return (
            f"Laplace(likelihood={self.likelihood!r}, structure={self.structure!r}, "
            f"P={self.n_params}, prior_precision={delta}, fitted={self._curv is not None})"
        )
