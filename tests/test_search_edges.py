"""Every grid or bounded search that ends at the edge of its range warns and records it."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

from tacitbayes import calibration as temperature_module  # where sampled_nll is looked up
from tacitbayes.errors import InputError
from tacitbayes.experiments.bound import run as bound
from tacitbayes.experiments.compare import method_laplace as _imported_before_patching  # noqa: F401
from tacitbayes.experiments.compare.run import CompareSettings, run_compare, search_notes
from tacitbayes.experiments.continual import run as continual
from tacitbayes.posteriors import laplace_tuning, projected
from tacitbayes.posteriors.laplace import Laplace
from tacitbayes.posteriors.projected import ProjectedPosterior
from tacitbayes.priors.bounds import pac_bayes_bound
from tacitbayes.search import EDGE_KEYS, check_grid_edge, edge_messages, edge_record
from tacitbayes.variational import VariationalModel, fit_temperature

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


@contextmanager
def quiet() -> Iterator[None]:
    """A context in which any RuntimeWarning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def _problem() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
    x, y = torch.randn(12, 4, dtype=DT), torch.randint(0, 3, (12,))
    return model, [(x[:7], y[:7]), (x[7:], y[7:])]


def _fake_nll(monkeypatch: pytest.MonkeyPatch, best: float) -> None:
    """Validation NLL (log δ − log best)²: minimal at δ = ``best``."""

    def nll(la, loader, n_samples, linearized, value, link="mc"):
        return (math.log(value) - math.log(best)) ** 2

    monkeypatch.setattr(laplace_tuning, "predictive_nll", nll)


# ---- the shared check ----------------------------------------------------------------------
def test_check_grid_edge_words_and_record() -> None:
    words = (
        r"prior precision 1e\+08 is at the top of its search range \[0\.01, 1e\+08\]; "
        r"the posterior may predict like MAP; widen the grid"
    )
    with pytest.warns(RuntimeWarning, match=words):
        record = check_grid_edge(
            "prior precision", [1e-2, 1.0, 1e8], 1e8, high="the posterior may predict like MAP"
        )
    assert {k: record[k] for k in ("at_edge", "edge", "range")} == {
        "at_edge": True,
        "edge": "high",
        "range": [1e-2, 1e8],
    }
    assert edge_record({"method": "x", **record}) == record and tuple(record) == EDGE_KEYS
    with pytest.warns(RuntimeWarning, match="bottom"):
        assert check_grid_edge("β", [3.0, 1.0, 2.0], 1.0)["edge"] == "low"  # unsorted grid
    with pytest.warns(RuntimeWarning, match="bottom"):  # any group at a bound counts
        check_grid_edge("δ", [1e-8, 1e8], torch.tensor([1.0, 1.00001e-8]), tol=1e-4, log=True)
    with quiet():
        inside = check_grid_edge("δ", [1e-8, 1e8], 1.0, tol=1e-4, log=True)
        single = check_grid_edge("δ", [5.0], 5.0)
    assert inside["at_edge"] is False and inside["edge"] is None and inside["message"] is None
    assert single["at_edge"] is False  # one value is not a search
    assert edge_messages({"a": inside, "b": record}) == [record["message"]]
    with pytest.raises(InputError, match="finite"):
        check_grid_edge("δ", [1.0, math.nan], 1.0)
    with pytest.raises(InputError, match="positive"):
        check_grid_edge("δ", [0.0, 1.0], 1.0, log=True)
    with pytest.raises(InputError, match="edge record"):
        edge_record({"method": "marglik"})


# ---- Laplace -------------------------------------------------------------------------------
def test_laplace_validation_grid_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = _problem()
    la = Laplace(model, "classification", "kron").fit(data)
    _fake_nll(monkeypatch, best=1e3)
    with pytest.warns(RuntimeWarning, match=r"validation NLL\) 10 is at the top"):
        la.optimize_prior_precision("validation", val_loader=data, grid=[0.1, 1.0, 10.0])
    assert la.tuning["at_edge"] is True and la.tuning["edge"] == "high"
    assert la.tuning["range"] == [0.1, 10.0] and la.tuning["grid"] == [0.1, 1.0, 10.0]
    with quiet():  # the default grid extends past its edge and finds the optimum
        chosen = la.optimize_prior_precision("validation", val_loader=data)
    assert float(chosen) == pytest.approx(1e3) and la.tuning["at_edge"] is False
    _fake_nll(monkeypatch, best=1e12)  # still improving at the extension limit
    la.prior_precision = 1.0
    with pytest.warns(RuntimeWarning, match="at the top"):
        la.optimize_prior_precision("validation", val_loader=data)
    assert la.tuning["edge"] == "high" and la.tuning["range"][1] == pytest.approx(10**7)
    _fake_nll(monkeypatch, best=1e-12)  # improving down to the hard bound 1e-8
    la.prior_precision = 1e-5
    with pytest.warns(RuntimeWarning, match="at the bottom"):
        la.optimize_prior_precision("validation", val_loader=data)
    assert la.tuning["edge"] == "low" and la.tuning["range"][0] >= 1e-8 * (1 - 1e-9)


