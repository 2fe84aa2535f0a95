"""Likelihoods of the sampled predictives, and the training losses that go with them.

==================  ====================================  =================================
likelihood          Monte Carlo predictive over samples   training loss (mean over a batch)
==================  ====================================  =================================
``classification``  (1/S) Σ_s softmax(f_s/T), (N, C)      ``cross_entropy``: −log softmax(f)_y
``binary``          [1 − p̄, p̄], p̄ = (1/S) Σ_s σ(f_s/T),   ``binary_cross_entropy``:
                    (N, 2); one logit per example         softplus(f) − y f, y ∈ {0, 1}
``regression``      (mean_s f_s, var_s f_s + σ²),         ``mse``: ½‖f − y‖²
                    each (N, O)
==================  ====================================  =================================

The loss names are those of :mod:`tacitbayes.curvature.losses`. ``mse`` with integer
targets one-hot encodes them (a classifier trained on the squared loss). In regression,
var_s is the variance over the S samples (divided by S) and σ (``sigma_noise``) the
observation noise, given by the caller: 0 gives the spread of the network's outputs alone.

Training (not curvature) also takes ``model_loss`` (:data:`TRAIN_LOSSES`): the mean of
outputs that already are per-example losses, shape (N,) or (N, 1), e.g. a VAE's negative
ELBO; the targets are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from tacitbayes.curvature.losses import check_class_targets
from tacitbayes.errors import InputError

__all__ = [
    "LIKELIHOODS",
    "average_probabilities",
    "bernoulli_probabilities",
    "likelihood_loss",
    "sample_predictive",
    "LOSSES",
    "TRAIN_LOSSES",
    "check_likelihood",
    "mc_predictive",
    "mean_loss",
]

#: Each likelihood's training loss.
LIKELIHOODS = {
    "classification": "cross_entropy",
    "regression": "mse",
    "binary": "binary_cross_entropy",
}
LOSSES = tuple(LIKELIHOODS.values())
#: The losses training accepts: those of :data:`LOSSES` (which have curvature) and
#: ``model_loss``, the mean of a model's own per-example losses (no curvature).
TRAIN_LOSSES = (*LOSSES, "model_loss")


def check_likelihood(likelihood: str) -> str:
    """Return ``likelihood`` if it is one of :data:`LIKELIHOODS`, else raise InputError."""
    if not isinstance(likelihood, str) or likelihood not in LIKELIHOODS:
        raise InputError(f"unknown likelihood {likelihood!r}; available: {', '.join(LIKELIHOODS)}")
    return likelihood


def average_probabilities(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Monte-Carlo predictive (1/S) Σ_s softmax(f_s / T); logits of shape (S, N, C)."""
    return torch.softmax(logits / temperature, dim=-1).mean(0)


def bernoulli_probabilities(logits: Tensor) -> Tensor:
    """Monte-Carlo predictive of a one-logit classifier: [1 − p̄, p̄], p̄ = (1/S) Σ_s σ(f_s); (N, 2)."""
    if logits.shape[-1] != 1:
        raise InputError(f"a binary classifier has one output (logit), got {logits.shape[-1]}")
    p = torch.sigmoid(logits).mean(0)
    return torch.cat([1 - p, p], dim=-1)


def likelihood_loss(likelihood: str) -> str:
    """The curvature loss of a likelihood (``classification`` → ``cross_entropy``, ...), checked."""
    return LIKELIHOODS[check_likelihood(likelihood)]


def sample_predictive(
    likelihood: str, outputs: Tensor, noise_variance: float = 0.0
) -> Tensor | tuple[Tensor, Tensor]:
    """The predictive of sampled outputs (S, N, O): class probabilities, or (mean, var + σ²)."""
    likelihood = check_likelihood(likelihood)
    if likelihood == "classification":
        return average_probabilities(outputs)
    if likelihood == "binary":
        return bernoulli_probabilities(outputs)
    return outputs.mean(0), outputs.var(0, unbiased=False) + noise_variance


def _one_logit(output: Tensor, what: str) -> Tensor:
    """The outputs as (N, 1): one logit per example, else InputError."""
    if output.ndim == 1:
        return output.unsqueeze(-1)
    if output.ndim != 2 or output.shape[-1] != 1:
        raise InputError(
            f"{what} needs a model with one output (a logit) per example, got outputs of "
            f"shape {tuple(output.shape)}"
        )
    return output


