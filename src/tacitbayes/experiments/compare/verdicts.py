"""Plain-language verdicts for ``compare``: where a method wins and loses against MAP and the best baseline.

A post-hoc posterior whose tuned prior precision collapses it onto the MAP weights
prints MAP's numbers; one whose samples move the training predictions underfits. Both
must be said in words, not left for the reader to spot in a table. The baselines are
``map_temperature`` and ``ensemble``; the best of those present is the one with the
lowest test NLL.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tacitbayes.metrics import total_variation

__all__ = [
    "BASELINES",
    "HEADLINE",
    "LIKE_MAP_TV",
    "LIKE_ONE_NETWORK_TV",
    "best_baseline",
    "collapse_note",
    "map_distance",
    "verdict",
]

LIKE_MAP_TV = 1e-3  # mean total-variation distance to MAP's test predictions
# mean TV between averaging the samples' probabilities and the softmax of their mean logits
LIKE_ONE_NETWORK_TV = 5e-3
BASELINES = ("map_temperature", "ensemble")
# headline metric -> (which direction is better, the smallest difference that counts)
HEADLINE: dict[str, tuple[str, float]] = {
    "accuracy": ("higher", 0.003),  # one digits test image is 0.0028: a tie
    "nll": ("lower", 0.005),
    "ece": ("lower", 0.002),
    "ood_auroc": ("higher", 0.005),
    "shift_accuracy": ("higher", 0.003),
}
NAMES = {"accuracy": "accuracy", "nll": "NLL", "ece": "ECE", "ood_auroc": "OOD AUROC"}
NAMES["shift_accuracy"] = "accuracy under rotation"


def map_distance(probs: torch.Tensor, map_probs: torch.Tensor) -> float:
    """Mean over test inputs of the total-variation distance ½ Σ_c |p_c − p_c^MAP|."""
    return total_variation(probs, map_probs)


def best_baseline(methods: dict[str, dict[str, Any]]) -> str | None:
    """The baseline present in ``methods`` with the lowest test NLL (None if there is none)."""
    present = [b for b in BASELINES if b in methods and _number(methods[b].get("nll"))]
    return min(present, key=lambda b: methods[b]["nll"]) if present else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def gain(key: str, value: float, reference: float) -> float:
    """How much better ``value`` is than ``reference`` on headline metric ``key`` (signed)."""
    diff = value - reference
    return diff if HEADLINE[key][0] == "higher" else -diff


def _against(row: dict[str, Any], ref: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The headline metrics where ``row`` beats ``ref`` and where it loses (beyond a tie margin)."""
    wins, losses = [], []
    for key, (_, margin) in HEADLINE.items():
        a, b = row.get(key), ref.get(key)
        if not (_number(a) and _number(b)):
            continue
        text = f"{NAMES[key]} {a - b:+.4f}"
        if gain(key, a, b) > margin:
            wins.append(text)
        elif gain(key, a, b) < -margin:
            losses.append(text)
    return wins, losses


def _sentence(name: str, row: dict[str, Any], ref: dict[str, Any]) -> str:
    wins, losses = _against(row, ref)
    if not wins and not losses:
        return f"level with {name} on every headline metric"
    parts = []
    if wins:
        parts.append("better " + ", ".join(wins))
    if losses:
        parts.append("worse " + ", ".join(losses))
    return f"against {name}: " + "; ".join(parts)


def _upper(text: str) -> str:
    return text[:1].upper() + text[1:]


def collapse_note(row: dict[str, Any]) -> str | None:
    """Why a posterior predicts like MAP, from the prior precision it chose vs the evidence value."""
    chosen = row.get("prior_precision")
    evidence = row.get("prior_precision_marglik", row.get("evidence_prior_precision"))
    if not (_number(chosen) and _number(evidence)) or evidence <= 0:
        return None
    ratio = chosen / evidence
    if ratio >= 10:
        return (
            f"the prior precision chosen on validation is 10^{math.log10(ratio):.1f} × the "
            "evidence value, which shrinks the posterior onto the MAP weights"
        )
    return f"prior precision {chosen:.3g} (evidence value {evidence:.3g})"


def single_network_note(row: dict[str, Any]) -> str | None:
    """A sentence when a sampling method's samples agree on the test set (it predicts like one network)."""
    effect = row.get("sample_effect")
    if not _number(effect) or effect >= LIKE_ONE_NETWORK_TV:
        return None
    ood = row.get("sample_effect_ood")
    off = f" (on the OOD set {ood:.1e})" if _number(ood) else ""
    return (
        f"Its samples agree on the test set: averaging them moves the predictions by a mean "
        f"total-variation distance of {effect:.1e}{off} from the single network at their "
        "mean logits, so in distribution it predicts like that one network."
    )


def verdict(name: str, methods: dict[str, dict[str, Any]]) -> str:
    """One or two sentences on method ``name`` against MAP and against the best baseline."""
    row = methods[name]
    tv = row.get("map_distance")
    sentences = []
    if name != "map" and _number(tv) and tv < LIKE_MAP_TV:
        why = collapse_note(row)
        what = "It" if name in BASELINES else "This posterior"
        if _number(row.get("temperature")):
            why = f"temperature T = {row['temperature']:.3g}"
        sentences.append(
            f"{what} predicts like MAP (mean total-variation distance {tv:.1e} to "
            f"MAP's test predictions){': ' + why if why else ''}."
        )
    elif name != "map" and "map" in methods:
        ref = methods["map"]
        if (
            name not in BASELINES
            and _number(row.get("nll"))
            and _number(ref.get("nll"))
            and gain("nll", row["nll"], ref["nll"]) < -HEADLINE["nll"][1]
        ):
            at = " at this prior precision" if "prior_precision" in row else ""
            sentences.append(f"Worse than MAP in distribution (higher NLL): it underfits{at}.")
        single = single_network_note(row)
        if single:
            sentences.append(single)
        sentences.append(_upper(_sentence("MAP", row, ref)) + ".")
    best = best_baseline(methods)
    if best is not None and best != name:
        sentences.append(_upper(_sentence(f"{best} (best baseline)", row, methods[best])) + ".")
    elif best is None and name not in BASELINES:
        sentences.append("No baseline (map_temperature, ensemble) was run.")
    return " ".join(sentences) or "The reference."
