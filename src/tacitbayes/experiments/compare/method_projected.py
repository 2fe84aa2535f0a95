"""``compare`` methods ``projected`` and ``loss_projected``: the null-space projected posterior.

Fitted on every training example (the loader is streamed), with the posterior's default
solver (the dense NTK Gram when it fits the memory budget, block MINRES on the
matrix-free kernel otherwise). ``projected`` projects onto the null space of the GGN
rows S_nᵀJ_n (``rows="ggn"``: null(J) and, per example, the shift of all its logits alike)
to the null-space residual ‖SᵀJ𝒫ε‖/‖SᵀJε‖ ≤ max(1e-3, the residual whose second-order
training-NLL change per sample is 1e-3: ``nll_tol``), the residual in the norm the
training NLL moves in; ``loss_projected`` projects the loss gradients to 1e-3. The prior
precision is the evidence value α = rank/‖θ*‖² (docs/methods.md §1); the value validation
NLL would choose is computed and reported beside it, not used.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from tacitbayes.data import BatchLoader
from tacitbayes.experiments.compare.registry import FitContext, register_method
from tacitbayes.posteriors.projected import ProjectedPosterior
from tacitbayes.search import edge_record

PASS_BATCH = 256
NLL_TOL = 1e-3  # the training-NLL change per sample a stopped projection may leave


class PosteriorPredictor:
    """Class probabilities from a fitted posterior's linearised predictive."""

    def __init__(self, posterior: ProjectedPosterior, n_samples: int, info: dict[str, Any]) -> None:
        self.posterior, self.n_samples, self.info = posterior, n_samples, info

    def predict_samples(self, x: torch.Tensor) -> torch.Tensor:
        """Linearised logits f(θ*, x) + J(x)δ_s, shape (S, len(x), n_classes)."""
        return self.posterior.sample_outputs(x, n_samples=self.n_samples)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(1/S) Σ_s softmax(f(θ*, x) + J(x) δ_s)."""
        return torch.softmax(self.predict_samples(x), -1).mean(0)


def _fit(ctx: FitContext, loss_projected: bool) -> PosteriorPredictor:
    rows = {} if loss_projected else {"rows": "ggn", "nll_tol": NLL_TOL}
    post = ProjectedPosterior(
        ctx.model,
        "classification",
        loss_projected=loss_projected,
        seed=ctx.seed,
        progress=ctx.progress,
        **rows,
    )
    start = time.perf_counter()
    post.fit(BatchLoader(ctx.data.train, PASS_BATCH))
    post.projected_noise(ctx.n_samples)
    projection_seconds = time.perf_counter() - start
    alpha = post.optimize_prior_precision("marglik", n_samples=ctx.n_samples)
    info: dict[str, Any] = {
        "solver": post.solver_used,
        "n_fit": post.n_fit,
        "null_space_residual": post.infos[0].max_residual,
        "null_space_tol": post.effective_tol,
        "rows": post.rows,
        "solver_iterations": post.infos[0].iterations,
        "data_passes": post.infos[0].data_passes,
        "setup_seconds": post.setup_seconds,
        "projection_seconds": projection_seconds,
        "n_samples": ctx.n_samples,
        "prior_precision": alpha,
        "evidence_prior_precision": alpha,
        "prior_precision_tuning": "evidence",
    }
    if len(ctx.data.val):
        start = time.perf_counter()
        info["validation_prior_precision"] = post.optimize_prior_precision(
            "validation", val_loader=BatchLoader(ctx.data.val, 500), n_samples=ctx.n_samples
        )
        info["validation_seconds"] = time.perf_counter() - start
        info["searches"] = {"prior_precision_validation": edge_record(post.tuning)}
        post.prior_precision = alpha
    return PosteriorPredictor(post, ctx.n_samples, info)


@register_method("projected")
def fit_projected(ctx: FitContext) -> PosteriorPredictor:
    """Null-space projected posterior N(θ*, α⁻¹(I − J⁺J)), every training example, evidence α."""
    return _fit(ctx, loss_projected=False)


@register_method("loss_projected")
def fit_loss_projected(ctx: FitContext) -> PosteriorPredictor:
    """Projection onto the null space of the per-example loss gradients (linear in P, any O)."""
    return _fit(ctx, loss_projected=True)
