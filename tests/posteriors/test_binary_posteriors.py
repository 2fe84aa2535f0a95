"""One-logit binary classifiers (Bernoulli likelihood) in Laplace and the projected posterior."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from tacitbayes.errors import InputError
from tacitbayes.posteriors import Laplace, ProjectedPosterior

DT = torch.float64


def _setup() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, generator=gen, dtype=DT)
    y = (x[:, 0] + 0.5 * torch.randn(40, generator=gen, dtype=DT) > 0).long()
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y.to(DT))
        loss.backward()
        opt.step()
    return model, x, y


@pytest.mark.parametrize("structure", ["diag", "kron", "last_layer"])
def test_laplace_binary_predicts_two_column_probabilities(structure: str) -> None:
    model, x, y = _setup()
    la = Laplace(model, "binary", structure).fit([(x[:20], y[:20]), (x[20:], y[20:])])
    la.optimize_prior_precision(method="marglik")
    probs = la.predict(x[:7], n_samples=16)
    assert probs.shape == (7, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(7, dtype=DT))
    with torch.no_grad():
        p_map = torch.sigmoid(model(x[:7])).squeeze(-1)
    la.prior_precision = 1e10  # a point mass at θ*: the predictive is the MAP's
    torch.testing.assert_close(la.predict(x[:7], n_samples=4)[:, 1], p_map, rtol=0, atol=1e-3)
    assert torch.isfinite(la.log_marginal_likelihood())


def test_laplace_binary_last_layer_covariance_is_dense_inverse() -> None:
    model, x, y = _setup()
    delta = 0.7
    la = Laplace(model, "binary", "last_layer", prior_precision=delta).fit([(x, y)])
    head = dict(model[2].named_parameters())
    names = list(head)

    def out(*p: Tensor) -> Tensor:
        return functional_call(model[2], dict(zip(names, p, strict=True)), (features,)).squeeze(-1)

    with torch.no_grad():
        features = model[1](model[0](x))
    jac = jacrev(out, argnums=(0, 1))(*[t.detach() for t in head.values()])
    J = torch.cat([j.reshape(40, -1) for j in jac], 1)
    p = torch.sigmoid(model(x).detach().squeeze(-1))
    precision = J.T @ ((p * (1 - p))[:, None] * J) + delta * torch.eye(J.shape[1], dtype=DT)
    torch.testing.assert_close(la.posterior_variance(), torch.diagonal(torch.linalg.inv(precision)))


def test_projected_binary() -> None:
    model, x, y = _setup()
    post = ProjectedPosterior(model, "binary", tol=1e-8).fit([(x, y)])
    post.optimize_prior_precision()
    probs = post.predict(x[:5], n_samples=8)
    assert probs.shape == (5, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, dtype=DT))
    chosen = post.optimize_prior_precision("validation", [(x, y)], grid=[1.0, 10.0], n_samples=8)
    assert chosen in (1.0, 10.0)


def test_one_logit_under_classification_points_to_binary() -> None:
    model, x, y = _setup()
    with pytest.raises(InputError, match="binary"):
        Laplace(model, "classification", "diag").fit([(x, y)])
    with pytest.raises(InputError, match="binary"):
        ProjectedPosterior(model, "classification").fit([(x, y)])
