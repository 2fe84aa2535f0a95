"""IVON's sampled predictive for classification, regression (mean, variance) and binary."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tacitbayes.errors import InputError
from tacitbayes.optim import IVON, sampled_predict

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(outputs: int) -> tuple[nn.Module, IVON, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(3, outputs).double()
    opt = IVON(model.parameters(), lr=0.1, ess=20.0, hess_init=1.0, seed=0)
    return model, opt, torch.randn(6, 3, dtype=torch.float64)


def _sampled_outputs(model: nn.Module, opt: IVON, x: torch.Tensor, k: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    outs = []
    with torch.no_grad():
        for _ in range(k):
            with opt.sampled_params(generator=gen):
                outs.append(model(x))
    return torch.stack(outs)


def test_regression_returns_mean_and_variance_not_softmax() -> None:
    """The reported bug: a 2-output regression got rows summing to 1."""
    model, opt, x = _setup(2)
    outs = _sampled_outputs(model, opt, x, 7, seed=4)
    gen = torch.Generator().manual_seed(4)
    mean, var = opt.sampled_predict(model, x, 7, gen, likelihood="regression")
    torch.testing.assert_close(mean, outs.mean(0))
    torch.testing.assert_close(var, outs.var(0, unbiased=False))
    gen = torch.Generator().manual_seed(4)
    _, noisy = opt.sampled_predict(model, x, 7, gen, likelihood="regression", sigma_noise=0.3)
    torch.testing.assert_close(noisy, var + 0.09)
    mean2, _ = sampled_predict(opt, model, x, 3, likelihood="regression")  # the function
    assert mean2.shape == (6, 2)


def test_binary_and_classification() -> None:
    model, opt, x = _setup(1)
    outs = _sampled_outputs(model, opt, x, 5, seed=2)
    gen = torch.Generator().manual_seed(2)
    probs = opt.sampled_predict(model, x, 5, gen, likelihood="binary")
    p = torch.sigmoid(outs).mean(0)
    torch.testing.assert_close(probs, torch.cat([1 - p, p], dim=-1))
    model, opt, x = _setup(3)
    outs = _sampled_outputs(model, opt, x, 5, seed=2)
    gen = torch.Generator().manual_seed(2)
    torch.testing.assert_close(
        opt.sampled_predict(model, x, 5, gen), torch.softmax(outs, -1).mean(0)
    )
    with pytest.raises(InputError, match="unknown likelihood"):
        opt.sampled_predict(model, x, 2, likelihood="ordinal")
    with pytest.raises(InputError, match="one output"):
        opt.sampled_predict(model, x, 2, likelihood="binary")
    with pytest.raises(InputError, match="sigma_noise applies"):
        opt.sampled_predict(model, x, 2, sigma_noise=1.0)
