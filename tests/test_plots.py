"""Tests for tacitbayes.plots: valid image files, atomic saves, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from tacitbayes import metrics, plots
from tacitbayes.errors import InputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _problem(seed: int, n: int = 200, c: int = 4, temp: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    probs = (torch.randn(n, c, generator=g) * 3.0 / temp).softmax(dim=1)
    labels = torch.randint(0, c, (n,), generator=g)
    return probs, labels


def _only(directory: Path, name: str) -> None:
    assert sorted(p.name for p in directory.iterdir()) == [name]


def test_reliability_diagram_writes_png(tmp_path: Path) -> None:
    target = tmp_path / "rel.png"
    p2, y2 = _problem(1, temp=3.0)
    out = plots.reliability_diagram(
        {"map": _problem(0), "laplace": metrics.reliability_bins(p2, y2, n_bins=10)},
        target,
        title="test",
    )
    assert out == target
    assert target.read_bytes()[:8] == PNG_MAGIC
    _only(tmp_path, "rel.png")


def test_reliability_diagram_overwrites_and_makes_dirs(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "dir" / "rel.png"
    bins = {"confidence": [0.3, 0.9], "accuracy": [0.2, 0.95], "count": [5, 10]}  # no edges/ece
    plots.reliability_diagram({"a": bins}, str(target))
    first = target.read_bytes()
    plots.reliability_diagram({"a": _problem(2)}, target)
    assert target.read_bytes()[:8] == PNG_MAGIC and target.read_bytes() != first
    _only(target.parent, "rel.png")


def test_line_plot_writes_png(tmp_path: Path) -> None:
    target = tmp_path / "curve.png"
    out = plots.line_plot(
        {"ivon": ([1, 10, 100], [0.5, 0.3, 0.2]), "sgd": (torch.tensor([1.0, 10.0]), [0.6, 0.4])},
        target,
        xlabel="epochs",
        ylabel="nll",
        title="t",
        logx=True,
        logy=True,
        hlines={"baseline": 0.25},
    )
    assert out == target and target.read_bytes()[:8] == PNG_MAGIC
    _only(tmp_path, "curve.png")


def test_pdf_suffix_gives_pdf(tmp_path: Path) -> None:
    target = tmp_path / "curve.pdf"
    plots.line_plot({"a": ([0, 1], [0, 1])}, target, "x", "y")
    assert target.read_bytes()[:5] == b"%PDF-"
    _only(tmp_path, "curve.pdf")


def test_failed_save_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.line_plot({"a": ([0, 1], [0, 1])}, tmp_path / "x.png", "x", "y")
    with pytest.raises(RuntimeError, match="disk full"):
        plots.reliability_diagram({"a": _problem(0)}, tmp_path / "r.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "curves",
    [
        {},
        {"a": "nonsense"},
        {"a": (torch.tensor([[0.5, 0.6]]), torch.tensor([0]))},  # rows do not sum to 1
        {"a": {"confidence": [0.5], "accuracy": [0.5]}},  # no count
        {"a": {"confidence": [0.5], "accuracy": [0.5, 0.6], "count": [1]}},
        {"a": {"confidence": [0.5], "accuracy": [0.5], "count": [0]}},
    ],
)
def test_reliability_diagram_bad_input(tmp_path: Path, curves) -> None:
    with pytest.raises(InputError):
        plots.reliability_diagram(curves, tmp_path / "r.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"series": {}},
        {"series": {"a": ([0, 1], [0, 1, 2])}},
        {"series": {"a": ([], [])}},
        {"series": {"a": [0, 1]}},
        {"series": {"a": ([0, 1], [1, 2])}, "logx": True},
        {"series": {"a": ([1, 2], [-1, 2])}, "logy": True},
        {"series": {"a": ([1, 2], [1, 2])}, "hlines": {"bad": float("nan")}},
        {"series": {"a": ([1, 2], [1, 2])}, "path_name": "x.notaformat"},
    ],
)
def test_line_plot_bad_input(tmp_path: Path, kwargs) -> None:
    name = kwargs.pop("path_name", "x.png")
    with pytest.raises(InputError):
        plots.line_plot(path=tmp_path / name, xlabel="x", ylabel="y", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_heatmap_writes_png(tmp_path: Path) -> None:
    target = tmp_path / "r.png"
    matrix = [[0.9, 0.5, float("nan")], [0.1, 1.0, 0.7]]
    out = plots.heatmap(matrix, target, ["a", "b"], ["x", "y", "z"], "after", "task", "t")
    assert out == target and target.read_bytes()[:8] == PNG_MAGIC
    plots.heatmap(torch.rand(3, 3), target, "abc", "abc", vmin=-1.0, vmax=2.0, fmt="{:.1f}")
    _only(tmp_path, "r.png")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"matrix": [1.0, 2.0], "rows": "a", "cols": "ab"},
        {"matrix": [[]], "rows": "a", "cols": ""},
        {"matrix": [[1.0, 2.0]], "rows": "ab", "cols": "ab"},
        {"matrix": [[float("inf")]], "rows": "a", "cols": "a"},
        {"matrix": [["x"]], "rows": "a", "cols": "a"},
        {"matrix": [[0.5]], "rows": "a", "cols": "a", "vmin": 1.0, "vmax": 0.0},
    ],
)
def test_heatmap_bad_input(tmp_path: Path, kwargs) -> None:
    rows, cols = kwargs.pop("rows"), kwargs.pop("cols")
    with pytest.raises(InputError):
        plots.heatmap(path=tmp_path / "r.png", row_labels=rows, col_labels=cols, **kwargs)
    assert list(tmp_path.iterdir()) == []
