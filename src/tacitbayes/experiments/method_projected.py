"""``compare`` methods ``projected`` and ``loss_projected``: the null-space projected posterior.

The projection is fitted on a seeded subset of the training set (``FIT_SUBSET``
examples; all of them for small sets), since every solver iteration is a pass over
that data for every sample, and the prior precision is chosen on the validation split
(validation NLL over a grid around the evidence value α = rank(J)/‖θ*‖²; the evidence
value itself is recorded).
"""

from __future__ import annotations

from typing import Any

import torch

from tacitbayes.data import minibatches
from tacitbayes.experiments.methods import FitContext, register_method
from tacitbayes.posteriors.projected import ProjectedPosterior

FIT_SUBSET = 1000
MAX_ITERS = 100
N_SAMPLES = 16


class PosteriorPredictor:
    """Class probabilities from a fitted posterior's linearised predictive."""

    def __init__(self, posterior: ProjectedPosterior, n_samples: int, info: dict[str, Any]) -> None:
        self.posterior, self.n_samples, self.info = posterior, n_samples, info

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(1/S) Σ_s softmax(f(θ*, x) + J(x) δ_s)."""
        return self.posterior.predict(x, n_samples=self.n_samples)


def _fit(ctx: FitContext, loss_projected: bool) -> PosteriorPredictor:
    x, y = ctx.data.train.tensors
    if len(x) > FIT_SUBSET:
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(ctx.seed))[
            :FIT_SUBSET
        ]
        x, y = x[keep], y[keep]
    post = ProjectedPosterior(
        ctx.model,
        "classification",
        solver="krylov",
        loss_projected=loss_projected,
        max_iters=MAX_ITERS,
        seed=ctx.seed,
    )
    post.fit(list(minibatches(torch.utils.data.TensorDataset(x, y), 256)))
    n_samples = min(ctx.n_samples, N_SAMPLES)
    evidence_alpha = post.evidence_prior_precision(n_samples)
    val = list(minibatches(ctx.data.val, 500))
    alpha = post.optimize_prior_precision("validation", val_loader=val, n_samples=n_samples)
    info = {
        "prior_precision": alpha,
        "evidence_prior_precision": evidence_alpha,
        "null_space_residual": post.infos[0].max_residual,
        "solver_iterations": post.infos[0].iterations,
        "data_passes": post.infos[0].data_passes,
        "n_fit": len(x),
        "n_samples": n_samples,
    }
    return PosteriorPredictor(post, n_samples, info)


@register_method("projected")
def fit_projected(ctx: FitContext) -> PosteriorPredictor:
    """Null-space projected posterior N(θ*, α⁻¹(I − J⁺J)), Krylov (LSQR) solver."""
    return _fit(ctx, loss_projected=False)


@register_method("loss_projected")
def fit_loss_projected(ctx: FitContext) -> PosteriorPredictor:
    """Projection onto the null space of the per-example loss gradients."""
    return _fit(ctx, loss_projected=True)
