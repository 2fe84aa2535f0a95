"""(1) Every posterior meets every loader, on one small model (the float64 MLP)."""

from __future__ import annotations

import pytest

from .loaders import LOADERS
from .models import Case, case
from .posteriors import POSTERIORS, run_cell

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mlp() -> Case:
    return case("mlp")


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("posterior", list(POSTERIORS))
def test_posterior_on_loader(posterior: str, loader: str, mlp: Case) -> None:
    run_cell(posterior, mlp, LOADERS[loader], f"loaders[{posterior} x {loader} x mlp]")


@pytest.mark.parametrize("posterior", list(POSTERIORS))
def test_contract_sees_other_rows(posterior: str, mlp: Case) -> None:
    """The comparison is not vacuous: the fit on 32 of the 44 rows differs from the fit on all 44,
    in the fit values and in the predictions."""
    from .loaders import dataset_batches
    from .posteriors import _compare, reference_fit

    full = reference_fit(posterior, mlp, dataset_batches(mlp))
    part = reference_fit(posterior, mlp, dataset_batches(mlp, drop_last=True))
    assert full.error is None and part.error is None, (full.where, part.where)
    problems = _compare(part.values, full.values)
    assert any(p.startswith("fit.") for p in problems), problems
    assert any(p.startswith("pred.") for p in problems), problems
