"""`tacitbayes bound`: a quick end-to-end run, its outputs, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tacitbayes import cli
from tacitbayes.experiments.bound import cli as bound_cli
from tacitbayes.experiments.bound.run import FAMILIES, BoundSettings
from tacitbayes.experiments.cli_types import OneLineErrorParser

pytestmark = pytest.mark.usefixtures("one_thread")


def test_quick_run_writes_results_report_and_plot(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bound"
    assert cli.main(["bound", "--quick", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "learned" in printed and "kl-inverse" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "digits" and results["model"] == "mlp"
    assert results["device"] == "cpu" and results["settings"]["device"] == "cpu"
    assert results["source_classes"] == [0, 1, 2, 3, 4] and results["n_target"] > 100
    assert set(results["priors"]) == set(FAMILIES)
    for name, row in results["priors"].items():
        for key in ("test_error", "map_test_error", "mc_risk", "emp_risk_upper", "kl"):
            assert isinstance(row[key], float), (name, key)
        assert row["mc_draws"] == 2 * results["n_target"]
        assert row["emp_risk_upper"] >= row["mc_risk"]
        for key in ("mcallester", "catoni", "kl_inverse"):
            assert row[key] >= row["emp_risk_upper"], (name, key)
        assert row["kl_inverse"] <= 1 and row["kl"] >= 0
        assert row["prior_independence"] == "verified"
        # β ∈ {0, 1} on every layer or on the hidden layers alone: 3 options per α
        assert row["grid_size"] == (6 if name == "learned" else 2)
    learned = results["priors"]["learned"]["hyperparameters"]
    assert set(learned) == {"alpha", "beta", "beta_output", "tau"}
    # the KL profile over β at the chosen α, τ: its row at the chosen β is the bound's KL
    profile = results["priors"]["learned"]["beta_profile"]
    assert [(r["beta"], r["beta_output"]) for r in profile] == [(0.0, 0.0), (1.0, 1.0), (1.0, 0.0)]
    for r in profile:
        assert r["kl"] == pytest.approx(r["mahalanobis"] + r["rest"]) and r["mahalanobis"] >= 0
    (chosen,) = [
        r
        for r in profile
        if (r["beta"], r["beta_output"]) == (learned["beta"], learned["beta_output"])
    ]
    assert chosen["kl"] == pytest.approx(results["priors"]["learned"]["kl"], rel=1e-9)
    assert "KL(Q‖P) against β" in (out / "report.md").read_text()
    assert results["checks"]["bounds_above_mc_risk"]
    assert (out / "report.md").read_text().startswith("# tacitbayes bound")
    assert (out / "bounds.png").stat().st_size > 1000


def _parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog="tacitbayes")
    sub = parser.add_subparsers(dest="command", parser_class=OneLineErrorParser)
    bound_cli.add_subparser(sub)
    return parser


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--delta", "1.5"], "--delta"),
        (["--source-classes", "0,11"], "--source-classes"),
        (["--kind", "pinsker"], "--kind"),
        (["--alphas", "1,-2"], "--alphas"),
        (["--betas", "0,-1"], "--betas"),
        (["--mc-samples", "0"], "--mc-samples"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv: list[str], match: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["bound", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert len(err.strip().splitlines()) == 1 and match in err, err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--source-classes", "0,1", "--target-classes", "1,2"], "overlap"),
        (["--source-classes", "0,1", "--target-classes", "2"], "same number of classes"),
        (["--dataset", "cifar"], "unknown dataset"),
        (["--model", "resnet"], "bound supports the models"),
    ],
)
def test_bad_settings_fail_cleanly(argv: list[str], match: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert cli.main(["bound", "--quick", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert match in err, err
    assert not out.exists()


def test_settings_fill_defaults() -> None:
    s = BoundSettings(dataset="fashion-mnist").resolved()
    assert s.width == 256 and s.rounds == 3 and s.mc_samples == 10 and s.alphas is None
    assert len(s.lambdas) == 17 and s.threads == 1
    q = BoundSettings(quick=True).resolved()
    assert q.rounds == 1 and q.epochs == 3 and q.taus == (1.0, 0.1)


def test_a_task_whose_classes_exceed_the_labels_present_keeps_the_ones_there() -> None:
    import torch
    from torch.utils.data import TensorDataset

    from tacitbayes.experiments.bound.run import _task

    data = TensorDataset(torch.arange(4.0)[:, None], torch.tensor([0, 3, 5, 3]))
    x, y = _task(data, (5, 9, 3), "training").tensors  # no 9 among the labels: found by fuzzing
    assert x.flatten().tolist() == [1.0, 2.0, 3.0] and y.tolist() == [2, 0, 2]


def test_betas_may_hold_zero_the_isotropic_limit() -> None:
    args = _parser().parse_args(["bound", "--betas", "0,0.1,1", "--rounds", "3"])
    assert args.betas == (0.0, 0.1, 1.0) and args.rounds == 3
    from tacitbayes.experiments.bound.run import _beta_options

    options = _beta_options(2.0, args.betas)  # β = 0 once; β > 0 on all layers or hidden only
    assert [(o["beta"], o["beta_output"]) for o in options] == [
        (0.0, 0.0),
        (0.1, 0.1),
        (0.1, 0.0),
        (1.0, 1.0),
        (1.0, 0.0),
    ]
    assert all(o["alpha"] == 2.0 for o in options)