def test_laplace_marglik_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = _problem()
    la = Laplace(model, "classification", "kron").fit(data)
    with quiet():
        la.optimize_prior_precision("marglik")
    assert la.tuning["at_edge"] is False and la.tuning["range"] == pytest.approx([1e-8, 1e8])
    # an evidence that keeps rising as δ → 0 ends the search at the bound 1e-8
    rising = lambda d=None, **kw: -la._deltas(d).log().sum()  # noqa: E731
    monkeypatch.setattr(la, "log_marginal_likelihood", rising)
    with pytest.warns(RuntimeWarning, match=r"evidence\) 1e-08 is at the bottom"):
        la.optimize_prior_precision("marglik")
    assert la.tuning["edge"] == "low"
    with pytest.warns(RuntimeWarning, match="at the bottom"):  # Adam per group, clamped
        la.optimize_prior_precision("marglik", prior_structure="layerwise", n_steps=5)
    assert la.tuning["at_edge"] is True and la.tuning["prior_structure"] == "layerwise"


# ---- projected posterior -------------------------------------------------------------------
def test_projected_validation_grid_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = _problem()
    post = ProjectedPosterior(model, "classification").fit(data)

    def nll_min_at(best: float):
        return lambda model, deltas, loader, grid, **kw: [(math.log(a / best)) ** 2 for a in grid]

    monkeypatch.setattr(projected, "validation_nll", nll_min_at(50.0))
    with pytest.warns(RuntimeWarning, match=r"projected prior precision \(validation NLL\) 10"):
        post.optimize_prior_precision("validation", val_loader=data, grid=[1.0, 10.0])
    assert post.tuning["at_edge"] is True and post.tuning["edge"] == "high"
    with quiet():
        alpha = post.optimize_prior_precision("validation", val_loader=data, grid=[1.0, 50.0, 99.0])
    assert alpha == 50.0 and post.tuning["at_edge"] is False and post.tuning["nll"][1] == 0
    with quiet():
        post.optimize_prior_precision("evidence")
    assert post.tuning == {"method": "marglik"}  # closed form, no search


# ---- temperature scaling -------------------------------------------------------------------
def test_temperature_at_its_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    vnet = VariationalModel(nn.Sequential(nn.Linear(4, 3)), init=False)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    gen = torch.Generator().manual_seed(0)
    # an NLL that keeps falling as T → 0 (a validation set classified perfectly)
    monkeypatch.setattr(temperature_module, "sampled_nll", lambda logits, y, t: t)
    with pytest.warns(RuntimeWarning, match=r"temperature 0\.05 is at the bottom"):
        t = fit_temperature(vnet, x, y, 2, prior_std=None, generator=gen)
    assert t == pytest.approx(0.05, rel=1e-2) and vnet.temperature_tuning["edge"] == "low"
    monkeypatch.setattr(temperature_module, "sampled_nll", lambda logits, y, t: math.log(t) ** 2)
    with quiet():
        t = fit_temperature(vnet, x, y, 2, prior_std=None, generator=gen)
    assert t == pytest.approx(1.0, abs=1e-2) and vnet.temperature_tuning["at_edge"] is False


# ---- experiments' grids --------------------------------------------------------------------
def test_continual_strength_grid_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    def one_run(method, beta, init, tasks, s):
        row = {k: 0.0 for k in continual.GRID_KEYS}
        return {**row, "strength": beta, "val_average_accuracy": -abs(math.log10(beta) - 2)}

    monkeypatch.setattr(continual, "_one_run", one_run)
    s = continual.ContinualSettings(strengths=(1.0, 10.0))
    with pytest.warns(RuntimeWarning, match="diagonal prior strength β 10 is at the top"):
        row = continual.run_method("diagonal", nn.Linear(1, 1), [], s)
    assert row["strength"] == 10.0 and row["searches"]["strength"]["edge"] == "high"
    s = continual.ContinualSettings(strengths=(1.0, 100.0, 1e4))
    with quiet():
        row = continual.run_method("kronecker", nn.Linear(1, 1), [], s)
    assert row["strength"] == 100.0 and row["searches"]["strength"]["at_edge"] is False


def test_bound_grid_edges() -> None:
    family = {"grid": [(i, {"lambda": v}) for i, v in enumerate((0.1, 1.0, 10.0))]}
    with pytest.warns(RuntimeWarning, match="isotropic prior lambda 10 is at the top"):
        edges = bound.grid_edges("isotropic", family, (1.0, 0.5, 0.1), {"lambda": 10.0, "tau": 0.5})
    assert edges["lambda"]["edge"] == "high" and edges["tau"]["at_edge"] is False
    with quiet():
        out = pac_bayes_bound(0.1, 1000, 40.0, 2000, 0.05)
    assert out["catoni_c_search"]["at_edge"] is False


# ---- compare: results.json and the printed report --------------------------------------------
def test_compare_records_and_reports_edges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nll(monkeypatch, best=1e30)  # validation keeps improving: the search hits its limit
    settings = CompareSettings(
        methods=("map", "laplace_last_layer"),
        epochs=2,
        lr=0.01,
        n_train=150,
        n_samples=2,
        model_options={"width": 8},
        progress=False,
        out=str(tmp_path / "run"),
    )
    with pytest.warns(RuntimeWarning, match=r"Laplace prior precision \(validation NLL\)"):
        results = run_compare(settings)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    searches = saved["methods"]["laplace_last_layer"]["searches"]
    assert set(searches) == {"prior_precision_marglik", "prior_precision_validation"}
    assert searches["prior_precision_validation"]["at_edge"] is True
    assert searches["prior_precision_validation"]["edge"] == "high"
    assert searches["prior_precision_marglik"]["at_edge"] is False
    notes = search_notes(results)
    assert len(notes) == 1 and notes[0].startswith(
        "- laplace_last_layer (prior_precision_validation): WARNING Laplace prior"
    )
    assert "the posterior may predict like MAP" in notes[0]
    assert notes[0] in (tmp_path / "run" / "report.md").read_text()
