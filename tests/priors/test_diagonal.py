"""Diagonal (EWC-style) Gaussian prior: penalty and posterior-as-prior against dense algebra."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tacitbayes.curvature import GGN
from tacitbayes.curvature.operators import ggn_diagonal
from tacitbayes.errors import InputError
from tacitbayes.functional import flatten, model_params
from tacitbayes.priors.diagonal import DiagonalGaussian, DiagonalPrior

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(12, 4, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (12,), generator=g
    )


def _theta(model: nn.Module) -> torch.Tensor:
    return flatten(model_params(model)).clone()


def _shift(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_penalty_and_gradient_match_dense_quadratic() -> None:
    model, data = _model(), _data()
    diag = ggn_diagonal(model, "cross_entropy", [data], reduction="sum")
    dense = GGN(model, "cross_entropy", [data], reduction="sum").to_dense()
    torch.testing.assert_close(diag, dense.diagonal())  # the exact GGN diagonal
    prior = DiagonalGaussian.from_curvature(diag, model, strength=3.0, delta=0.5)
    mu = _theta(model)
    _shift(model, 2)
    theta = _theta(model)
    precision = torch.diag(3.0 * dense.diagonal() + 0.5)
    expected = 0.5 * (theta - mu) @ precision @ (theta - mu)
    value = prior.penalty(model)
    torch.testing.assert_close(value, expected)
    value.backward()
    grads = flatten({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(grads, precision @ (theta - mu))


def test_with_curvature_accumulates_and_recentres() -> None:
    model = _model()
    d1 = ggn_diagonal(model, "cross_entropy", [_data(1)], reduction="sum")
    prior = DiagonalPrior.from_curvature(d1, model, strength=2.0, delta=0.1)
    _shift(model, 3)
    d2 = ggn_diagonal(model, "cross_entropy", [_data(4)], reduction="sum")
    post = prior.with_curvature(d2, model, scale=2.0)
    torch.testing.assert_close(post.precision, 0.1 + 2.0 * (d1 + d2))
    torch.testing.assert_close(post.mean, _theta(model))
    assert float(post.penalty(model).detach()) == 0.0
    # the old prior is unchanged
    torch.testing.assert_close(prior.precision, 0.1 + 2.0 * d1)


def test_isotropic_is_weight_decay() -> None:
    model = _model()
    prior = DiagonalGaussian.isotropic(model, 0.25)
    theta = _theta(model)
    torch.testing.assert_close(prior.penalty(model), 0.125 * theta.square().sum())
    assert prior.n_params == theta.numel() and "P=" in repr(prior)


def test_parameter_subset() -> None:
    model = _model()
    prior = DiagonalGaussian.isotropic(model, 1.0, param_names=["2.weight"])
    assert prior.param_names == ("2.weight",) and prior.n_params == 15
    expected = 0.5 * model[2].weight.square().sum()
    torch.testing.assert_close(prior.penalty(model), expected)


def test_bad_input() -> None:
    model = _model()
    n = _theta(model).numel()
    with pytest.raises(InputError, match="shape"):
        DiagonalGaussian.from_curvature(torch.ones(n + 1, dtype=torch.float64), model)
    with pytest.raises(InputError, match="non-negative"):
        DiagonalGaussian.from_curvature(-torch.ones(n, dtype=torch.float64), model)
    with pytest.raises(InputError, match="strength"):
        DiagonalGaussian.from_curvature(torch.ones(n, dtype=torch.float64), model, strength=-1.0)
    with pytest.raises(InputError, match="precision"):
        DiagonalGaussian.isotropic(model, float("inf"))
    prior = DiagonalGaussian.isotropic(model, 1.0)
    with pytest.raises(InputError, match="scale"):
        prior.with_curvature(torch.ones(n, dtype=torch.float64), model, scale=float("nan"))
    other = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    with pytest.raises(InputError, match="shapes"):
        prior.penalty(other)
    with pytest.raises(InputError, match="no parameter"):
        prior.penalty(nn.Linear(4, 3))
