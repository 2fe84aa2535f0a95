"""Small-multiple plots: one panel per method, so that methods never overlay into a tangle.

* :func:`reliability_grid`: a reliability diagram per method (accuracy against confidence,
  the diagonal, ECE in the panel title, bin counts as a faint histogram);
* :func:`histogram_grid`: per method, the histograms of a score on two sets (in
  distribution vs OOD), with the AUROC in the title;
* :func:`metric_panels`: one line panel per metric (e.g. accuracy and NLL against the
  rotation angle), one line per method, one shared legend;
* :func:`metric_bars`: one bar panel per headline metric, one bar per method.

Written like :mod:`tacitbayes.plots` (Agg canvas, atomic files).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tacitbayes.errors import InputError
from tacitbayes.plots import _as_1d, _bins_for, save_figure

__all__ = ["histogram_grid", "metric_bars", "metric_panels", "reliability_grid"]


def _grid(n: int, width: float = 2.6, height: float = 2.5, cols: int = 4) -> tuple[Figure, list]:
    """A figure with n panels, at most ``cols`` a row; unused panels hidden."""
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _check_mapping(value: Any, what: str) -> None:
    if not isinstance(value, Mapping) or len(value) == 0:
        raise InputError(f"{what} must be a non-empty mapping of method name -> values")


def reliability_grid(
    curves: Mapping[str, Any], path: str | Path, title: str = "", n_bins: int = 15
) -> Path:
    """One reliability diagram per method: accuracy vs confidence per bin, with ECE in the title.

    ``curves`` as for :func:`tacitbayes.plots.reliability_diagram`: name -> (probs, labels)
    or a reliability_bins dict. Bars in the background: the fraction of examples per bin.
    """
    _check_mapping(curves, "curves")
    binned = {str(name): _bins_for(str(name), c, n_bins) for name, c in curves.items()}
    fig, axes = _grid(len(binned))
    for i, (ax, (name, b)) in enumerate(zip(axes, binned.items(), strict=True)):
        keep = b["count"] > 0
        frac = b["count"] / max(1, b["count"].sum())
        ax.bar(b["edges"][:-1], frac, width=np.diff(b["edges"]), align="edge", color="0.85")
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.4", linewidth=1)
        ax.plot(b["confidence"][keep], b["accuracy"][keep], marker="o", markersize=3, color="C0")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}  (ECE {b['ece']:.3f})", fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("confidence")
        if i % 4 == 0:
            ax.set_ylabel("accuracy (bars: fraction)")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def histogram_grid(
    scores: Mapping[str, tuple[Any, Any]],
    path: str | Path,
    xlabel: str,
    labels: tuple[str, str] = ("in distribution", "OOD"),
    title: str = "",
    notes: Mapping[str, str] | None = None,
    bins: int = 30,
) -> Path:
    """Per method, density histograms of a score on two sets (e.g. max probability, test vs OOD)."""
    _check_mapping(scores, "scores")
    pairs = {}
    for name, pair in scores.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InputError(f"scores[{name!r}] must be a pair (in-distribution, OOD)")
        pairs[str(name)] = (_as_1d(pair[0], f"{name} scores"), _as_1d(pair[1], f"{name} scores"))
    fig, axes = _grid(len(pairs))
    notes = dict(notes or {})
    for i, (ax, (name, (a, b))) in enumerate(zip(axes, pairs.items(), strict=True)):
        both = np.concatenate([a, b])
        lo, hi = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        ax.hist(a, bins=edges, density=True, alpha=0.6, color="C0", label=labels[0])
        ax.hist(b, bins=edges, density=True, alpha=0.6, color="C3", label=labels[1])
        ax.set_title(
            f"{name}{'  (' + notes[name] + ')' if name in notes else ''}", fontsize="medium"
        )
        ax.set_xlabel(xlabel)
        if i % 4 == 0:
            ax.set_ylabel("density")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small", loc="upper left")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def metric_panels(
    series: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    path: str | Path,
    xlabel: str,
    title: str = "",
) -> Path:
    """One panel per metric (``series``: metric -> method -> (x, y)), one line per method, one legend."""
    _check_mapping(series, "series")
    fig, axes = _grid(len(series), width=4.2, height=3.4, cols=3)
    methods: list[str] = []
    for ax, (metric, lines) in zip(axes, series.items(), strict=True):
        _check_mapping(lines, f"series[{metric!r}]")
        for name, (x, y) in lines.items():
            x, y = _as_1d(x, f"{name} x"), _as_1d(y, f"{name} y")
            if len(x) != len(y):
                raise InputError(f"{metric} / {name}: x and y differ in length")
            if name not in methods:
                methods.append(str(name))
            color = f"C{methods.index(str(name)) % 10}"
            ax.plot(x, y, marker="o", markersize=3, color=color, label=str(name))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(str(metric))
        ax.grid(True, alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", fontsize="small")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def metric_bars(
    values: Mapping[str, Mapping[str, float]],
    path: str | Path,
    title: str = "",
    better: Mapping[str, str] | None = None,
) -> Path:
    """One bar panel per metric (``values``: metric -> method -> value); ``better``: 'higher'/'lower'."""
    _check_mapping(values, "values")
    better = dict(better or {})
    fig, axes = _grid(len(values), width=3.6, height=3.2, cols=4)
    for ax, (metric, row) in zip(axes, values.items(), strict=True):
        _check_mapping(row, f"values[{metric!r}]")
        names = list(row)
        heights = np.array([float(row[n]) for n in names])
        finite = heights[np.isfinite(heights)]
        ax.bar(
            range(len(names)),
            np.nan_to_num(heights),
            color=[f"C{i % 10}" for i in range(len(names))],
        )
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize="small")
        if len(finite):  # zoom on the differences: the bars start below the smallest value
            lo, hi = float(finite.min()), float(finite.max())
            pad = 0.15 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-12)
            ax.set_ylim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
        hint = f" ({better[metric]} is better)" if metric in better else ""
        ax.set_title(f"{metric}{hint}", fontsize="medium")
        ax.grid(True, axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
