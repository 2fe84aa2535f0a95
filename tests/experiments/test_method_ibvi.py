"""``compare`` method ``ibvi`` on digits, registered through ``METHOD_MODULES``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tacitbayes.experiments.compare import registry as methods
from tacitbayes.experiments.compare.run import CompareSettings, run_compare

MODULE = "tacitbayes.experiments.compare.method_ibvi"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_ibvi_in_compare(tmp_path: Path, monkeypatch) -> None:
    if MODULE not in methods.METHOD_MODULES:
        monkeypatch.setattr(methods, "METHOD_MODULES", (*methods.METHOD_MODULES, MODULE))
    assert "ibvi" in methods.available_methods()
    settings = CompareSettings(
        dataset="digits",
        methods=("map", "ibvi"),
        epochs=8,
        batch_size=16,
        n_train=400,
        n_samples=4,
        lr=0.01,
        model_options={"width": 128},
        out=str(tmp_path / "run"),
        progress=False,
    )
    results = run_compare(settings)
    row = results["methods"]["ibvi"]
    for key in (
        "accuracy",
        "nll",
        "ece",
        "brier",
        "ood_auroc",
        "ood_auroc_mi",
        "ood_auroc_variance",
        "shift_accuracy",
        "fit_seconds",
    ):
        assert isinstance(row[key], float), key
    assert row["accuracy"] > 0.6  # far above chance (0.1) after a few hundred steps
    assert row["train_seconds"] > 0 and row["temperature"] > 0
    map_row = results["methods"]["map"]
    assert 0 < map_row["train_step_seconds"] <= map_row["fit_seconds"]
    assert row["train_time_ratio"] == pytest.approx(
        row["train_seconds"] / map_row["train_step_seconds"]
    )
    assert row["ibvi_rank"] == 8 and row["ibvi_parametrization"] == "sp"
    assert row["layers"] == ["5"]  # the last layer (chosen on validation NLL)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["methods"]["ibvi"]["accuracy"] == row["accuracy"]


def test_variational_layer_choices() -> None:
    from tacitbayes.errors import InputError
    from tacitbayes.experiments.compare.method_ibvi import variational_layers
    from tacitbayes.models import build_model

    model = build_model("mlp", (1, 8, 8), 10, width=16)
    assert variational_layers(model, "first_last") is None  # VariationalModel's default
    assert variational_layers(model, "last_two") == ["3", "5"]
    assert variational_layers(model, "last") == ["5"]
    with pytest.raises(InputError, match="first_last, last_two, last"):
        variational_layers(model, "middle")
