"""Plain-language verdicts for ``compare``: does a posterior predict like MAP, or worse than it?

A post-hoc posterior whose tuned prior precision collapses it onto the MAP weights
prints MAP's numbers; one whose samples move the training predictions underfits. Both
must be said in words, not left for the reader to spot in a table.
"""

from __future__ import annotations

from typing import Any

import torch

from tacitbayes.metrics import total_variation

__all__ = ["LIKE_MAP_TV", "UNDERFIT_NLL", "map_distance", "verdict"]

LIKE_MAP_TV = 1e-3  # mean total-variation distance to MAP's test predictions
UNDERFIT_NLL = 0.005  # test NLL above MAP's by more than this counts as worse


def map_distance(probs: torch.Tensor, map_probs: torch.Tensor) -> float:
    """Mean over test inputs of the total-variation distance ½ Σ_c |p_c − p_c^MAP|."""
    return total_variation(probs, map_probs)


def verdict(row: dict[str, Any], map_row: dict[str, Any]) -> str:
    """One sentence on how a method's test predictions relate to MAP's."""
    tv = row.get("map_distance")
    if tv is not None and tv < LIKE_MAP_TV:
        return (
            f"predicts like MAP (mean total-variation distance {tv:.1e} to MAP's test "
            "predictions): the posterior adds nothing here"
        )
    d_nll = row["nll"] - map_row["nll"]
    d_acc = row["accuracy"] - map_row["accuracy"]
    scores = {k: v for k, v in row.items() if k.startswith("ood_auroc") and isinstance(v, float)}
    best = max(scores, key=scores.get) if scores else None
    ood = f"; best OOD AUROC {scores[best]:.4f} ({best})" if best else ""
    if d_nll > UNDERFIT_NLL or d_acc < 0:
        return (
            f"worse than MAP in distribution (NLL {d_nll:+.4f}, accuracy {d_acc:+.4f}): "
            f"underfits at this prior precision{ood}"
        )
    return f"differs from MAP (NLL {d_nll:+.4f}, accuracy {d_acc:+.4f}){ood}"
