"""`tacitbayes eos`: a quick end-to-end run, its outputs, bad input, and the summaries."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tacitbayes import cli
from tacitbayes.experiments.eos.run import (
    EosSettings,
    _model_options,
    checks,
    run_eos,
    run_specs,
    summarize,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_quick_run_writes_results_report_and_plots(tmp_path: Path, capsys) -> None:
    out = tmp_path / "eos"
    assert cli.main(["eos", "--quick", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "gd" in printed and "final sharpness" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "digits" and results["model"] == "mlp"
    assert results["device"] == "cpu" and results["settings"]["device"] == "cpu"
    assert results["gd_threshold"] == pytest.approx(2 / results["lr"])
    assert set(results["runs"]) == {"gd", "vgd σ=0.03 Ns=1", "vgd σ=0.03 Ns=2", "ivon"}
    for name, run in results["runs"].items():
        assert not run["diverged"], name
        for key in ("final_sharpness", "ratio_to_gd_threshold", "test_accuracy", "seconds"):
            assert isinstance(run[key], float), (name, key)
        steps = [r["step"] for r in run["trajectory"]]
        assert steps == [0, 20, 40, 60]
        for rec in run["trajectory"]:
            assert {"step", "loss", "accuracy", "sharpness", "threshold"} <= set(rec)
            assert rec["sharpness"] > 0
    vgd = results["runs"]["vgd σ=0.03 Ns=1"]
    assert vgd["threshold"] < results["gd_threshold"]
    assert 0 < vgd["threshold_reference"] < vgd["threshold"]
    assert "preconditioned_sharpness" in results["runs"]["ivon"]["trajectory"][0]
    assert "vgd_below_gd" in results["checks"]
    report = (out / "report.md").read_text()
    assert "| gd |" in report and "h_crit" in report and "## Checks" in report
    for png in ("sharpness.png", "loss.png", "ivon.png"):
        assert (out / png).stat().st_size > 1000


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--dataset", "cifar"], "unknown dataset"),
        (["--model", "vae_mlp"], "eos supports the models"),
        (["--sigmas", "0.1,-1"], "--sigmas"),
        (["--n-samples", "0"], "--n-samples"),
        (["--tail", "1.5"], "--tail"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv: list[str], match: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bad"
    code = cli.main(["eos", "--quick", "--no-progress", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert match in err
    assert not out.exists()


def test_settings_defaults_and_run_grid() -> None:
    s = EosSettings(dataset="fashion-mnist").resolved()
    assert (s.lr, s.steps, s.n_train, s.sigmas, s.n_samples) == (
        0.04,
        1500,
        2000,
        (0.003, 0.01),
        (1, 4),
    )
    names = [r["name"] for r in run_specs(s)]
    assert names[0] == "gd" and names[-1] == "ivon" and len(names) == 6
    assert EosSettings(quick=True).resolved().steps == 60


def test_resnet_options_and_a_quick_resnet_run(tmp_path: Path) -> None:
    s = EosSettings(model="resnet").resolved()
    assert _model_options(s) == {
        "channels": (8, 16),
        "blocks": 1,
        "norm_groups": 8,
        "activation": "tanh",
    }
    assert _model_options(EosSettings(model="resnet", width=12, depth=3).resolved()) == {
        "channels": (12, 24, 48),
        "blocks": 1,
        "norm_groups": 4,
        "activation": "tanh",
    }
    quick = EosSettings(
        model="resnet", quick=True, steps=20, record_every=10, n_samples=(1,), ivon=False
    )
    results = run_eos(replace(quick, out=str(tmp_path / "eos"), progress=False))
    assert results["model"] == "resnet" and results["model_options"]["channels"] == (4, 8)
    assert set(results["runs"]) == {"gd", "vgd σ=0.03 Ns=1"}
    assert all(len(r["trajectory"]) == 3 for r in results["runs"].values())


def test_summary_and_checks_on_a_synthetic_trajectory() -> None:
    traj = [
        {
            "step": t,
            "sharpness": 10.0 + t / 10,
            "loss": 1.0 / (t + 1),
            "accuracy": 0.5,
            "threshold": 9.0,
        }
        for t in range(0, 101, 10)
    ]
    summary = summarize(traj, steps=100, tail=0.3, lr=0.1)
    assert summary["final_sharpness"] == pytest.approx((17 + 18 + 19 + 20) / 4)
    assert summary["ratio_to_gd_threshold"] == pytest.approx(summary["final_sharpness"] / 20)
    assert summary["threshold"] == 9.0 and summary["tail_records"] == 4
    runs = {
        "gd": {"kind": "gd", "final_sharpness": 19.5},
        "a": {"kind": "vgd", "sigma": 0.01, "n_samples": 1, "final_sharpness": 15.0},
        "b": {"kind": "vgd", "sigma": 0.03, "n_samples": 1, "final_sharpness": 6.0},
        "c": {"kind": "vgd", "sigma": 0.01, "n_samples": 4, "final_sharpness": 17.0},
        "d": {"kind": "vgd", "sigma": 0.03, "n_samples": 4, "final_sharpness": 9.0},
    }
    result = checks(runs, EosSettings(lr=0.1))
    assert result["gd_within_10pct_of_2_over_lr"] and result["vgd_below_gd"]
    assert result["lower_for_larger_sigma"] and result["lower_for_fewer_samples"]
    runs["d"]["final_sharpness"] = 5.0
    assert not checks(runs, EosSettings(lr=0.1))["lower_for_fewer_samples"]
