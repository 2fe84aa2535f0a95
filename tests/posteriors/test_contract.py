"""One posterior contract: the same surface, one likelihood table, one name per tuning method."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tacitbayes as tb
from tacitbayes.errors import InputError
from tacitbayes.posteriors.contract import Posterior, tuning_method


def _regression():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    y = x.sum(1, keepdim=True).sin() + 0.1 * torch.randn(40, 1, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()
    return model, x, y


@pytest.mark.parametrize(
    "make",
    [lambda m: tb.Laplace(m, "regression"), lambda m: tb.ProjectedPosterior(m, "regression")],
)
def test_every_posterior_meets_the_contract_and_takes_both_tuning_names(make) -> None:
    model, x, y = _regression()
    for method in ("marglik", "evidence"):
        post = make(model)
        assert isinstance(post, Posterior)
        post.fit([(x, y)])
        post.optimize_prior_precision(method)
        state = post.state_dict()
        post.load_state_dict(state)
        assert post.sample(3).shape[0] == 3


def test_unknown_tuning_method_names_the_aliases() -> None:
    assert tuning_method("evidence") == "marglik"
    with pytest.raises(InputError, match="aliases: evidence = marglik"):
        tuning_method("bayes")


def test_projected_regression_predicts_map_s_output_in_closed_form() -> None:
    model, x, y = _regression()
    post = tb.ProjectedPosterior(model, "regression").fit([(x, y)])
    post.optimize_prior_precision()
    xt = x[:7] + 0.5  # off the training inputs, where the samples do move the outputs
    mean, var = post.predict(xt)
    with torch.no_grad():
        torch.testing.assert_close(mean, model(xt), rtol=1e-12, atol=1e-12)
    cov = post.linearized_covariance(xt)
    torch.testing.assert_close(var, cov.diagonal(dim1=-2, dim2=-1) + post.noise_variance())
    mc_mean, _ = post.predict(xt, exact=False)
    assert not torch.allclose(mc_mean, mean, rtol=1e-9, atol=0)  # the Monte Carlo mean differs
