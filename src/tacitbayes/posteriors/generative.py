"""Posteriors over a VAE's parameters and the predictive uncertainty of a generative model.

A VAE's per-example loss is its negative ELBO at the encoder's mean code, ℓ_n(θ) =
−ELBO(x_n; θ) with z = μ_φ(x_n) (the model in eval mode: deterministic). Two posteriors
around the trained weights θ* (all of them, or a part such as the decoder):

* :class:`VAEProjectedPosterior`, the loss-projected posterior (Miani et al., 2025):
  q(θ) = N(θ*, α⁻¹ 𝒫), 𝒫 = I − G⁺G with G the N×P matrix of per-example gradients
  ∇_θ ℓ_n. Every sample leaves each training example's linearised loss unchanged; the
  cost is linear in P and independent of the number of pixels. It is fitted by
  :class:`~tacitbayes.posteriors.ProjectedPosterior` on the one-output network
  x ↦ ℓ(θ; x), whose Jacobian is G, so every solver (gram, nystrom, krylov) and the
  evidence α* = rank(G)/‖θ*‖² apply unchanged.
* :class:`VAEDiagonalLaplace`, the baseline: N(θ*, diag(h + δ)⁻¹) with h = Σ_n (∇_θ ℓ_n)²
  the empirical Fisher of the negative ELBO and δ maximising the Laplace evidence
  −(δ/2)‖θ*‖² + (P/2) log δ − ½ Σ_i log(h_i + δ).

Both predict alike: for an input x the decoder's reconstruction at z = μ_φ(x) under
posterior samples θ_s — linearised, σ(r(θ*, x) + J_r(x) δ_s) (one JVP per sample), or
at the sampled weights, σ(r(θ* + δ_s, x)) — its mean and pixel-wise standard deviation
over the samples; the same for generated images σ(decode(z)); and the scalar
uncertainty score Σ_pixels Var_s[σ(r_s)] per input.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from tacitbayes.batches import FIT_BATCH_SIZE, as_loader, iter_batches
from tacitbayes.devices import model_device, model_dtype
from tacitbayes.errors import InputError, NotFittedError
from tacitbayes.functional import FunctionalModel, eval_mode, layer_names
from tacitbayes.posteriors.contract import tuning_method
from tacitbayes.posteriors.predictive import sample_logits
from tacitbayes.posteriors.projected import ProjectedPosterior

__all__ = ["VAEDiagonalLaplace", "VAEProjectedPosterior", "check_vae"]

NOT_FITTED = "call fit(train_loader) before using the posterior"
VAE_METHODS = ("encode", "decode", "negative_elbo")


def check_vae(model: Any) -> nn.Module:
    """``model`` if it is an nn.Module with encode(x), decode(z) and negative_elbo(x, sample); else InputError."""
    missing = [m for m in VAE_METHODS if not callable(getattr(model, m, None))]
    if not isinstance(model, nn.Module) or missing:
        what = type(model).__name__
        lacks = f"lacks {', '.join(missing)}" if missing else "is not an nn.Module"
        raise InputError(
            f"a generative posterior needs a VAE with encode(x), decode(z) and "
            f"negative_elbo(x, sample) (tb.models 'vae_mlp' or 'vae_conv'); {what} {lacks}"
        )
    return model


class _NegativeElbo(nn.Module):
    """x ↦ −ELBO(x; θ) at z = μ_φ(x), shape (N, 1): its Jacobian is the per-example gradient matrix G."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: Tensor) -> Tensor:
        return self.vae.negative_elbo(x, sample=False).reshape(-1, 1)


class _Reconstruction(nn.Module):
    """x ↦ decoder logits at z = μ_φ(x), flattened to (N, C·H·W)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: Tensor) -> Tensor:
        return self.vae.decode(self.vae.encode(x)[0]).flatten(1)


class _Decoder(nn.Module):
    """z ↦ decoder logits, flattened to (N, C·H·W)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: Tensor) -> Tensor:
        return self.vae.decode(z).flatten(1)


