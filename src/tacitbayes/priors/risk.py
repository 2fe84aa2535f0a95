"""Monte Carlo 0-1 risk of a Gaussian posterior Q over a network's weights (the Gibbs classifier).

* :func:`empirical_risk`: m whole-network samples θ_j ~ Q, each evaluated on all N examples.
  The per-sample errors are iid in [0, 1] with mean L̂(Q), so kl⁻¹(mean, ln(2/δ)/m) bounds L̂(Q)
  with probability ≥ 1 − δ (Langford & Caruana 2001; Dziugaite & Roy 2017).
* :func:`empirical_risk_local`: every example of every pass gets its own independent θ ~ Q,
  drawn by local reparameterisation (Kingma et al. 2015). For an nn.Linear applied once per
  forward pass to (B, features) inputs this is exact: with Λ⁻¹ = (U ⊗ V) diag(1/D) (U ⊗ V)ᵀ,
  y = W ã has law N(M ã, τ U diag(s²) Uᵀ), s_i² = Σ_j (Vᵀã)_j² / D_ij, and the layers of Q are
  independent, so one example sees exactly the outputs of one weight sample. The K·N 0-1 losses
  of K passes are independent Bernoulli variables whose means average to L̂(Q), so the
  Chernoff bound in kl form gives kl⁻¹(mean, ln(2/δ)/(K·N)) (Hoeffding 1963, Theorem 1, holds
  for independent, not identically distributed variables in [0, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel, eval_mode
from tacitbayes.priors.kronecker_gaussian import KroneckerGaussian, LayerSlot

__all__ = ["empirical_risk", "empirical_risk_local", "local_linear_output"]


def _check(inputs: Tensor, labels: Tensor, count: int, what: str, batch_size: int) -> None:
    if not isinstance(inputs, Tensor) or not isinstance(labels, Tensor):
        raise InputError("inputs and labels must be Tensors")
    if labels.ndim != 1 or len(inputs) != len(labels) or len(labels) == 0:
        raise InputError(
            f"need N ≥ 1 inputs and N labels, got {tuple(inputs.shape)} and {tuple(labels.shape)}"
        )
    for name, value in ((what, count), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")


@torch.no_grad()
def empirical_risk(
    model: nn.Module,
    gaussian: KroneckerGaussian,
    inputs: Tensor,
    labels: Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
) -> tuple[float, Tensor]:
    """((1/m) Σ_j err_j, err) with err_j the 0-1 error on (inputs, labels) of θ_j ~ Q, j ≤ m."""
    _check(inputs, labels, n_samples, "n_samples", batch_size)
    fmodel = FunctionalModel(model, gaussian.param_names)
    dtype = next(iter(fmodel.params().values())).dtype
    errors = torch.empty(n_samples, dtype=torch.float64)
    for j in range(n_samples):
        theta = gaussian.sample(1, generator)[0]
        params = {n: t.to(dtype) for n, t in gaussian.as_params(theta).items()}
        wrong = 0
        for start in range(0, len(labels), batch_size):
            logits = fmodel(params, inputs[start : start + batch_size])
            wrong += int((logits.argmax(-1) != labels[start : start + batch_size]).sum())
        errors[j] = wrong / len(labels)
    return float(errors.mean()), errors


def local_linear_output(
    form: tuple[Tensor, Tensor, Tensor], mean: Tensor, tau: float, at: Tensor, eps: Tensor
) -> Tensor:
    """y = ã Mᵀ + √τ (ε ∘ s) Uᵀ, s² = (ã V)² (1/D)ᵀ: one draw of W ã per row of ã (B, d), ε (B, n_out)."""
    U, V, D = form
    s = ((at @ V).square() @ D.reciprocal().mT).sqrt()
    return at @ mean.mT + math.sqrt(tau) * (eps * s) @ U.mT


def _hook(
    slot: LayerSlot,
    gaussian: KroneckerGaussian,
    generator: torch.Generator | None,
    calls: dict[str, int],
) -> Callable[..., Tensor]:
    form, mean, dtype = gaussian.eig_form(slot.name), gaussian.mean(slot.name), gaussian.dtype

    def hook(module: nn.Linear, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
        a = args[0]
        if a.ndim != 2:
            raise InputError(
                f"layer {slot.name!r} got inputs of shape {tuple(a.shape)}; local sampling needs "
                "(B, features) inputs (use empirical_risk for weights shared across positions)"
            )
        calls[slot.name] += 1
        cols = [a.to(dtype)] if slot.weight is not None else []
        if slot.bias is not None:
            cols.append(torch.ones(len(a), 1, dtype=dtype, device=a.device))
        eps = torch.randn(len(a), slot.n_out, dtype=dtype, device=a.device, generator=generator)
        y = local_linear_output(form, mean, gaussian.tau, torch.cat(cols, 1), eps)
        if slot.weight is None:
            y = y + F.linear(a, module.weight).to(dtype)
        if slot.bias is None and module.bias is not None:
            y = y + module.bias.to(dtype)
        return y.to(output.dtype)

    return hook


@torch.no_grad()
def empirical_risk_local(
    model: nn.Module,
    gaussian: KroneckerGaussian,
    inputs: Tensor,
    labels: Tensor,
    n_passes: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
) -> tuple[float, int]:
    """(mean 0-1 error, K·N) over K passes, each example with its own θ ~ Q (module docstring).

    Every covered layer must be an nn.Linear used once per forward pass; the model's other
    parameters are held fixed.
    """
    _check(inputs, labels, n_passes, "n_passes", batch_size)
    modules = dict(model.named_modules())
    bad = [s.name for s in gaussian.layout.slots if not isinstance(modules.get(s.name), nn.Linear)]
    if bad:
        raise InputError(
            f"local sampling supports nn.Linear layers only, not {bad}; use empirical_risk"
        )
    calls = dict.fromkeys(gaussian.layers, 0)
    handles = [
        modules[s.name].register_forward_hook(_hook(s, gaussian, generator, calls))
        for s in gaussian.layout.slots
    ]
    wrong = 0
    try:
        with eval_mode(model):
            for _ in range(n_passes):
                for start in range(0, len(labels), batch_size):
                    logits = model(inputs[start : start + batch_size])
                    if any(c != 1 for c in calls.values()):
                        raise InputError(
                            f"every covered layer must run exactly once per forward pass, got {calls}"
                        )
                    calls.update(dict.fromkeys(calls, 0))
                    wrong += int((logits.argmax(-1) != labels[start : start + batch_size]).sum())
    finally:
        for h in handles:
            h.remove()
    draws = n_passes * len(labels)
    return wrong / draws, draws
