"""`compare` method "ivon": registered, trained from scratch, MC predictive, figures recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tacitbayes.cli import main
from tacitbayes.experiments.compare import registry as methods

MODULE = "tacitbayes.experiments.compare.method_ivon"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _ivon_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the method even before methods.METHOD_MODULES lists it."""
    if MODULE not in methods.METHOD_MODULES:
        monkeypatch.setattr(methods, "METHOD_MODULES", (*methods.METHOD_MODULES, MODULE))


def test_compare_map_and_ivon(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["compare", "--methods", "map,ivon", "--n-train", "300", "--epochs", "6"]
    argv += ["--width", "32", "--n-samples", "4", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    assert "ivon" in capsys.readouterr().out
    row = json.loads((out / "results.json").read_text())["methods"]["ivon"]
    for key in (
        "accuracy",
        "nll",
        "ece",
        "brier",
        "ood_auroc",
        "ood_auroc_mi",
        "ood_auroc_variance",
        "shift_accuracy",
    ):
        assert isinstance(row[key], float), key
    assert row["accuracy"] > 0.2  # 18 clipped steps on 300 digits: above chance (0.1)
    assert row["ivon"]["ess"] == 300.0 and row["ivon_epochs"] == 6
    assert row["time_ratio_vs_map"] > 0 and row["mc_samples_predict"] == 4


def test_predictor_is_a_probability_average() -> None:
    from tacitbayes.data import load_dataset
    from tacitbayes.experiments.compare.method_ivon import IvonSettings, train_ivon
    from tacitbayes.training import TrainConfig

    data = load_dataset("digits", n_train=100, ood=False)
    ctx = methods.FitContext(
        model=torch.nn.Identity(),
        data=data,
        train_config=TrainConfig(epochs=1, batch_size=50, progress=False),
        model_name="mlp",
        model_options={"width": 16},
        n_samples=3,
        progress=False,
    )
    model, opt, info = train_ivon(ctx, IvonSettings(lr=0.5))
    probs = methods.get_method("ivon")  # registered
    assert callable(probs)
    x = data.test.tensors[0][:7]
    p = opt.sampled_predict(model, x, 3)
    assert p.shape == (7, 10) and torch.allclose(p.sum(-1), torch.ones(7))
    assert info["ivon"]["lr"] == 0.5 and info["ivon_seconds_per_step"] > 0