def _wrapped_names(vae: nn.Module, params: str | Sequence[str] | None) -> list[str]:
    """Names in the wrappers ("vae." + name) of the VAE parameters in the submodules ``params``."""
    names = (
        [n for n, p in vae.named_parameters() if p.requires_grad]
        if params is None
        else layer_names(vae, params)
    )
    return [f"vae.{name}" for name in names]


class _SampledVAEPosterior:
    """Shared predictive of a Gaussian posterior over (part of) a VAE's parameters; subclasses give δ_s."""

    def __init__(
        self,
        vae: nn.Module,
        params: str | Sequence[str] | None,
        chunk_size: int,
        prior_precision: float | None,
    ) -> None:
        self.vae = check_vae(vae)
        self.param_names = _wrapped_names(vae, params)
        self.chunk_size = chunk_size
        self.fixed_precision = prior_precision is not None  # else fit sets it by the evidence
        self.prior_precision = prior_precision

    def deltas(self, n_samples: int) -> Tensor:
        """Weight perturbations δ_s = θ_s − θ*, shape (n_samples, P)."""
        raise NotImplementedError

    def _samples(
        self, module: nn.Module, inputs: Tensor, n_samples: int, linearized: bool
    ) -> Tensor:
        with eval_mode(self.vae):
            logits = sample_logits(
                module,
                inputs,
                self.deltas(n_samples),
                linearized=linearized,
                param_names=self.param_names,
                chunk_size=self.chunk_size,
            )
            with torch.no_grad():
                z = inputs if isinstance(module, _Decoder) else self.vae.encode(inputs[:1])[0]
                shape = self.vae.decode(z[:1]).shape[1:]
        return torch.sigmoid(logits).reshape(n_samples, len(inputs), *shape)

    def reconstruction_samples(
        self, x: Tensor, n_samples: int = 32, linearized: bool = True
    ) -> Tensor:
        """σ(r(θ_s, x)) for each posterior sample: reconstructions at z = μ_φ(x), (S, N, C, H, W)."""
        return self._samples(_Reconstruction(self.vae), x, n_samples, linearized)

    def generated_samples(self, z: Tensor, n_samples: int = 32, linearized: bool = True) -> Tensor:
        """σ(decode(θ_s, z)) for each posterior sample: generated images of codes z, (S, N, C, H, W)."""
        return self._samples(_Decoder(self.vae), z, n_samples, linearized)

    def reconstruction_stats(
        self, x: Tensor, n_samples: int = 32, linearized: bool = True
    ) -> tuple[Tensor, Tensor]:
        """(mean, pixel-wise standard deviation) of the reconstructions over the samples, each (N, C, H, W)."""
        samples = self.reconstruction_samples(x, n_samples, linearized)
        return samples.mean(0), samples.std(0, unbiased=False)

    def uncertainty_score(self, x: Tensor, n_samples: int = 32, linearized: bool = True) -> Tensor:
        """Σ_pixels Var_s[σ(r(θ_s, x))] per input: the summed reconstruction variance, (N,)."""
        samples = self.reconstruction_samples(x, n_samples, linearized)
        return samples.var(0, unbiased=False).flatten(1).sum(1)

    # ---- the posterior contract (tacitbayes.posteriors.contract.Posterior) ----------------
    likelihood = "reconstruction"  # Bernoulli pixels of the decoder

    def _theta(self) -> Tensor:
        module = _NegativeElbo(self.vae)
        params = FunctionalModel(module, self.param_names).params()
        return torch.cat([t.detach().reshape(-1) for t in params.values()])

    def sample(self, n_samples: int = 1) -> Tensor:
        """Flat weight samples θ* + δ_s, shape (n_samples, P)."""
        return self._theta() + self.deltas(n_samples)

    def predict(
        self, x: Tensor, n_samples: int = 32, linearized: bool = True
    ) -> tuple[Tensor, Tensor]:
        """(mean, variance) of the reconstructions σ(r(θ_s, x)) over the samples, each (N, C, H, W)."""
        samples = self.reconstruction_samples(x, n_samples, linearized)
        return samples.mean(0), samples.var(0, unbiased=False)

    def __call__(
        self, x: Tensor, pred_type: str = "glm", link_approx: str = "mc", n_samples: int = 32
    ) -> tuple[Tensor, Tensor]:
        """:meth:`predict` with ``pred_type`` "glm" (linearised) or "nn"; only Monte Carlo applies."""
        if pred_type not in ("glm", "nn") or link_approx != "mc":
            raise InputError(
                "a VAE posterior predicts by Monte Carlo: pred_type 'glm' or 'nn', link_approx 'mc'"
            )
        return self.predict(x, n_samples, linearized=pred_type == "glm")

    def optimize_prior_precision(self, method: str = "marglik", n_samples: int = 32) -> float:
        """Set the prior precision by the evidence ("marglik", alias "evidence")."""
        if tuning_method(method) != "marglik":
            raise InputError("a VAE posterior tunes its prior precision by the evidence only")
        self.prior_precision = self._evidence(n_samples)
        return self.prior_precision

    def _evidence(self, n_samples: int) -> float:
        raise NotImplementedError


