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


def test_a_posterior_whose_samples_agree_is_said_to_predict_like_one_network() -> None:
    row = {**MAP, "nll": 0.19, "map_distance": 0.03, "sample_effect": 1.8e-3}
    row["sample_effect_ood"] = 0.04
    text = verdict("ibvi", {"map": MAP, "ibvi": row})
    assert "Its samples agree on the test set" in text
    assert "distance of 1.8e-03 (on the OOD set 4.0e-02)" in text
    spread = verdict("ibvi", {"map": MAP, "ibvi": {**row, "sample_effect": 0.02}})
    assert "samples agree" not in spread
    assert "predicts like that one network" in text
    # the ensemble's members are its samples: the same test applies
    assert "samples agree" in verdict("ensemble", {"map": MAP, "ensemble": row})
    assert "samples agree" not in verdict("map_temperature", {"map": MAP, "map_temperature": MAP})


def test_sample_effect_is_the_distance_from_the_softmax_of_the_mean_logits() -> None:
    import torch

    from tacitbayes.experiments.compare.evaluate import sample_effect

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, 3, generator=gen, dtype=torch.float64)
    effect = sample_effect(logits)
    for n in range(7):  # one input at a time, written out
        mixture = sum(torch.softmax(logits[s, n], -1) for s in range(5)) / 5
        single = torch.softmax(sum(logits[s, n] for s in range(5)) / 5, -1)
        assert torch.isclose(effect[n], 0.5 * (mixture - single).abs().sum())
    same = logits[:1].expand(4, -1, -1)  # identical samples: no effect
    assert torch.all(sample_effect(same).abs() < 1e-15)
    assert torch.all(effect > 0)
