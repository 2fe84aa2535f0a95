"""The compare methods laplace_diag / laplace_kron / laplace_last_layer run end to end on digits."""

from __future__ import annotations

from pathlib import Path

import pytest

from tacitbayes.experiments.compare import registry as methods
from tacitbayes.experiments.compare.run import CompareSettings, run_compare

NAMES = ("laplace_diag", "laplace_kron", "laplace_last_layer")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_laplace_methods_on_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modules = (*methods.METHOD_MODULES, "tacitbayes.experiments.compare.method_laplace")
    monkeypatch.setattr(methods, "METHOD_MODULES", tuple(dict.fromkeys(modules)))
    settings = CompareSettings(
        methods=("map", *NAMES),
        epochs=5,
        lr=0.01,
        batch_size=32,
        n_train=200,
        n_samples=4,
        model_options={"width": 16},
        progress=False,
        out=str(tmp_path / "run"),
    )
    results = run_compare(settings)
    rows = results["methods"]
    for name in NAMES:
        row = rows[name]
        assert abs(row["accuracy"] - rows["map"]["accuracy"]) < 0.05
        assert row["prior_precision"] > 0 and row["log_marginal_likelihood"] < 0
        assert row["val_nll_validation"] <= row["val_nll_marglik"] + 1e-12
        assert row["prior_precision_init"] == pytest.approx(200 * 1e-4)
        assert row["curvature_seconds"] >= 0 and row["n_curvature_examples"] == 200
    assert rows["laplace_last_layer"]["n_posterior_params"] == 16 * 10 + 10
    assert (tmp_path / "run" / "results.json").is_file()
