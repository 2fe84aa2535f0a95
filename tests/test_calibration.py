"""Temperature scaling against a known temperature and against a brute-force grid."""

from __future__ import annotations

import math

import pytest
import torch

from tacitbayes.calibration import fit_logit_temperature, sampled_nll
from tacitbayes.errors import InputError


def _problem(true_t: float, n: int = 20000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(logits / true_t, -1), 1, generator=gen).squeeze(1)
    return logits, y


def test_recovers_the_temperature_that_generated_the_labels() -> None:
    logits, y = _problem(2.0)
    t, record = fit_logit_temperature(logits, y, prior_std=None)
    assert abs(t - 2.0) < 0.1 and not record["at_edge"]


def test_matches_a_brute_force_grid() -> None:
    logits, y = _problem(0.7, n=3000)
    t, _ = fit_logit_temperature(logits, y, prior_std=None)
    grid = torch.logspace(math.log10(0.3), math.log10(2.0), 2001, dtype=torch.float64)
    best = min(grid.tolist(), key=lambda s: sampled_nll(logits.unsqueeze(0), y, s))
    assert abs(math.log(t) - math.log(best)) < 5e-3


def test_one_network_equals_one_sample_and_prior_pulls_to_one() -> None:
    logits, y = _problem(3.0, n=200)
    a, _ = fit_logit_temperature(logits, y, prior_std=None)
    b, _ = fit_logit_temperature(logits.unsqueeze(0), y, prior_std=None)
    assert a == b
    shrunk, _ = fit_logit_temperature(logits, y, prior_std=0.05)
    assert abs(math.log(shrunk)) < abs(math.log(a))


def test_a_temperature_at_the_bound_warns() -> None:
    logits, y = _problem(10.0, n=2000)
    with pytest.warns(RuntimeWarning, match="temperature"):
        t, record = fit_logit_temperature(logits, y, bounds=(0.5, 2.0), prior_std=None)
    assert record["at_edge"] and t > 1.9


@pytest.mark.parametrize(
    "logits, y, match",
    [
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "N = len"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), "N = len"),
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), "N = len"),
    ],
)
def test_bad_shapes_are_input_errors(logits, y, match) -> None:
    with pytest.raises(InputError, match=match):
        fit_logit_temperature(logits, y)
