"""Predictive distributions from weight perturbations δ around the trained weights θ*.

Linearised: f_lin(θ* + δ, x) = f(θ*, x) + J(x) δ (one JVP per sample, vmapped);
sampled: the network itself at θ* + δ. Classification averages softmax
probabilities over samples. Both work in chunks of samples to bound memory.
Under ``torch.distributed`` :func:`validation_nll` reads this rank's shard of the loader and
all-reduces the NLL sums and the count (the deltas must be the same on every rank).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jvp, vmap

from tacitbayes.batches import Inputs, move_inputs
from tacitbayes.data_pass import data_pass
from tacitbayes.distributed import all_reduce_
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel, unflatten
from tacitbayes.likelihoods import average_probabilities, bernoulli_probabilities

__all__ = [
    "average_probabilities",
    "bernoulli_probabilities",
    "sample_logits",
    "validation_nll",
]


def sample_logits(
    model: nn.Module,
    x: Inputs,
    deltas: Tensor,
    *,
    linearized: bool = True,
    param_names: str | Sequence[str] | None = None,
    chunk_size: int = 8,
) -> Tensor:
    """Outputs for each perturbation: f(θ*, x) + J(x)δ_s (linearised) or f(θ* + δ_s, x); (S, N, O)."""
    fmodel = FunctionalModel(model, param_names)
    params = {k: v.detach() for k, v in fmodel.params().items()}
    n_p = sum(t.numel() for t in params.values())
    if deltas.ndim != 2 or deltas.shape[1] != n_p:
        raise InputError(f"deltas must have shape (n_samples, {n_p}), got {tuple(deltas.shape)}")
    first = next(iter(params.values()))
    deltas = deltas.to(dtype=first.dtype, device=first.device)
    x = move_inputs(x, first.device, first.dtype)
    outs = []
    with torch.no_grad():
        if linearized:
            f0 = fmodel(params, x)

            def push(delta: dict[str, Tensor]) -> Tensor:
                return jvp(lambda p: fmodel(p, x), (params,), (delta,))[1]

            for chunk in deltas.split(chunk_size):
                outs.append(f0 + vmap(push)(unflatten(chunk, params)))
        else:
            for delta in deltas:
                shifted = {k: params[k] + d for k, d in unflatten(delta, params).items()}
                outs.append(fmodel(shifted, x).unsqueeze(0))
    return torch.cat(outs)


def _nll_sum(logits: Tensor, y: Tensor, likelihood: str, noise_variance: float) -> float:
    """Σ_n −log p̄(y_n | x_n) of the Monte-Carlo predictive of samples ``logits`` (S, N, O)."""
    if likelihood == "regression":
        mean, var = logits.mean(0), logits.var(0, unbiased=False) + noise_variance
        y = y.reshape(mean.shape).to(mean.dtype)
        nll = 0.5 * (torch.log(2 * math.pi * var) + (y - mean).square() / var)
        return float(nll.sum())
    if likelihood == "binary":
        probs = bernoulli_probabilities(logits)
    else:
        probs = average_probabilities(logits)
    return float(-probs.gather(1, y.reshape(-1, 1).long()).clamp_min(1e-12).log().sum())


def validation_nll(
    model: nn.Module,
    deltas: Tensor,
    loader: Iterable[Any],
    precisions: Sequence[float],
    *,
    param_names: str | Sequence[str] | None = None,
    chunk_size: int = 8,
    likelihood: str = "classification",
    noise_variance: float = 0.0,
) -> list[float]:
    """Mean NLL of the linearised predictive with perturbations δ_s/√α, for each α; streamed.

    Classification: −(1/N) Σ_n log (1/S) Σ_s softmax(f(θ*, x_n) + J(x_n) δ_s / √α)_{y_n};
    binary: the same with [1 − σ(f), σ(f)]; regression: the Gaussian NLL of the samples'
    mean and variance plus ``noise_variance`` (σ²), summed over outputs. One batch at a time.
    """
    if likelihood not in ("classification", "binary", "regression"):
        raise InputError(f"unknown likelihood {likelihood!r}")
    totals = torch.zeros(len(precisions), dtype=torch.float64)
    count = 0
    fmodel = FunctionalModel(model, param_names)
    params = fmodel.params()
    first = next(iter(params.values()))
    batches = data_pass(loader, what="the validation loader")
    for x, y in batches.batches(first.device, first.dtype):
        with torch.no_grad():
            shifted = sample_logits(
                model, x, deltas, linearized=True, param_names=param_names, chunk_size=chunk_size
            )
            f0 = fmodel(params, x)
        shifts = shifted - f0
        y = y.to(f0.device)
        for i, alpha in enumerate(precisions):
            totals[i] += _nll_sum(f0 + shifts / float(alpha) ** 0.5, y, likelihood, noise_variance)
        count += len(y)
    sums = all_reduce_(torch.cat([totals, totals.new_tensor([count])]).to(first.device))
    totals, count = sums[:-1].cpu(), int(sums[-1])
    if count == 0:
        raise InputError("the validation loader yields no batch")
    return (totals / count).tolist()
