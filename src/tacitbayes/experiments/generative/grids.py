"""Image grids of ``tacitbayes generative``: reconstructions with their uncertainty, and generated images.

Each grid is a matplotlib Figure (no pyplot state) of grayscale images, one labelled row
per quantity, axes off, saved with :func:`tacitbayes.plots.save_figure`. Its size in
pixels follows from the number of rows and columns alone (:func:`grid_pixels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tacitbayes.errors import InputError
from tacitbayes.plots import save_figure

__all__ = ["DPI", "grid_pixels", "image_grid"]

DPI = 100
CELL = 0.8  # inches per image
LABEL = 1.6  # inches of row labels on the left
TITLE = 0.5  # inches of title above the images


def grid_pixels(n_rows: int, n_cols: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid of ``n_rows`` × ``n_cols`` images."""
    return round((LABEL + n_cols * CELL) * DPI), round((TITLE + n_rows * CELL) * DPI)


def image_grid(
    rows: Sequence[tuple[str, np.ndarray, tuple[float, float]]],
    path: str | Path,
    title: str,
    split: int | None = None,
) -> Path:
    """Save rows (label, images (K, H, W), (vmin, vmax)) as one labelled grayscale grid; a rule after column ``split``."""
    if not rows:
        raise InputError("an image grid needs at least one row")
    n_cols = max(len(images) for _, images, _ in rows)
    width, height = grid_pixels(len(rows), n_cols)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    left, top = LABEL * DPI / width, 1 - TITLE * DPI / height
    fig.subplots_adjust(left=left, right=1.0, bottom=0.0, top=top, wspace=0.05, hspace=0.05)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, (label, images, (vmin, vmax)) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if c < len(images):
                ax.imshow(images[c], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        axes[r, 0].text(
            -0.15, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center",
            fontsize=9,
        )  # fmt: skip
    if split is not None and 0 < split < n_cols:
        x = left + (1 - left) * split / n_cols
        rule = Line2D([x, x], [0.0, top], transform=fig.transFigure, color="tab:red", lw=1.5)
        fig.add_artist(rule)  # between the test and the OOD columns
    fig.suptitle(title, y=1 - 0.12 * TITLE * DPI / height, va="top", fontsize=10)
    return save_figure(fig, path, dpi=DPI)
