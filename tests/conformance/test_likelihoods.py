"""(3) Every likelihood meets every posterior: the float64 MLP trained on that likelihood's loss,
one torch DataLoader (shuffle=False).

classification: 3 logits, int64 labels; binary: one logit, float 0/1 targets of shape (N,);
regression: 2 outputs, real targets of shape (N, 2).
"""

from __future__ import annotations

import pytest

from .loaders import LOADERS
from .models import case
from .posteriors import POSTERIORS, run_cell

pytestmark = pytest.mark.usefixtures("one_thread")

LIKELIHOODS = ["classification", "binary", "regression"]


@pytest.mark.parametrize("posterior", list(POSTERIORS))
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_posterior_on_likelihood(likelihood: str, posterior: str) -> None:
    run_cell(
        posterior,
        case(f"mlp-{likelihood}"),
        LOADERS["dataloader"],
        f"likelihoods[{posterior} x {likelihood}]",
    )
