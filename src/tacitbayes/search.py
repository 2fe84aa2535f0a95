"""Searches that stop at the edge of their range: one check, one warning, one record.

A hyper-parameter chosen on a grid (or by a bounded 1-D search) that ends at the lowest or
highest value it was allowed to try is not an optimum: the objective was still improving
when the search ran out of room. :func:`check_grid_edge` says so in words with a
``RuntimeWarning`` and returns a record that the caller stores beside the chosen value::

    {"at_edge": bool, "edge": "low" | "high" | None, "range": [lo, hi],
     "value": chosen value, "message": the warning's text or None}

Every grid or bounded search of tacitbayes (Laplace and projected prior precision,
temperature scaling, the experiments' hyper-parameter grids) goes through it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

from tacitbayes.errors import InputError

__all__ = ["EDGE_KEYS", "check_grid_edge", "edge_messages", "edge_record"]

EDGE_KEYS = ("at_edge", "edge", "range", "value", "message")


def _floats(name: str, values: float | Iterable[float] | Tensor) -> list[float]:
    if isinstance(values, Tensor):
        out = [float(v) for v in values.detach().reshape(-1).tolist()]
    elif isinstance(values, (int, float)):
        out = [float(values)]
    else:
        out = [float(v) for v in values]
    if not out or any(not math.isfinite(v) for v in out):
        raise InputError(f"{name} must hold finite numbers, got {out}")
    return out


def check_grid_edge(
    name: str,
    searched: Sequence[float] | Tensor,
    best: float | Sequence[float] | Tensor,
    *,
    tol: float = 0.0,
    log: bool = False,
    low: str = "",
    high: str = "",
    remedy: str = "widen the grid",
    stacklevel: int = 2,
) -> dict[str, Any]:
    """Record whether ``best`` lies at min or max of ``searched`` (within ``tol``); RuntimeWarning if so.

    ``searched``: the grid values tried, or the (low, high) bounds of a continuous search.
    ``best``: the chosen value, or one per group (at an edge when any of them is).
    ``tol``: how close to an end counts as at it, measured in log(value) when ``log`` (a
    bounded search approaches its bound only up to its tolerance; 0 for a grid).
    ``low``/``high``: what an end at that side means for the result, stated in the warning.
    A search over a single value has no edge.
    """
    grid = _floats(f"the values searched for {name}", searched)
    chosen = _floats(f"the {name} chosen", best)
    if tol < 0:
        raise InputError(f"tol must be >= 0, got {tol}")
    lo, hi = min(grid), max(grid)
    if log and lo <= 0:
        raise InputError(f"a log-scale search needs positive values, got {name} range [{lo}, {hi}]")

    def coord(v: float) -> float:
        return math.log(v) if log else v

    edge = None
    if lo < hi:
        if any(coord(v) <= coord(lo) + tol for v in chosen):
            edge = "low"
        elif any(coord(v) >= coord(hi) - tol for v in chosen):
            edge = "high"
    value = chosen[0] if len(chosen) == 1 else chosen
    shown = ", ".join(f"{v:.3g}" for v in chosen)
    message = None
    if edge is not None:
        side, meaning = ("bottom", low) if edge == "low" else ("top", high)
        message = (
            f"{name} {shown} is at the {side} of its search range [{lo:.3g}, {hi:.3g}]"
            + (f"; {meaning}" if meaning else "")
            + f"; {remedy}"
        )
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel + 1)
    return {
        "at_edge": edge is not None,
        "edge": edge,
        "range": [lo, hi],
        "value": value,
        "message": message,
    }


def edge_record(tuning: dict[str, Any]) -> dict[str, Any]:
    """The edge record inside a tuning dict that holds one (e.g. ``Laplace.tuning``)."""
    missing = [k for k in EDGE_KEYS if k not in tuning]
    if missing:
        raise InputError(f"the tuning record {sorted(tuning)} holds no search edge record")
    return {k: tuning[k] for k in EDGE_KEYS}


def edge_messages(searches: dict[str, dict[str, Any]] | None) -> list[str]:
    """The warning texts of the records in ``searches`` that ended at an edge (in order)."""
    records = (searches or {}).values()
    return [r["message"] for r in records if r.get("at_edge") and r.get("message")]
