"""The `projected` and `loss_projected` compare methods, end to end on a small digits run."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tacitbayes import metrics
from tacitbayes.data import load_dataset
from tacitbayes.experiments.compare.run import CompareSettings, _load_weights, run_compare
from tacitbayes.models import build_model


def test_projected_methods_in_compare(tmp_path: Path) -> None:
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
        # every training example, to the default residual, with the dense kernel solver
        assert row["n_fit"] == 300 and row["solver"] == "gram"
        assert 0 <= row["null_space_residual"] <= 1e-3
        assert row["prior_precision"] == row["evidence_prior_precision"] > 0
        assert row["validation_prior_precision"] > 0
        for score in ("ood_auroc", "ood_auroc_entropy", "ood_auroc_mi", "ood_auroc_variance"):
            assert 0 <= row[score] <= 1
        assert row["map_distance"] > 0
    assert "ood_auroc_mi" not in saved["methods"]["map"]  # MAP has no samples
    assert saved["methods"]["map"]["map_distance"] == 0
    # the training-set figures of every method, against MAP's own recomputed here
    data = load_dataset("digits", n_train=300)
    model = build_model("mlp", data.input_shape, data.n_classes, width=32)
    _load_weights(model, str(tmp_path / "run" / "map.pt"))
    model.eval()
    x, y = data.train.tensors
    with torch.no_grad():
        p_map = torch.softmax(model(x), -1).double()
    assert abs(saved["methods"]["map"]["train_nll"] - metrics.nll(p_map, y)) < 1e-6
    assert saved["methods"]["map"]["train_map_distance"] == 0
    # the null-space posterior keeps MAP's training predictions; the loss-gradient one need not
    row, map_row = saved["methods"]["projected"], saved["methods"]["map"]
    assert 0 < row["train_map_distance"] < 1e-3
    assert abs(row["train_nll"] - map_row["train_nll"]) < 1e-3
    assert row["train_accuracy"] == map_row["train_accuracy"]
    assert saved["methods"]["loss_projected"]["train_map_distance"] > 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Verdicts" in report and "**projected**" in report and "variance" in report
    assert (
        results["methods"]["projected"]["accuracy"] >= results["methods"]["map"]["accuracy"] - 0.02
    )
