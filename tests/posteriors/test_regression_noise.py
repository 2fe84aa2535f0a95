"""Regression noise σ: the evidence's closed form on linear regression, and σ² in every predictive."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from tacitbayes.errors import InputError
from tacitbayes.posteriors import Laplace, ProjectedPosterior

DT = torch.float64


def _linear_data(n: int = 60, d: int = 4, noise: float = 0.3) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(n, d, generator=gen, dtype=DT)
    w = torch.randn(d, generator=gen, dtype=DT)
    y = X @ w + noise * torch.randn(n, generator=gen, dtype=DT)
    return X, y


def _mackay_fixed_point(X: Tensor, y: Tensor) -> tuple[Tensor, float, float]:
    """Type-II maximum likelihood of Bayesian linear regression, dense: (w, α, σ) at its fixed point.

    w = (XᵀX/σ² + αI)⁻¹Xᵀy/σ², γ = Σ λ_i/(λ_i + α) (λ of XᵀX/σ²), α = γ/‖w‖², σ² = ‖y − Xw‖²/(N − γ).
    """
    n, d = X.shape
    alpha, var = 1.0, 1.0
    eig = torch.linalg.eigvalsh(X.T @ X)
    for _ in range(10000):
        w = torch.linalg.solve(X.T @ X / var + alpha * torch.eye(d, dtype=DT), X.T @ y / var)
        gamma = float((eig / var / (eig / var + alpha)).sum())
        new_alpha = gamma / float(w @ w)
        new_var = float((y - X @ w).square().sum()) / (n - gamma)
        if abs(new_alpha - alpha) < 1e-14 * alpha and abs(new_var - var) < 1e-14 * var:
            break
        alpha, var = new_alpha, new_var
    w = torch.linalg.solve(X.T @ X / var + alpha * torch.eye(d, dtype=DT), X.T @ y / var)
    return w, alpha, math.sqrt(var)


@pytest.mark.parametrize("structure", ["last_layer", "kron", "diag"])
def test_sigma_and_prior_by_marglik_match_closed_form(structure: str) -> None:
    X, y = _linear_data()
    if structure == "diag":  # the diagonal GGN is exact for orthogonal columns
        q, _ = torch.linalg.qr(X)
        X = q * math.sqrt(X.shape[0])
    w, alpha, sigma = _mackay_fixed_point(X, y)
    model = nn.Linear(X.shape[1], 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w[None])
    la = Laplace(model, "regression", structure).fit([(X, y[:, None])])
    assert la.estimate_sigma
    residual = float((y - X @ w).square().sum())
    assert la.sigma_noise == pytest.approx(math.sqrt(residual / X.shape[0]), rel=1e-10)  # σ_ML
    delta = la.optimize_prior_precision(method="marglik")
    assert float(delta) == pytest.approx(alpha, rel=1e-5)
    assert la.sigma_noise == pytest.approx(sigma, rel=1e-5)
    assert la.tuning["sigma"] == la.sigma_noise
    # the predictive variance carries σ²
    mean, var = la.predict(X[:5], n_samples=4)
    assert bool((var >= sigma**2).all())
    torch.testing.assert_close(mean, model(X[:5]).detach(), rtol=0.5, atol=1.0)


def test_given_sigma_is_kept_and_checked() -> None:
    X, y = _linear_data()
    model = nn.Linear(X.shape[1], 1).double()
    la = Laplace(model, "regression", "kron", sigma_noise=0.7).fit([(X, y)])
    la.optimize_prior_precision(method="marglik")
    assert la.sigma_noise == 0.7 and not la.estimate_sigma
    # the evidence at another σ is the evidence of a posterior built with that σ
    other = Laplace(model, "regression", "kron", sigma_noise=1.3).fit([(X, y)])
    d = la.prior_precision
    torch.testing.assert_close(
        la.log_marginal_likelihood(d, sigma_noise=1.3), other.log_marginal_likelihood(d)
    )
    with pytest.raises(InputError, match="sigma_noise"):
        Laplace(model, "classification", sigma_noise=0.5)
    with pytest.raises(InputError, match="sigma_noise"):
        Laplace(model, "regression", sigma_noise=-1.0)


def test_projected_regression_noise() -> None:
    X, y = _linear_data(n=40, d=5)
    model = nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 2)).double()  # P = 26 < N·O
    Y = torch.stack([y, -0.5 * y], 1)
    data = [(X[:25], Y[:25]), (X[25:], Y[25:])]
    post = ProjectedPosterior(model, "regression", tol=1e-10, max_iters=500).fit(data)
    post.optimize_prior_precision()
    with torch.no_grad():
        residual = float((model(X) - Y).square().sum())
    J = torch.func.jacrev(
        lambda *p: torch.func.functional_call(
            model, dict(zip([n for n, _ in model.named_parameters()], p, strict=True)), (X,)
        ).reshape(-1),
        argnums=tuple(range(4)),
    )(*[p.detach() for p in model.parameters()])
    rank = int(torch.linalg.matrix_rank(torch.cat([j.reshape(80, -1) for j in J], 1)))
    expected = math.sqrt(residual / (80 - rank))
    # rank J by Hutchinson from 32 samples: a few percent
    assert post.sigma_noise == pytest.approx(expected, rel=0.1)
    mean, var = post.predict(X[:4])
    assert mean.shape == var.shape == (4, 2)
    assert bool((var >= post.sigma_noise**2).all())
    # the rows of a 2-output regression are values, not probabilities
    assert not torch.allclose(mean.sum(-1), torch.ones(4, dtype=DT))
    fixed = ProjectedPosterior(model, "regression", sigma_noise=0.25).fit(data)
    _, var_fixed = fixed.predict(X[:4])
    assert bool((var_fixed >= 0.0625).all()) and fixed.sigma_noise == 0.25


def test_projected_warns_when_the_network_interpolates() -> None:
    X, y = _linear_data(n=6, d=5)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).double()  # P = 57 > N
    post = ProjectedPosterior(model, "regression", tol=1e-10).fit([(X, y)])
    with pytest.warns(RuntimeWarning, match="sigma_noise"):
        post.predict(X[:2])


def test_projected_validation_tuning_for_regression_uses_gaussian_nll() -> None:
    X, y = _linear_data(n=40, d=5)
    # P = 113 > N = 40: a null space to sample (with P < N·O, J has full column rank and 𝒫 = 0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    post = ProjectedPosterior(model, "regression", sigma_noise=0.3, tol=1e-10).fit([(X, y)])
    grid = [0.1, 1.0, 10.0]
    chosen = post.optimize_prior_precision("validation", [(X, y)], grid=grid, n_samples=8)
    scores = []
    for alpha in grid:
        post.prior_precision = alpha
        mean, var = post.predict(X, n_samples=8)
        scores.append(
            float((0.5 * (torch.log(2 * math.pi * var) + (y[:, None] - mean) ** 2 / var)).mean())
        )
    assert chosen == grid[min(range(3), key=scores.__getitem__)]
