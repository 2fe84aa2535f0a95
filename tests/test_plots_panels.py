"""Small-multiple plots: files are written, bad input is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tacitbayes import plots_panels
from tacitbayes.errors import InputError


def _probs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, 4, generator=gen), -1), torch.randint(
        0, 4, (n,), generator=gen
    )


def _png(path: Path) -> bool:
    return path.read_bytes()[:4] == b"\x89PNG"


def test_every_panel_plot_writes_a_png(tmp_path: Path) -> None:
    curves = {f"m{i}": _probs(200, i) for i in range(5)}  # 5 methods: two rows of panels
    assert _png(plots_panels.reliability_grid(curves, tmp_path / "r.png", title="t"))
    scores = {n: (p.max(-1).values, p.max(-1).values * 0.8) for n, (p, _) in curves.items()}
    out = plots_panels.histogram_grid(scores, tmp_path / "h.png", "confidence", notes={"m0": "x"})
    assert _png(out)
    lines = {"accuracy": {"a": ([0, 15], [0.9, 0.8])}, "NLL": {"a": ([0, 15], [0.3, 0.5])}}
    assert _png(plots_panels.metric_panels(lines, tmp_path / "s.png", "rotation"))
    bars = {"nll": {"a": 0.3, "b": 0.25}, "accuracy": {"a": 0.9, "b": 0.91}}
    assert _png(plots_panels.metric_bars(bars, tmp_path / "b.png", better={"nll": "lower"}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "h.png", "r.png", "s.png"]


def test_bad_inputs_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="non-empty mapping"):
        plots_panels.reliability_grid({}, tmp_path / "r.png")
    with pytest.raises(InputError, match="pair"):
        plots_panels.histogram_grid({"a": torch.ones(3)}, tmp_path / "h.png", "x")
    with pytest.raises(InputError, match="differ in length"):
        plots_panels.metric_panels({"acc": {"a": ([0, 1], [1])}}, tmp_path / "s.png", "x")
    assert not any(tmp_path.iterdir())
