"""Plots for experiments: reliability diagrams, a generic line plot and a heat-map.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas
directly, never through ``pyplot``, so no global backend state is touched and
no display is needed. Files are written atomically: the figure goes to a
temporary file in the target directory, which is then renamed over the final
path, so a reader never sees a half-written image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tacitbayes.errors import InputError
from tacitbayes.io import atomic_path
from tacitbayes.metrics import reliability_bins

__all__ = ["heatmap", "line_plot", "reliability_diagram", "save_figure"]

_BIN_KEYS = ("confidence", "accuracy", "count")


def save_figure(fig: Figure, path: str | Path, dpi: float | None = None) -> Path:
    """Render ``fig`` to ``path`` via a temporary file in the same directory and os.replace."""
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    canvas = FigureCanvasAgg(fig)
    if fmt not in canvas.get_supported_filetypes():
        raise InputError(f"cannot save a plot as {path.suffix!r}; use e.g. .png, .pdf or .svg")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path


def _as_1d(values: Any, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be a sequence of numbers") from exc
    if arr.ndim != 1:
        raise InputError(f"{what} must be one-dimensional, got shape {arr.shape}")
    return arr


def _bins_for(name: str, curve: Any, n_bins: int) -> dict[str, Any]:
    """Turn one ``curves`` entry, (probs, labels) or a reliability_bins dict, into bins."""
    if isinstance(curve, Mapping):
        missing = [k for k in _BIN_KEYS if k not in curve]
        if missing:
            raise InputError(f"curve {name!r} lacks reliability-bin keys {missing}")
        conf = _as_1d(curve["confidence"], f"curve {name!r} confidence")
        acc = _as_1d(curve["accuracy"], f"curve {name!r} accuracy")
        count = _as_1d(curve["count"], f"curve {name!r} count")
        if not len(conf) == len(acc) == len(count) or len(conf) == 0:
            raise InputError(
                f"curve {name!r}: confidence, accuracy and count must be non-empty and equally long"
            )
        if (count < 0).any() or count.sum() <= 0:
            raise InputError(f"curve {name!r}: counts must be non-negative with a positive total")
        if "bin_edges" in curve:
            edges = _as_1d(curve["bin_edges"], f"curve {name!r} bin_edges")
            if len(edges) != len(conf) + 1:
                raise InputError(f"curve {name!r}: bin_edges must have len(count) + 1 entries")
        else:
            edges = np.arange(len(conf) + 1) / len(conf)
        if "ece" in curve:
            ece_value = float(curve["ece"])
        else:
            ece_value = float(np.sum(count * np.abs(acc - conf)) / count.sum())
        return {
            "confidence": conf,
            "accuracy": acc,
            "count": count,
            "edges": edges,
            "ece": ece_value,
        }
    if isinstance(curve, (tuple, list)) and len(curve) == 2:
        b = reliability_bins(curve[0], curve[1], n_bins=n_bins)
        return {
            "confidence": np.asarray(b["confidence"]),
            "accuracy": np.asarray(b["accuracy"]),
            "count": np.asarray(b["count"], dtype=np.float64),
            "edges": np.asarray(b["bin_edges"]),
            "ece": b["ece"],
        }
    raise InputError(
        f"curve {name!r} must be a (probs, labels) pair or a reliability_bins dict, "
        f"got {type(curve).__name__}"
    )


def reliability_diagram(
    curves: Mapping[str, tuple[torch.Tensor, torch.Tensor] | Mapping[str, Any]],
    path: str | Path,
    title: str = "",
    n_bins: int = 15,
) -> Path:
    """Plot accuracy vs mean confidence per bin for each method, with the diagonal and ECE in the legend.

    ``curves`` maps a method name to a ``(probs, labels)`` pair (binned here with
    ``n_bins`` bins) or to the output of :func:`tacitbayes.metrics.reliability_bins`.
    The lower panel shows the fraction of examples per confidence bin. Returns ``path``.
    """
    if not isinstance(curves, Mapping) or len(curves) == 0:
        raise InputError("curves must be a non-empty mapping of method name -> curve")
    binned = {str(name): _bins_for(str(name), c, n_bins) for name, c in curves.items()}

    fig = Figure(figsize=(5.5, 6.0), layout="constrained")
    ax, ax_hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.5", linewidth=1, label="perfect calibration")
    for name, b in binned.items():
        keep = b["count"] > 0
        (line,) = ax.plot(
            b["confidence"][keep],
            b["accuracy"][keep],
            marker="o",
            markersize=4,
            clip_on=False,
            label=f"{name} (ECE {b['ece']:.3f})",
        )
        frac = b["count"] / b["count"].sum()
        ax_hist.stairs(frac, b["edges"], color=line.get_color(), linewidth=1.2)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    if title:
        ax.set_title(title)
    ax_hist.set_xlabel("confidence (max probability)")
    ax_hist.set_ylabel("fraction")
    ax_hist.grid(True, alpha=0.3)
    return save_figure(fig, path)


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
    hlines: Mapping[str, float] | None = None,
) -> Path:
    """Plot one line y(x) per named series, optionally on log axes, with labelled horizontal reference lines.

    ``x`` and ``y`` may be sequences, numpy arrays or tensors of equal length.
    Returns ``path``.
    """
    if not isinstance(series, Mapping) or len(series) == 0:
        raise InputError("series must be a non-empty mapping of name -> (x, y)")
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, xy in series.items():
        if not isinstance(xy, (tuple, list)) or len(xy) != 2:
            raise InputError(f"series {name!r} must be an (x, y) pair")
        x = _as_1d(xy[0], f"series {name!r} x")
        y = _as_1d(xy[1], f"series {name!r} y")
        if len(x) != len(y) or len(x) == 0:
            raise InputError(
                f"series {name!r}: x and y must be non-empty and equally long, got {len(x)} and {len(y)}"
            )
        for arr, axis, on in ((x, "x", logx), (y, "y", logy)):
            finite = arr[np.isfinite(arr)]
            if on and (finite <= 0).any():
                raise InputError(
                    f"series {name!r} has non-positive {axis} values on a log {axis} axis"
                )
        data[str(name)] = (x, y)
    refs = dict(hlines or {})
    for label, value in refs.items():
        v = float(value)
        if not math.isfinite(v) or (logy and v <= 0):
            raise InputError(
                f"hline {label!r} must be finite (and positive on a log y axis), got {v}"
            )

    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    for name, (x, y) in data.items():
        ax.plot(x, y, marker="o", markersize=3, label=name)
    for i, (label, value) in enumerate(refs.items()):
        ax.axhline(
            float(value), linestyle="--", linewidth=1, color=f"C{(len(data) + i) % 10}", label=label
        )
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def heatmap(
    matrix: Any,
    path: str | Path,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    vmin: float = 0.0,
    vmax: float = 1.0,
    fmt: str = "{:.2f}",
) -> Path:
    """Colour-coded matrix M[i, j] (row i, column j) with each value written in its cell.

    ``matrix`` is a 2-D sequence, array or tensor; NaN cells stay blank. Colours span
    [vmin, vmax]. Returns ``path``.
    """
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError("matrix must be a 2-D array of numbers") from exc
    if m.ndim != 2 or m.size == 0:
        raise InputError(f"matrix must be a non-empty 2-D array, got shape {m.shape}")
    if np.isinf(m).any():
        raise InputError("matrix holds infinite values")
    if (len(row_labels), len(col_labels)) != m.shape:
        raise InputError(
            f"need {m.shape[0]} row and {m.shape[1]} column labels, "
            f"got {len(row_labels)} and {len(col_labels)}"
        )
    if not (math.isfinite(vmin) and math.isfinite(vmax) and vmin < vmax):
        raise InputError(f"need finite vmin < vmax, got {vmin} and {vmax}")

    rows, cols = m.shape
    size = (max(4.0, 1.5 + 0.75 * cols), max(3.0, 1.0 + 0.6 * rows))
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=vmin, vmax=vmax)
    fig.colorbar(image, ax=ax, shrink=0.9)
    middle = (vmin + vmax) / 2
    for i in range(rows):
        for j in range(cols):
            if np.isfinite(m[i, j]):
                color = "black" if m[i, j] > middle else "white"
                ax.text(
                    j, i, fmt.format(m[i, j]), ha="center", va="center", color=color, fontsize=8
                )
    ax.set_xticks(range(cols), [str(c) for c in col_labels])
    ax.set_yticks(range(rows), [str(r) for r in row_labels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize="medium")
    return save_figure(fig, path)
