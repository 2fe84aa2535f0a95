"""Tests for tacitbayes.metrics: hand-computed values, reference implementations, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.functional.classification import multiclass_calibration_error

from tacitbayes import metrics
from tacitbayes.errors import InputError

# A tiny 4-example, 3-class problem used for hand-computed values.
#   row  probs               label  argmax  conf   correct  p(label)
#   0    [0.70, 0.20, 0.10]  0      0       0.70   yes      0.70
#   1    [0.10, 0.50, 0.40]  2      1       0.50   no       0.40
#   2    [0.90, 0.05, 0.05]  0      0       0.90   yes      0.90
#   3    [0.25, 0.45, 0.30]  1      1       0.45   yes      0.45
PROBS = torch.tensor(
    [[0.70, 0.20, 0.10], [0.10, 0.50, 0.40], [0.90, 0.05, 0.05], [0.25, 0.45, 0.30]],
    dtype=torch.float64,
)
LABELS = torch.tensor([0, 2, 0, 1])


def random_problem(seed: int, n: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of random logits at a random temperature; labels partly follow the argmax."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * rng.uniform(0.1, 5.0)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.where(rng.uniform(size=n) < 0.6, p.argmax(axis=1), rng.integers(0, c, size=n))
    return torch.from_numpy(p), torch.from_numpy(y.astype(np.int64))


def ece_reference(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    """From-scratch Guo et al. ECE: bins (lo, hi], sum_b |B_b|/N |acc_b - conf_b|."""
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total


def auroc_bruteforce(s_in: list[float], s_out: list[float]) -> float:
    """P(s_out > s_in) + 0.5 P(s_out == s_in) by counting all (out, in) pairs."""
    wins = sum(1.0 if o > i else 0.5 if o == i else 0.0 for o in s_out for i in s_in)
    return wins / (len(s_in) * len(s_out))


def binary_probs(max_probs: list[float]) -> torch.Tensor:
    m = torch.tensor(max_probs, dtype=torch.float64)
    return torch.stack([m, 1.0 - m], dim=1)


# ------------------------------------------------------------------ hand-computed values


def test_accuracy_by_hand() -> None:
    # rows 0, 2, 3 correct, row 1 wrong -> 3/4
    assert metrics.accuracy(PROBS, LABELS) == pytest.approx(0.75)


def test_nll_by_hand() -> None:
    # -(log 0.7 + log 0.4 + log 0.9 + log 0.45) / 4
    # = (0.356675 + 0.916291 + 0.105361 + 0.798508) / 4 = 2.176835 / 4 = 0.544209
    expected = -(math.log(0.7) + math.log(0.4) + math.log(0.9) + math.log(0.45)) / 4
    assert expected == pytest.approx(0.544209, abs=1e-6)
    assert metrics.nll(PROBS, LABELS) == pytest.approx(expected, rel=1e-12)


def test_nll_clamps_at_eps() -> None:
    # p(label) = 0 -> -log(eps); mean over the 2 rows: (-log 1e-12 + -log 1) / 2
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([1, 0])
    assert metrics.nll(probs, labels) == pytest.approx(-math.log(1e-12) / 2)
    assert metrics.nll(probs, labels, eps=1e-3) == pytest.approx(-math.log(1e-3) / 2)


def test_brier_by_hand() -> None:
    # row 0: (0.7-1)^2 + 0.2^2 + 0.1^2      = 0.09 + 0.04 + 0.01     = 0.14
    # row 1: 0.1^2 + 0.5^2 + (0.4-1)^2      = 0.01 + 0.25 + 0.36     = 0.62
    # row 2: (0.9-1)^2 + 0.05^2 + 0.05^2    = 0.01 + 0.0025 + 0.0025 = 0.015
    # row 3: 0.25^2 + (0.45-1)^2 + 0.3^2    = 0.0625 + 0.3025 + 0.09 = 0.455
    # mean = (0.14 + 0.62 + 0.015 + 0.455) / 4 = 1.23 / 4 = 0.3075
    assert metrics.brier(PROBS, LABELS) == pytest.approx(0.3075, abs=1e-12)


def test_brier_extremes_and_range() -> None:
    onehot = torch.eye(3, dtype=torch.float64)
    assert metrics.brier(onehot, torch.tensor([0, 1, 2])) == 0.0  # perfect
    # confidently wrong: (1-0)^2 + (0-1)^2 = 2 per row
    assert metrics.brier(onehot, torch.tensor([1, 2, 0])) == pytest.approx(2.0)
    for seed in range(5):
        p, y = random_problem(seed, 50, 4)
        assert 0.0 <= metrics.brier(p, y) <= 2.0


def test_ece_by_hand_5_bins() -> None:
    # bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]
    # bin 2: rows 1, 3: conf (0.5 + 0.45)/2 = 0.475, acc (0 + 1)/2 = 0.5 -> 2/4 * 0.025 = 0.0125
    # bin 3: row 0: conf 0.7, acc 1 -> 1/4 * 0.3 = 0.075
    # bin 4: row 2: conf 0.9, acc 1 -> 1/4 * 0.1 = 0.025
    # ECE = 0.0125 + 0.075 + 0.025 = 0.1125
    assert metrics.ece(PROBS, LABELS, n_bins=5) == pytest.approx(0.1125, abs=1e-12)


def test_ece_by_hand_15_bins() -> None:
    # with 15 bins every row has a bin of its own (0.45 -> bin 6, 0.5 -> 7, 0.7 -> 10, 0.9 -> 13):
    # (|1-0.7| + |0-0.5| + |1-0.9| + |1-0.45|) / 4 = (0.3 + 0.5 + 0.1 + 0.55) / 4 = 0.3625
    assert metrics.ece(PROBS, LABELS) == pytest.approx(0.3625, abs=1e-12)


def test_ece_bins_are_right_closed_and_one_is_in_last_bin() -> None:
    # conf 0.6 is in (0.4, 0.6] with 5 bins, together with 0.5:
    # rows: conf 0.6 correct, conf 0.5 wrong -> acc 0.5, conf 0.55 -> ECE 0.05
    probs = torch.tensor([[0.6, 0.4], [0.5, 0.5]], dtype=torch.float64)
    assert metrics.ece(probs, torch.tensor([0, 1]), n_bins=5) == pytest.approx(0.05)
    # conf 1.0 (wrong) pools with conf 0.95 (right) in (14/15, 1]:
    # acc 0.5, conf 0.975 -> ECE 0.475 (a separate bin for 1.0 would give 0.525)
    probs = torch.tensor([[1.0, 0.0], [0.95, 0.05]], dtype=torch.float64)
    assert metrics.ece(probs, torch.tensor([1, 0])) == pytest.approx(0.475)
    assert metrics.ece(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) == 0.0


def test_ece_single_bin_is_gap_of_means() -> None:
    # one bin: |mean acc - mean conf| = |0.75 - (0.7+0.5+0.9+0.45)/4| = |0.75 - 0.6375| = 0.1125
    assert metrics.ece(PROBS, LABELS, n_bins=1) == pytest.approx(0.1125)


def test_reliability_bins_by_hand() -> None:
    b = metrics.reliability_bins(PROBS, LABELS, n_bins=5)
    assert b["count"] == [0, 0, 2, 1, 1]
    assert b["confidence"] == pytest.approx([0.0, 0.0, 0.475, 0.7, 0.9])
    assert b["accuracy"] == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    assert b["bin_edges"] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert b["n_bins"] == 5
    assert b["ece"] == pytest.approx(0.1125)


def test_entropy_and_max_probability_by_hand() -> None:
    probs = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    # H = log 2, 0 (0 log 0 = 0), log 3
    h = metrics.predictive_entropy(probs)
    assert h.shape == (3,) and h.dtype == torch.float32
    assert h.tolist() == pytest.approx([math.log(2), 0.0, math.log(3)], abs=1e-6)
    m = metrics.max_probability(probs)
    assert m.shape == (3,) and m.dtype == torch.float32
    assert m.tolist() == pytest.approx([0.5, 1.0, 1 / 3], abs=1e-7)


def test_evaluate_matches_individual_metrics() -> None:
    out = metrics.evaluate(PROBS, LABELS)
    assert set(out) == {"accuracy", "nll", "ece", "brier"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["nll"] == pytest.approx(metrics.nll(PROBS, LABELS))
    assert out["ece"] == pytest.approx(0.3625)
    assert out["brier"] == pytest.approx(0.3075)


def test_accepts_float32_grad_and_slightly_off_rows() -> None:
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    probs = logits.softmax(dim=1)
    labels = torch.arange(8) % 5
    assert isinstance(metrics.accuracy(probs, labels), float)
    assert isinstance(metrics.nll(probs, labels.to(torch.int32)), float)
    # rows summing to 1 within 1e-3 are accepted
    assert metrics.brier(torch.tensor([[0.5, 0.4995]]), torch.tensor([0])) == pytest.approx(
        0.5**2 + 0.4995**2
    )


# ------------------------------------------------------------------ reference implementations


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_ece_matches_numpy_reference(seed: int, n_bins: int) -> None:
    p, y = random_problem(seed, 300, 6)
    expected = ece_reference(p.numpy(), y.numpy(), n_bins)
    assert metrics.ece(p, y, n_bins=n_bins) == pytest.approx(expected, abs=1e-12)
    assert metrics.reliability_bins(p, y, n_bins=n_bins)["ece"] == pytest.approx(
        expected, abs=1e-12
    )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    c=st.integers(2, 8),
    n_bins=st.integers(1, 25),
)
def test_ece_matches_numpy_reference_hypothesis(seed: int, n: int, c: int, n_bins: int) -> None:
    p, y = random_problem(seed, n, c)
    got = metrics.ece(p, y, n_bins=n_bins)
    assert got == pytest.approx(ece_reference(p.numpy(), y.numpy(), n_bins), abs=1e-12)
    assert 0.0 <= got <= 1.0
    b = metrics.reliability_bins(p, y, n_bins=n_bins)
    assert sum(b["count"]) == n and len(b["confidence"]) == len(b["accuracy"]) == n_bins


@pytest.mark.parametrize("seed", range(3))
def test_ece_agrees_with_torchmetrics_without_confidence_one(seed: int) -> None:
    p, y = random_problem(100 + seed, 400, 10)
    assert float(p.max()) < 1.0  # torchmetrics gives conf == 1.0 a bin of its own
    tm = multiclass_calibration_error(p, y, num_classes=10, n_bins=15, norm="l1")
    assert metrics.ece(p, y) == pytest.approx(float(tm), abs=1e-5)


# ------------------------------------------------------------------------------- OOD AUROC


def test_ood_auroc_by_hand_with_tie() -> None:
    # score = -max prob: in = [-0.9, -0.8, -0.6], out = [-0.7, -0.6, -0.5]
    # out -0.7 beats -0.9, -0.8          -> 2
    # out -0.6 beats -0.9, -0.8, ties -0.6 -> 2.5
    # out -0.5 beats all three            -> 3
    # AUROC = 7.5 / 9 = 0.8333...
    p_in = binary_probs([0.9, 0.8, 0.6])
    p_out = binary_probs([0.7, 0.6, 0.5])
    assert metrics.ood_auroc(p_in, p_out) == pytest.approx(7.5 / 9)
    assert auroc_bruteforce([-0.9, -0.8, -0.6], [-0.7, -0.6, -0.5]) == pytest.approx(7.5 / 9)
    # binary entropy decreases in the max prob on [0.5, 1], so the ranking is the same
    assert metrics.ood_auroc(p_in, p_out, score="entropy") == pytest.approx(7.5 / 9)


@pytest.mark.parametrize("score", ["max_prob", "entropy"])
def test_ood_auroc_matches_bruteforce(score: str) -> None:
    p_in, _ = random_problem(7, 13, 4)
    p_out, _ = random_problem(8, 9, 4)
    if score == "max_prob":
        s_in = (-p_in.max(dim=1).values).tolist()
        s_out = (-p_out.max(dim=1).values).tolist()
    else:
        s_in = metrics.predictive_entropy(p_in).tolist()
        s_out = metrics.predictive_entropy(p_out).tolist()
    expected = auroc_bruteforce(s_in, s_out)
    assert metrics.ood_auroc(p_in, p_out, score=score) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("score", ["max_prob", "entropy"])
def test_ood_auroc_perfect_and_chance(score: str) -> None:
    confident = binary_probs([0.99, 0.97, 0.95, 0.999])
    unsure = binary_probs([0.5, 0.55, 0.6, 0.52, 0.51])
    assert metrics.ood_auroc(confident, unsure, score=score) == 1.0
    assert metrics.ood_auroc(unsure, confident, score=score) == 0.0
    # identical sets: every pair is a tie -> exactly 0.5
    assert metrics.ood_auroc(unsure, unsure.clone(), score=score) == 0.5
    # two samples from the same distribution -> close to 0.5
    p_a, _ = random_problem(1, 1500, 5)
    rng = np.random.default_rng(1)
    p_b = p_a[torch.from_numpy(rng.permutation(1500))]
    auc = metrics.ood_auroc(p_a[:750], p_b[750:], score=score)
    assert abs(auc - 0.5) < 0.06


# ------------------------------------------------------------------------------ bad input

GOOD_P = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
GOOD_Y = torch.tensor([0, 1])

BAD_PROBS = {
    "list": [[0.6, 0.4], [0.3, 0.7]],
    "int dtype": torch.tensor([[1, 0], [0, 1]]),
    "1-D": torch.tensor([0.6, 0.4]),
    "3-D": GOOD_P.unsqueeze(0),
    "no rows": torch.empty(0, 2),
    "no columns": torch.empty(2, 0),
    "nan": torch.tensor([[float("nan"), 0.4], [0.3, 0.7]]),
    "inf": torch.tensor([[float("inf"), 0.4], [0.3, 0.7]]),
    "negative": torch.tensor([[1.5, -0.5], [0.3, 0.7]]),
    "above one": torch.tensor([[1.2, 0.0], [0.3, 0.7]]),
    "row sum": torch.tensor([[0.6, 0.3], [0.3, 0.7]]),
}
BAD_LABELS = {
    "list": [0, 1],
    "float": torch.tensor([0.0, 1.0]),
    "bool": torch.tensor([True, False]),
    "2-D": torch.tensor([[0], [1]]),
    "too short": torch.tensor([0]),
    "too long": torch.tensor([0, 1, 1]),
    "negative": torch.tensor([0, -1]),
    "too large": torch.tensor([0, 2]),
}
LABELLED = [
    metrics.accuracy,
    metrics.nll,
    metrics.ece,
    metrics.brier,
    metrics.evaluate,
    metrics.reliability_bins,
]


@pytest.mark.parametrize("fn", LABELLED, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", BAD_PROBS, ids=str)
def test_bad_probs_raise(fn, case: str) -> None:
    with pytest.raises(InputError):
        fn(BAD_PROBS[case], GOOD_Y)


@pytest.mark.parametrize("fn", LABELLED, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", BAD_LABELS, ids=str)
def test_bad_labels_raise(fn, case: str) -> None:
    with pytest.raises(InputError):
        fn(GOOD_P, BAD_LABELS[case])


@pytest.mark.parametrize("fn", [metrics.predictive_entropy, metrics.max_probability])
@pytest.mark.parametrize("case", BAD_PROBS, ids=str)
def test_bad_probs_raise_unlabelled(fn, case: str) -> None:
    with pytest.raises(InputError):
        fn(BAD_PROBS[case])


@pytest.mark.parametrize("case", BAD_PROBS, ids=str)
def test_ood_auroc_bad_probs_raise(case: str) -> None:
    with pytest.raises(InputError):
        metrics.ood_auroc(BAD_PROBS[case], GOOD_P)
    with pytest.raises(InputError):
        metrics.ood_auroc(GOOD_P, BAD_PROBS[case])


@pytest.mark.parametrize("n_bins", [0, -3, 1.5, True, "15", None])
def test_bad_n_bins_raise(n_bins) -> None:
    with pytest.raises(InputError):
        metrics.ece(GOOD_P, GOOD_Y, n_bins=n_bins)
    with pytest.raises(InputError):
        metrics.reliability_bins(GOOD_P, GOOD_Y, n_bins=n_bins)


@pytest.mark.parametrize("eps", [0.0, -1e-3, 1.0, "tiny"])
def test_bad_eps_raise(eps) -> None:
    with pytest.raises(InputError):
        metrics.nll(GOOD_P, GOOD_Y, eps=eps)


def test_ood_auroc_bad_score_and_class_mismatch_raise() -> None:
    with pytest.raises(InputError, match="score"):
        metrics.ood_auroc(GOOD_P, GOOD_P, score="energy")  # type: ignore[arg-type]
    three = torch.tensor([[0.2, 0.3, 0.5]])
    with pytest.raises(InputError, match="number of classes"):
        metrics.ood_auroc(GOOD_P, three)


def test_error_messages_are_one_line() -> None:
    for bad in BAD_PROBS.values():
        with pytest.raises(InputError) as info:
            metrics.accuracy(bad, GOOD_Y)
        assert "\n" not in str(info.value) and str(info.value)


def test_total_variation_and_evaluate_against_a_reference() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    q = torch.tensor([[0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])
    # ½(0.2 + 0.2 + 0) = 0.2 for the first row, 0 for the second
    assert metrics.total_variation(p, q) == pytest.approx(0.1)
    assert metrics.total_variation(p, p) == 0.0
    out = metrics.evaluate(p, torch.tensor([0, 2]), reference=q, decimals=3)
    assert out["tv"] == 0.1 and out["accuracy"] == 1.0
    assert out["nll"] == round(
        float(-(torch.log(torch.tensor(0.7)) + torch.log(torch.tensor(0.8))) / 2), 3
    )
    with pytest.raises(InputError, match="shape"):
        metrics.total_variation(p, q[:1])
