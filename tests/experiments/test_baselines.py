"""The compare baselines: MAP with temperature scaling and a deep ensemble."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tacitbayes.calibration import fit_logit_temperature
from tacitbayes.data import load_dataset
from tacitbayes.experiments.compare import method_baselines
from tacitbayes.experiments.compare.registry import FitContext
from tacitbayes.experiments.compare.run import CompareSettings, run_compare
from tacitbayes.models import build_model
from tacitbayes.training import TrainConfig, train_map


@pytest.fixture(scope="module")
def ctx() -> FitContext:
    data = load_dataset("digits", n_train=200, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.n_classes, width=16)
    config = TrainConfig(epochs=2, lr=0.01, progress=False)
    train_map(model, data.train, config)
    return FitContext(model, data, config, "mlp", {"width": 16}, n_samples=4, progress=False)


def test_map_temperature_is_the_validation_fit(ctx: FitContext) -> None:
    predictor = method_baselines.fit_map_temperature(ctx)
    val_x, val_y = ctx.data.val.tensors
    x = ctx.data.test.tensors[0][:50]
    with torch.no_grad():
        t, _ = fit_logit_temperature(ctx.model(val_x), val_y)
        expected = torch.softmax(ctx.model(x) / t, -1)
    assert predictor.info["temperature"] == t != 1.0
    torch.testing.assert_close(predictor.predict(x), expected)


def test_ensemble_averages_independently_trained_members(ctx, monkeypatch) -> None:
    monkeypatch.setattr(method_baselines, "ENSEMBLE_SIZE", 3)
    predictor = method_baselines.fit_ensemble(ctx)
    members = predictor.members
    assert len(members) == 3 and members[0] is ctx.model
    assert predictor.info["member_seeds"] == [0, 1000, 2000]
    first = [next(m.parameters()) for m in members]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    x = ctx.data.test.tensors[0][:50]
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(x), -1) for m in members]).mean(0)
    torch.testing.assert_close(predictor.predict(x), mean)
    assert predictor.predict_samples(x).shape == (3, 50, ctx.data.n_classes)


def test_compare_reports_verdicts_against_both_baselines(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(method_baselines, "ENSEMBLE_SIZE", 2)
    out = tmp_path / "run"
    settings = CompareSettings(
        methods=("map", "map_temperature", "ensemble", "laplace_last_layer"),
        epochs=3,
        lr=0.01,
        n_train=300,
        model_options={"width": 32},
        n_samples=4,
        out=str(out),
        progress=False,
    )
    run_compare(settings)
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["methods"]) == ["map", "map_temperature", "ensemble", "laplace_last_layer"]
    report = (out / "report.md").read_text()
    verdicts = report[report.index("## Verdicts") : report.index("## Results")]
    assert "Best baseline (lowest test NLL): **" in verdicts
    assert "- **laplace_last_layer**: " in verdicts and "(best baseline)" in verdicts
    # the sampled methods' sample effect: recorded, tabulated; MAP has no samples
    rows = saved["methods"]
    assert "sample_effect" not in rows["map"]
    for name in ("ensemble", "laplace_last_layer"):
        assert 0 <= rows[name]["sample_effect"] < 1 and 0 <= rows[name]["sample_effect_ood"] < 1
    assert "Sample effect: mean total-variation distance" in report
    for plot in ("reliability.png", "ood_histograms.png", "shift.png", "metrics.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
        assert f"]({plot})" in report
