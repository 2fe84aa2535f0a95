"""`tacitbayes continual`: accuracy-matrix arithmetic, a tiny end-to-end run, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tacitbayes import cli
from tacitbayes.data import load_dataset, split_tasks
from tacitbayes.errors import InputError
from tacitbayes.experiments.continual.run import (
    ContinualSettings,
    average_accuracy,
    backward_transfer,
    forgetting,
    seen_average,
    summarize,
)
from tacitbayes.experiments.continual.sequence import TaskView, local_labels

pytestmark = pytest.mark.usefixtures("one_thread")

# R[i][j]: accuracy on task i after training task j (upper triangle: tasks not yet trained)
R = [
    [0.9, 0.8, 0.6],
    [0.1, 1.0, 0.7],
    [0.2, 0.3, 0.95],
]


def test_metrics_on_a_hand_made_matrix() -> None:
    assert average_accuracy(R) == pytest.approx((0.6 + 0.7 + 0.95) / 3)
    # task 0: max(0.9, 0.8) − 0.6; task 1: max(1.0) − 0.7 (R[1][0] precedes training task 1)
    assert forgetting(R) == pytest.approx(((0.9 - 0.6) + (1.0 - 0.7)) / 2)
    assert backward_transfer(R) == pytest.approx(((0.6 - 0.9) + (0.7 - 1.0)) / 2)
    assert seen_average(R) == pytest.approx([0.9, 0.9, (0.6 + 0.7 + 0.95) / 3])
    # a task that improves later has negative forgetting and positive transfer
    up = [[0.5, 0.7], [0.0, 0.9]]
    assert forgetting(up) == pytest.approx(-0.2) and backward_transfer(up) == pytest.approx(0.2)
    one = summarize([[0.8]])
    assert one["forgetting"] is None and one["backward_transfer"] is None
    assert one["average_accuracy"] == 0.8
    with pytest.raises(InputError, match="square"):
        summarize([[0.1, 0.2]])


def test_task_view_masks_logits_and_labels() -> None:
    net = nn.Linear(3, 10)
    view = TaskView(net, (7, 2))
    x = torch.randn(4, 3)
    torch.testing.assert_close(view(x), net(x)[:, [7, 2]])
    assert [n for n, _ in view.named_parameters()] == ["net.weight", "net.bias"]
    data = local_labels(
        torch.utils.data.TensorDataset(x, torch.tensor([2, 7, 7, 2])), view.task_classes
    )
    assert data.tensors[1].tolist() == [1, 0, 0, 1]
    with pytest.raises(InputError):
        local_labels(torch.utils.data.TensorDataset(x, torch.tensor([2, 7, 3, 2])), (7, 2))


def test_tiny_run_writes_schema_and_files(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cl"
    argv = ["continual", "--groups", "0,1;2,3", "--epochs", "1", "--width", "16"]
    argv += ["--strengths", "1,100", "--no-progress", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "finetune" in printed and "kronecker" in printed and "forgetting" in printed
    results = json.loads((out / "results.json").read_text())
    assert (results["dataset"], results["sequence"], results["scenario"]) == (
        "digits",
        "split",
        "task",
    )
    assert [t["classes"] for t in results["tasks"]] == [[0, 1], [2, 3]]
    assert results["device"] == "cpu" and results["settings"]["device"] == "cpu"
    assert set(results["methods"]) == {"finetune", "diagonal", "kronecker"}
    first = None
    for name, row in results["methods"].items():
        matrix = row["accuracy_matrix"]
        assert len(matrix) == 2 and all(len(r) == 2 for r in matrix)
        assert all(0 <= v <= 1 for r in matrix for v in r)
        assert row["average_accuracy"] == pytest.approx(average_accuracy(matrix))
        assert row["forgetting"] == pytest.approx(forgetting(matrix))
        assert row["backward_transfer"] == pytest.approx(backward_transfer(matrix))
        assert len(row["seen_average"]) == 2 and row["seconds"] >= 0
        # task 1 is trained identically by every method (same init, prior N(0, δ⁻¹I), batches)
        column = [r[0] for r in matrix]
        assert first is None or column == first, name
        first = column
        assert (out / f"accuracy_{name}.png").stat().st_size > 1000
    assert results["methods"]["finetune"]["strength"] is None
    for name in ("diagonal", "kronecker"):
        row = results["methods"][name]
        assert [g["strength"] for g in row["grid"]] == [1.0, 100.0]
        best = max(row["grid"], key=lambda g: g["val_average_accuracy"])
        assert row["strength"] == best["strength"]
    assert results["methods"]["diagonal"]["curvature"].startswith("exact GGN diagonal")
    assert (out / "seen_average.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "| kronecker |" in report and "task \\ after" in report


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--methods", "finetune,ewc"], "unknown method 'ewc'"),
        (["--groups", "0,1;1,2"], "class 1 of group 1 appears also in group 0"),
        (["--groups", "0,1;2,12"], "outside"),
        (["--groups", "0,a"], "--groups"),
        (["--dataset", "cifar"], "unknown dataset"),
        (["--scenario", "domain"], "unknown scenario"),
        (["--sequence", "rotated", "--groups", "0,1"], "groups apply to the split"),
        (["--strengths", "1,-1"], "--strengths"),
        (["--diagonal-curvature", "fisher"], "unknown diagonal curvature"),
        (["--epochs", "0"], "--epochs"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv: list[str], match: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bad"
    code = cli.main(["continual", "--epochs", "1", "--no-progress", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert match in err
    assert not out.exists()


def test_settings_defaults() -> None:
    s = ContinualSettings().resolved()
    assert s.groups == ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)) and s.angles is None
    assert (s.epochs, s.batch_size, s.width) == (20, 32, 128)
    f = ContinualSettings(dataset="fashion-mnist", sequence="rotated").resolved()
    assert f.angles == (0.0, 30.0, 60.0, 90.0, 120.0) and f.groups is None
    assert (f.epochs, f.batch_size, f.width) == (3, 128, 256)
    with pytest.raises(InputError, match="distinct"):
        ContinualSettings(methods=("diagonal", "diagonal")).resolved()
    with pytest.raises(InputError, match="at least one method"):
        ContinualSettings(methods=()).resolved()


def test_split_of_digits_has_five_balanced_tasks() -> None:
    tasks = split_tasks(load_dataset("digits", ood=False), ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)))
    assert all(200 < len(t.train) < 300 and len(t.test) > 50 for t in tasks)
