"""What tuning needs of a Laplace posterior, as a Protocol.

:mod:`tacitbayes.posteriors.laplace_tuning` (prior precision) and
:mod:`tacitbayes.posteriors.noise` (observation noise) work on any object with this
surface; :class:`tacitbayes.posteriors.laplace.Laplace` has it and calls them. Typing the
tuning against this Protocol, not the class, keeps the imports one-way:
laplace → laplace_tuning / noise → laplace_protocol.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from tacitbayes.batches import Inputs

__all__ = ["TunableLaplace"]


class TunableLaplace(Protocol):
    """A fitted Laplace posterior whose prior precision δ (and regression noise σ) can be tuned."""

    dtype: torch.dtype
    device: torch.device
    groups: list[str]  # prior groups: one δ each (layerwise) or one shared δ
    n_data: int
    n_outputs: int
    loss_sum: Tensor | None
    sigma_noise: float

    @property
    def prior_precision(self) -> Tensor:
        """δ: a 0-d tensor (shared) or one value per group."""
        ...

    @prior_precision.setter
    def prior_precision(self, value: float | Tensor) -> None: ...

    def log_marginal_likelihood(
        self, prior_precision: float | Tensor | None = None, sigma_noise: float | None = None
    ) -> Tensor:
        """log Z(δ, σ), differentiable in δ."""
        ...

    def set_sigma_noise(self, sigma: float) -> None:
        """Set the regression noise σ."""
        ...

    def predict(
        self, x: Inputs, n_samples: int = 32, linearized: bool = True
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Monte Carlo predictive: probabilities, or (mean, variance) for regression."""
        ...

    def __call__(
        self, x: Inputs, pred_type: str = "glm", link_approx: str = "probit"
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Closed-form (probit/bridge) or Monte Carlo predictive."""
        ...
