"""The one contract of a post-hoc posterior, and its shared pieces: likelihood check, tuning names.

Every posterior (:class:`~tacitbayes.posteriors.Laplace`,
:class:`~tacitbayes.posteriors.ProjectedPosterior`, the VAE posteriors through their inner
ones) implements :class:`Posterior`, as laplace-torch users expect::

    post.fit(train_loader)                    # any re-iterable loader (see data_pass.DataPass)
    post.optimize_prior_precision()           # "marglik" (alias "evidence") or "validation"
    post.sample(n)                            # flat weight samples (n, P)
    post.predict(x, n_samples=32)             # probabilities (N, C), or (mean, var)
    post(x, pred_type="glm", link_approx="probit")
    post.state_dict(); post.load_state_dict(state)

The likelihood names and their losses are those of :mod:`tacitbayes.likelihoods`; the
predictive of sampled outputs is :func:`tacitbayes.likelihoods.sample_predictive`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from tacitbayes.errors import InputError
from tacitbayes.likelihoods import check_likelihood, likelihood_loss

__all__ = [
    "TUNING_ALIASES",
    "TUNING_METHODS",
    "Posterior",
    "check_likelihood",
    "likelihood_loss",
    "tuning_method",
]

#: The prior-precision tuning methods of every posterior.
TUNING_METHODS = ("marglik", "validation")
#: Other names accepted for them: the projected posterior's "evidence" is the marginal likelihood.
TUNING_ALIASES = {"evidence": "marglik", "gridsearch": "validation"}


def tuning_method(method: str) -> str:
    """The canonical name of a tuning method ("evidence" → "marglik"), else InputError."""
    name = TUNING_ALIASES.get(method, method) if isinstance(method, str) else method
    if name not in TUNING_METHODS:
        raise InputError(
            f"unknown method {method!r}; available: {', '.join(TUNING_METHODS)} "
            f"(aliases: {', '.join(f'{k} = {v}' for k, v in TUNING_ALIASES.items())})"
        )
    return name


@runtime_checkable
class Posterior(Protocol):
    """A Gaussian (or Gaussian-like) posterior around trained weights θ*."""

    likelihood: str

    def fit(self, train_loader: Iterable[Any]) -> Posterior:
        """Read the training data (every pass in the same order) and fit the curvature."""
        ...

    def optimize_prior_precision(self, method: str = "marglik", *args: Any, **kwargs: Any) -> Any:
        """Tune the prior precision: by the marginal likelihood, or by validation NLL."""
        ...

    def sample(self, n_samples: int) -> Tensor:
        """Flat weight samples θ_s, shape (n_samples, P)."""
        ...

    def predict(self, x: Any, n_samples: int = 32) -> Tensor | tuple[Tensor, Tensor]:
        """Class probabilities (N, C), or (mean, variance) for regression."""
        ...

    def __call__(self, x: Any, pred_type: str = "glm", link_approx: str = "probit") -> Any:
        """The laplace-torch-style predictive."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to predict again without refitting."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> Any:
        """Restore what :meth:`state_dict` saved."""
        ...
