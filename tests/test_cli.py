"""The command line: help, a small end-to-end compare, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_fake_idx_dataset
from tacitbayes.cli import main
from tacitbayes.data import write_idx

SMALL = [
    "--methods",
    "map",
    "--n-train",
    "300",
    "--epochs",
    "5",
    "--lr",
    "0.01",
    "--width",
    "32",
    "--n-samples",
    "4",
    "--no-progress",
]


def _fails_cleanly(argv: list[str], capsys, out: Path, match: str) -> None:
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert match in err, err
    assert not out.exists() or not any(out.iterdir())


def test_help_lists_commands(capsys) -> None:
    assert main(["--help"]) == 0
    assert "compare" in capsys.readouterr().out
    assert main(["compare", "--help"]) == 0
    assert "--dataset" in capsys.readouterr().out


def test_compare_digits_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    before = torch.get_num_threads()
    assert main(["compare", *SMALL, "--threads", "1", "--device", "cpu", "--out", str(out)]) == 0
    assert torch.get_num_threads() == before  # the run's thread count is restored
    printed = capsys.readouterr().out
    assert "map" in printed and "accuracy" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "digits" and results["model"] == "mlp"
    assert results["torch_threads"] == 1 and results["settings"]["threads"] == 1
    assert results["device"] == "cpu" and results["settings"]["device"] == "cpu"
    assert results["n_params"] == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    row = results["methods"]["map"]
    for key in (
        "accuracy",
        "nll",
        "ece",
        "brier",
        "ood_auroc",
        "shift_accuracy",
        "fit_seconds",
        "predict_seconds",
    ):
        assert isinstance(row[key], float), key
    assert 0.5 < row["accuracy"] <= 1 and 0 <= row["ece"] <= 1
    report = (out / "report.md").read_text()
    assert report.startswith("# tacitbayes compare") and "\ndevice: cpu\n" in report
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == [
        "map.pt",
        "metrics.png",
        "ood_histograms.png",
        "reliability.png",
        "report.md",
        "results.json",
        "shift.png",
    ]


def test_resume_and_checkpoint(tmp_path: Path, capsys) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    base = ["compare", "--methods", "map", "--n-train", "300", "--width", "32", "--lr", "0.01"]
    base.append("--no-progress")
    assert main([*base, "--epochs", "4", "--out", str(full)]) == 0
    assert main([*base, "--epochs", "2", "--out", str(part)]) == 0
    assert main([*base, "--epochs", "4", "--resume", "--out", str(part)]) == 0
    a = json.loads((full / "results.json").read_text())["methods"]["map"]
    b = json.loads((part / "results.json").read_text())["methods"]["map"]
    history = json.loads((part / "results.json").read_text())["train_history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert main([*base, "--checkpoint", str(full / "map.pt"), "--out", str(tmp_path / "c")]) == 0
    c = json.loads((tmp_path / "c" / "results.json").read_text())["methods"]["map"]
    assert a["accuracy"] == c["accuracy"] and a["nll"] == c["nll"]
    assert b["nll"] != a["nll"]  # resumed from epoch 2 of a shorter schedule: a different run
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv, match",
    [
        (
            ["compare", "--dataset", "cifar"],
            "unknown dataset 'cifar'; available: digits, fashion-mnist, mnist",
        ),
        (["compare", "--model", "transformerxl"], "unknown model 'transformerxl'; available:"),
        (["compare", "--methods", "map,swag"], "unknown method 'swag'; available: map"),
        (["compare", "--epochs", "0"], "must be at least 1"),
        (["compare", "--epochs", "-3"], "must be at least 1"),
        (["compare", "--epochs", "many"], "expected an integer"),
        (["compare", "--lr", "-1"], "--lr: must be a positive number"),
        (["compare", "--optimizer", "lbfgs"], "unknown optimizer"),
        (["compare", "--model", "vae_mlp"], "vae_mlp is a generative model"),
        (
            ["compare", "--model", "lenet", "--width", "3"],
            "unknown option 'width' for model 'lenet'",
        ),
        (["compare", "--checkpoint", "/nonexistent/map.pt"], "not found"),
        (["compare", "--resume"], "cannot resume"),
        (["compare", "--bogus"], "unrecognized arguments"),
        (["compare", "--threads", "0"], "must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, match, tmp_path: Path, capsys) -> None:
    _fails_cleanly(argv, capsys, tmp_path / "out", match)


COMMANDS = ("compare", "linsys", "eos", "bound", "continual", "generative")


def _missing_devices() -> list[tuple[str, str]]:
    """Device names this machine lacks (a CUDA index past the last one always is)."""
    beyond = f"cuda:{torch.cuda.device_count()}"
    cases = [(beyond, f"tacitbayes: error: device '{beyond}' is not available")]
    if not torch.cuda.is_available():
        cases.append(("cuda", "tacitbayes: error: device 'cuda' is not available"))
    if not torch.backends.mps.is_available():
        cases.append(("mps", "tacitbayes: error: device 'mps' is not available"))
    return cases


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "device, match",
    [
        ("bogus", "argument --device: unknown device 'bogus'; available: cpu, cuda, cuda:N, mps"),
        ("cuda:x", "unknown device 'cuda:x'"),
        *_missing_devices(),
    ],
)
def test_unknown_or_missing_device_is_one_line_exit_2(
    command: str, device: str, match: str, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    _fails_cleanly([command, "--device", device, "--no-progress"], capsys, out, match)
    assert not out.exists()  # refused before any work: no output directory


def test_bad_data_files_fail_cleanly(tmp_path: Path, capsys) -> None:
    fm = ["compare", "--dataset", "fashion-mnist", "--no-progress"]
    _fails_cleanly(
        [*fm, "--data-dir", str(tmp_path / "missing")], capsys, tmp_path / "o1", "does not exist"
    )
    bad = write_fake_idx_dataset(tmp_path / "malformed")
    (bad / "train-labels-idx1-ubyte.gz").unlink()
    (bad / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (999).to_bytes(4, "big"))
    _fails_cleanly([*fm, "--data-dir", str(bad)], capsys, tmp_path / "o2", "malformed IDX file")
    labels = np.arange(120) % 10
    labels[0] = 10
    oor = write_fake_idx_dataset(tmp_path / "oor", label_values=labels)
    _fails_cleanly([*fm, "--data-dir", str(oor)], capsys, tmp_path / "o3", "labels out of range")
    nan = write_fake_idx_dataset(tmp_path / "nan")
    images = np.zeros((40, 28, 28), dtype=np.float32)
    images[0, 0, 0] = np.nan
    write_idx(nan / "t10k-images-idx3-ubyte.gz", images)
    _fails_cleanly([*fm, "--data-dir", str(nan)], capsys, tmp_path / "o4", "NaN")


def test_diverging_training_fails_cleanly(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["compare", *SMALL, "--optimizer", "sgd", "--lr", "1e30", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "non-finite training loss" in err and len(err.strip().splitlines()) == 1
    assert not (out / "results.json").exists()


def test_console_script_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tacitbayes.cli",
            "compare",
            "--dataset",
            "nope",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "tacitbayes: error: unknown dataset 'nope'; available: digits, fashion-mnist, mnist"
    )
    assert not (tmp_path / "o").exists()
