"""Verdicts in words: wins and losses against MAP and the best baseline, and collapse onto MAP."""

from __future__ import annotations

from tacitbayes.experiments.compare.verdicts import best_baseline, collapse_note, verdict

MAP = {"accuracy": 0.95, "nll": 0.20, "ece": 0.030, "ood_auroc": 0.80, "map_distance": 0.0}


def test_best_baseline_is_the_lowest_nll_present() -> None:
    methods = {
        "map": MAP,
        "map_temperature": {**MAP, "nll": 0.18},
        "ensemble": {**MAP, "nll": 0.15},
    }
    assert best_baseline(methods) == "ensemble"
    assert best_baseline({"map": MAP, "map_temperature": {**MAP, "nll": 0.18}}) == (
        "map_temperature"
    )
    assert best_baseline({"map": MAP}) is None


def test_wins_and_losses_are_named_against_map_and_the_baseline() -> None:
    methods = {
        "map": MAP,
        "ensemble": {**MAP, "nll": 0.15, "accuracy": 0.96},
        "laplace_kron": {**MAP, "nll": 0.17, "ece": 0.010, "accuracy": 0.94, "map_distance": 0.02},
        "loss_projected": {**MAP, "nll": 0.3, "map_distance": 0.05, "prior_precision": 3.0},
    }
    assert verdict("loss_projected", methods).startswith(
        "Worse than MAP in distribution (higher NLL): it underfits at this prior precision."
    )
    text = verdict("laplace_kron", methods)
    assert not text.startswith("Worse than MAP")  # a better NLL is no underfit
    assert "Against MAP: better NLL -0.0300, ECE -0.0200; worse accuracy -0.0100." in text
    assert "Against ensemble (best baseline): better ECE -0.0200; worse accuracy -0.0200" in text
    assert "NLL +0.0200" in text
    # ties within the margins are "level"
    assert "Level with MAP" in verdict("x", {"map": MAP, "x": {**MAP, "map_distance": 0.01}})


def test_a_collapsed_posterior_is_said_in_words() -> None:
    row = {
        **MAP,
        "map_distance": 2e-4,
        "prior_precision": 1e6,
        "prior_precision_marglik": 10.0,
    }
    text = verdict("laplace_diag", {"map": MAP, "laplace_diag": row})
    assert text.startswith(
        "This posterior predicts like MAP (mean total-variation distance 2.0e-04"
    )
    assert "10^5.0 × the evidence value" in text
    assert "No baseline" in text
    tempered = {**MAP, "map_distance": 3e-4, "temperature": 1.02}
    text = verdict("map_temperature", {"map": MAP, "map_temperature": tempered})
    assert text.startswith("It predicts like MAP (mean total-variation distance 3.0e-04")
    assert "temperature T = 1.02" in text
    assert collapse_note({"prior_precision": 2.0, "evidence_prior_precision": 2.0}) == (
        "prior precision 2 (evidence value 2)"
    )
    assert collapse_note({"prior_precision": [1.0, 2.0]}) is None