def _targets_like(output: Tensor, y: Tensor, loss: str) -> Tensor:
    """Real targets of the outputs' shape, or InputError naming both shapes."""
    if y.numel() != output.numel():
        raise InputError(
            f"{loss} targets of shape {tuple(y.shape)} do not match outputs of shape "
            f"{tuple(output.shape)}"
        )
    return y.reshape(output.shape).to(output.dtype)


def _model_loss(output: Tensor) -> Tensor:
    """(1/N) Σ_n f_n of per-example losses f of shape (N,) or (N, 1), else InputError."""
    if output.ndim == 2 and output.shape[-1] == 1:
        output = output.squeeze(-1)
    if output.ndim != 1:
        raise InputError(
            "model_loss needs a model that returns one loss per example, shape (N,) or (N, 1), "
            f"got outputs of shape {tuple(output.shape)}"
        )
    return output.mean()


def mean_loss(output: Tensor, y: Tensor, loss: str) -> Tensor:
    """(1/N) Σ_n ℓ(f_n, y_n): −log softmax(f)_y, ½‖f − y‖² (y one-hot if integer), softplus(f) − y f or f_n."""
    if loss == "cross_entropy":
        if output.ndim < 2 or output.shape[-1] < 2:
            raise InputError(
                "cross_entropy needs one output per class (at least 2); a single-logit binary "
                "classifier uses loss 'binary_cross_entropy' (likelihood 'binary')"
            )
        if output.ndim == 2 and not y.is_floating_point():  # a clear error, not a CUDA assert
            check_class_targets(y, len(output), output.shape[-1], loss)
        return F.cross_entropy(output, y)
    if loss == "mse":
        if y.is_floating_point():
            target = _targets_like(output, y, loss)
        else:
            target = F.one_hot(y, output.shape[-1]).to(output.dtype)
        return 0.5 * (output - target).pow(2).reshape(len(output), -1).sum(-1).mean()
    if loss == "binary_cross_entropy":
        logit = _one_logit(output, loss)
        return F.binary_cross_entropy_with_logits(logit, _targets_like(logit, y, loss))
    if loss == "model_loss":  # the output is the loss; y is ignored
        return _model_loss(output)
    raise InputError(f"unknown loss {loss!r}; available: {', '.join(TRAIN_LOSSES)}")


def _check_settings(likelihood: str, temperature: float, sigma_noise: float) -> None:
    if isinstance(temperature, bool) or not (0 < float(temperature) < math.inf):
        raise InputError(f"temperature must be positive, got {temperature!r}")
    if isinstance(sigma_noise, bool) or not (0 <= float(sigma_noise) < math.inf):
        raise InputError(f"sigma_noise must be finite and >= 0, got {sigma_noise!r}")
    if likelihood == "regression" and float(temperature) != 1.0:
        raise InputError("temperature applies to likelihood 'classification' and 'binary' only")
    if likelihood != "regression" and float(sigma_noise) != 0.0:
        raise InputError("sigma_noise applies to likelihood 'regression' only")


def mc_predictive(
    outputs: Iterable[Tensor],
    likelihood: str = "classification",
    temperature: float = 1.0,
    sigma_noise: float = 0.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """Predictive of S sampled outputs f_s: (1/S) Σ softmax(f_s/T), [1 − p̄, p̄] or (mean f_s, var f_s + σ²).

    ``outputs`` is read one sample at a time (a generator keeps one in memory): the
    probabilities are summed, the regression moments updated by Welford's rule.
    """
    likelihood = check_likelihood(likelihood)
    _check_settings(likelihood, temperature, sigma_noise)
    count, total, m2 = 0, None, None
    for f in outputs:
        count += 1
        if likelihood == "regression":
            if total is None:
                total, m2 = f.clone(), torch.zeros_like(f)
                continue
            delta = f - total
            total.add_(delta / count)
            m2.add_(delta * (f - total))  # type: ignore[union-attr]
            continue
        if likelihood == "binary":
            probs = bernoulli_probabilities(
                _one_logit(f, "likelihood 'binary'")[None] / temperature
            )
        else:
            probs = average_probabilities(f[None], temperature)
        total = probs if total is None else total.add_(probs)
    if total is None:
        raise InputError("no sampled outputs to average")
    if likelihood == "regression":
        return total, m2 / count + float(sigma_noise) ** 2  # type: ignore[operator]
    return total / count
