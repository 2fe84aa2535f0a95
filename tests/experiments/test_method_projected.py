"""The `projected` and `loss_projected` compare methods, end to end on a small digits run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tacitbayes.experiments import method_projected
from tacitbayes.experiments.compare import CompareSettings, run_compare


def test_projected_methods_in_compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(method_projected, "FIT_SUBSET", 200)
    monkeypatch.setattr(method_projected, "MAX_ITERS", 15)
    settings = CompareSettings(
        methods=("map", "projected", "loss_projected"),
        epochs=5,
        lr=0.01,
        n_train=300,
        model_options={"width": 32},
        n_samples=4,
        out=str(tmp_path / "run"),
        progress=False,
    )
    results = run_compare(settings)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    for name in ("projected", "loss_projected"):
        row = saved["methods"][name]
        assert row["n_fit"] == 200 and row["solver_iterations"] <= 15
        assert 0 < row["null_space_residual"] < 1
        assert row["prior_precision"] > 0 and row["evidence_prior_precision"] > 0
        # a posterior that cannot underfit: accuracy stays at MAP's level
        assert row["accuracy"] >= results["methods"]["map"]["accuracy"] - 0.02
