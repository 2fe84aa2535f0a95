"""The methods of ``tacitbayes compare`` and what each one is, without importing them.

``METHODS`` names every method the registry (:mod:`tacitbayes.experiments.compare.registry`) holds,
with a one-line description, in the order ``compare --help`` lists them. The registry
imports each method's module (and so torch); this catalog imports nothing, so the help
answers at once. A test checks that the two name the same methods.
"""

from __future__ import annotations

__all__ = ["METHODS", "methods_epilog"]

METHODS: dict[str, str] = {
    "map": "the trained network itself (the maximum a posteriori weights)",
    "map_temperature": "MAP with a temperature fitted on validation NLL (baseline)",
    "ensemble": "M independently seeded MAP networks, probabilities averaged (baseline, M = 5)",
    "laplace_diag": "diagonal Laplace around MAP (exact GGN diagonal), δ tuned on validation NLL",
    "laplace_kron": "KFAC Laplace around MAP over every Linear/Conv2d layer, δ tuned on validation NLL",
    "laplace_last_layer": "Laplace on the last Linear layer (dense GGN), δ tuned on validation NLL",
    "projected": "null-space projected posterior N(θ*, α⁻¹(I − J⁺J)) around MAP, evidence α",
    "loss_projected": "projection onto the null space of the per-example loss gradients",
    "ibvi": "implicit-bias VI: trained from scratch by the expected loss, Gaussian last layer",
    "ivon": "trained from scratch with IVON, Monte Carlo predictive",
}


def methods_epilog() -> str:
    """The method table of ``compare --help``: one indented line per method."""
    width = max(map(len, METHODS))
    lines = [f"  {name:<{width}}  {text}" for name, text in METHODS.items()]
    return "methods (--methods, comma-separated, or all):\n" + "\n".join(lines)