class VAEProjectedPosterior(_SampledVAEPosterior):
    """The loss-projected posterior N(θ*, α⁻¹(I − G⁺G)) of a VAE, G the per-example negative-ELBO gradients."""

    def __init__(
        self,
        vae: nn.Module,
        params: str | Sequence[str] | None = None,
        *,
        prior_precision: float | None = None,
        chunk_size: int = 8,
        **projected_options: Any,
    ) -> None:
        super().__init__(vae, params, chunk_size, prior_precision)
        if "likelihood" in projected_options or "param_names" in projected_options:
            raise InputError("likelihood and param_names are set by the VAE posterior (use params)")
        self.projected = ProjectedPosterior(
            _NegativeElbo(self.vae),
            "regression",
            sigma_noise=1.0,  # unused: the predictive here is the decoder's, not a regression's
            param_names=self.param_names,
            prior_precision=1.0 if prior_precision is None else prior_precision,
            **projected_options,
        )

    def fit(self, train_loader: Iterable[Any], n_samples: int = 32) -> VAEProjectedPosterior:
        """Take the training data (batches (x, anything), streamed) and, unless given, set α by the evidence."""
        with eval_mode(self.vae):  # z = μ_φ(x): a deterministic per-example loss
            self.projected.fit(train_loader)
            if not self.fixed_precision:
                self.prior_precision = self.projected.optimize_prior_precision(n_samples=n_samples)
        return self

    def deltas(self, n_samples: int) -> Tensor:
        """α^{-1/2} 𝒫ε_s, shape (n_samples, P)."""
        if self.prior_precision is None:
            raise NotFittedError(NOT_FITTED)
        return self.projected.projected_noise(n_samples).T / math.sqrt(self.prior_precision)

    def _evidence(self, n_samples: int) -> float:
        return self.projected.optimize_prior_precision(n_samples=n_samples)

    def state_dict(self) -> dict[str, Any]:
        """The inner projected posterior's state (samples, α)."""
        return {"projected": self.projected.state_dict(), "prior_precision": self.prior_precision}

    def load_state_dict(self, state: dict[str, Any]) -> VAEProjectedPosterior:
        """Restore what :meth:`state_dict` saved (the VAE must hold θ*)."""
        self.projected.load_state_dict(state["projected"])
        self.prior_precision = float(state["prior_precision"])
        return self

    @property
    def info(self) -> dict[str, Any]:
        """Solver, residuals, setup time and α of the fit (for reports)."""
        infos = self.projected.infos
        return {
            "solver": self.projected.solver_used,
            "prior_precision": self.prior_precision,
            "n_params": self.projected.n_params,
            "max_residual": max((i.max_residual for i in infos), default=float("nan")),
            "iterations": sum(i.iterations for i in infos),
            "setup_seconds": self.projected.setup_seconds,
        }


