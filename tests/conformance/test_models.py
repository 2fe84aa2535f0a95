"""(2) Every model meets every posterior, on one loader: a torch DataLoader, shuffle=False.

Tensor-input models get (x, y) batches; the Hugging Face models dict batches
{"input_ids", "attention_mask" (padded), "labels"}.
"""

from __future__ import annotations

import pytest

from .loaders import LOADERS
from .models import MODELS, case
from .posteriors import POSTERIORS, run_cell

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cases() -> dict:
    return {}


@pytest.mark.parametrize("posterior", list(POSTERIORS))
@pytest.mark.parametrize("model", MODELS)
def test_posterior_on_model(model: str, posterior: str, cases: dict) -> None:
    if model not in cases:
        cases[model] = case(model)
    run_cell(posterior, cases[model], LOADERS["dataloader"], f"models[{posterior} x {model}]")