class VAEDiagonalLaplace(_SampledVAEPosterior):
    """N(θ*, diag(h + δ)⁻¹), h = Σ_n (∇_θ ℓ_n)² the empirical Fisher of the negative ELBO."""

    def __init__(
        self,
        vae: nn.Module,
        params: str | Sequence[str] | None = None,
        *,
        prior_precision: float | None = None,
        chunk_size: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__(vae, params, chunk_size, prior_precision)
        self.seed = seed
        self.diagonal: Tensor | None = None
        self.theta: Tensor | None = None

    def fit(self, train_loader: Iterable[Any]) -> VAEDiagonalLaplace:
        """h = Σ_n (∇ℓ_n)² over every training batch (per-example gradients by vmap); δ by the evidence."""
        module = _NegativeElbo(self.vae)
        fmodel = FunctionalModel(module, self.param_names)
        params = {k: v.detach() for k, v in fmodel.params().items()}
        device, dtype = model_device(self.vae), model_dtype(self.vae)

        def loss(p: dict[str, Tensor], x: Tensor) -> Tensor:
            return fmodel(p, x.unsqueeze(0)).sum()

        per_example = vmap(grad(loss), in_dims=(None, 0))
        diagonal = {k: torch.zeros_like(v) for k, v in params.items()}
        with eval_mode(self.vae):
            loader = as_loader(train_loader, FIT_BATCH_SIZE, what="train_loader")
            for x, _ in iter_batches(loader, device, dtype):
                for chunk in x.split(64):
                    for k, g in per_example(params, chunk).items():
                        diagonal[k] += g.square().sum(0)
        self.diagonal = torch.cat([d.reshape(-1) for d in diagonal.values()])
        self.theta = torch.cat([p.reshape(-1) for p in params.values()])
        if not self.fixed_precision:
            self.prior_precision = self.evidence_prior_precision()
        return self

    def log_evidence(self, delta: float) -> float:
        """−(δ/2)‖θ*‖² + (P/2) log δ − ½ Σ_i log(h_i + δ), up to terms free of δ."""
        if self.diagonal is None or self.theta is None:
            raise NotFittedError(NOT_FITTED)
        h = self.diagonal.double()
        return float(
            -0.5 * delta * self.theta.double().square().sum()
            + 0.5 * len(h) * math.log(delta)
            - 0.5 * torch.log(h + delta).sum()
        )

    def evidence_prior_precision(self) -> float:
        """The maximiser of :meth:`log_evidence`: the fixed point δ = γ(δ)/‖θ*‖², γ = Σ_i h_i/(h_i + δ) (MacKay)."""
        if self.diagonal is None or self.theta is None:
            raise NotFittedError(NOT_FITTED)
        h, sq = self.diagonal.double(), max(float(self.theta.double().square().sum()), 1e-30)
        delta = len(h) / sq
        for _ in range(500):  # d/dδ log_evidence = (P − Σ δ/(h_i + δ))/(2δ) − ‖θ*‖²/2 = 0
            new = max(float((h / (h + delta)).sum()), 1e-12) / sq
            if abs(new - delta) <= 1e-12 * delta:
                return new
            delta = new
        return delta

    def _evidence(self, n_samples: int) -> float:
        return self.evidence_prior_precision()

    def state_dict(self) -> dict[str, Any]:
        """h, θ*, δ and the seed: everything to predict again."""
        if self.diagonal is None or self.theta is None:
            raise NotFittedError(NOT_FITTED)
        return {
            "diagonal": self.diagonal.clone(),
            "theta": self.theta.clone(),
            "prior_precision": self.prior_precision,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> VAEDiagonalLaplace:
        """Restore what :meth:`state_dict` saved (the VAE must hold θ*)."""
        theta = state["theta"]
        if not torch.equal(theta, self._theta().to(theta.dtype)):
            raise InputError("the VAE's parameters are not the θ* this state_dict was fitted at")
        self.diagonal, self.theta = state["diagonal"].clone(), theta.clone()
        self.prior_precision, self.seed = float(state["prior_precision"]), int(state["seed"])
        return self

    def deltas(self, n_samples: int) -> Tensor:
        """(h + δ)^{-1/2} ⊙ ε_s with ε_s ~ N(0, I) seeded, shape (n_samples, P)."""
        if self.diagonal is None or self.prior_precision is None:
            raise NotFittedError(NOT_FITTED)
        gen = torch.Generator().manual_seed(self.seed * 7919 + 17)
        eps = torch.randn(n_samples, len(self.diagonal), generator=gen, dtype=self.diagonal.dtype)
        scale = (self.diagonal + self.prior_precision).rsqrt()
        return eps.to(scale.device) * scale
