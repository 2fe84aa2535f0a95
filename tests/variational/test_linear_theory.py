"""The IBVI theorem on overparametrized linear regression (METHODS.md §2).

GD / GD with momentum / one-sample SGD on the expected loss, started at the prior,
converge to μ* = μ₀ + X⁺(y − Xμ₀), S* = (I − X⁺X)S₀; among all expected-loss
minimisers that limit is the closest to the prior in 2-Wasserstein distance.
Checked on the closed form and through ``VariationalModel`` on an ``nn.Linear``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import Tensor, nn

from tacitbayes.errors import InputError
from tacitbayes.variational import (
    VariationalModel,
    expected_squared_loss,
    gaussian_w2,
    linear_regression_limit,
    null_space_projector,
)

pytestmark = pytest.mark.usefixtures("one_thread")


DT = torch.float64
N, D = 10, 30


@pytest.fixture
def problem() -> tuple[Tensor, Tensor]:
    """X = U diag(σ) Vᵀ ∈ R^{10×30} (d > n), random singular vectors, σ in [0.7, 1]; targets y."""
    gen = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(N, N, generator=gen, dtype=DT))
    V, _ = torch.linalg.qr(torch.randn(D, N, generator=gen, dtype=DT))
    sigma = torch.linspace(0.7, 1.0, N, dtype=DT)
    X = U @ torch.diag(sigma) @ V.T
    y = torch.randn(N, generator=gen, dtype=DT)
    return X, y


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _prior(rank: int = D, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    s = 1 / D**0.5
    return torch.randn(D, generator=gen, dtype=DT) * s, torch.randn(
        D, rank, generator=gen, dtype=DT
    ) * (s / rank**0.5)


# ----------------------------------------------------------------------- the closed form


def test_limit_solves_and_projects(problem):
    X, y = problem
    mu0, S0 = _prior()
    mu, S = linear_regression_limit(X, y, mu0, S0)
    assert mu.dtype == DT and mu.shape == (D,) and S.shape == (D, D)
    torch.testing.assert_close(X @ mu, y, atol=1e-12, rtol=0)  # interpolates
    torch.testing.assert_close(X @ S, torch.zeros(N, D, dtype=DT), atol=1e-12, rtol=0)
    proj = null_space_projector(X)
    torch.testing.assert_close(S, proj @ S0)  # prior kept on the null space
    torch.testing.assert_close(proj @ (mu - mu0), torch.zeros(D, dtype=DT), atol=1e-12, rtol=0)
    # float32 inputs give the same float64 answer
    mu32, _ = linear_regression_limit(X.float(), y.float(), mu0.float(), S0.float())
    assert mu32.dtype == DT and _rel(mu32, mu) < 1e-5


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_gd_on_closed_form_converges_to_limit(problem, momentum):
    X, y = problem
    mu0, S0 = _prior(rank=7)
    mu_star, S_star = linear_regression_limit(X, y, mu0, S0)
    mu = mu0.clone().requires_grad_()
    S = S0.clone().requires_grad_()
    opt = torch.optim.SGD([mu, S], lr=0.2 if momentum == 0 else 0.05, momentum=momentum)
    for _ in range(300):
        opt.zero_grad()
        expected_squared_loss(X, y, mu, S).backward()
        opt.step()
    assert _rel(mu.detach(), mu_star) < 1e-4
    assert _rel(S.detach(), S_star) < 1e-4


def _vnet(seed: int = 1) -> VariationalModel:
    torch.manual_seed(seed)
    return VariationalModel(nn.Linear(D, 1, bias=False).double(), rank=D, init=True)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_wrapper_gd_on_closed_form_converges(problem, momentum):
    """The wrapper's own μ and S, with its optimizer (S at lr/R), reach the limit."""
    X, y = problem
    vnet = _vnet()
    assert vnet.layers == ("",)
    mu0, S0 = vnet.mean("").detach().clone(), vnet.factor("").detach().clone()
    mu_star, S_star = linear_regression_limit(X, y, mu0, S0)
    opt = vnet.optimizer(torch.optim.SGD, lr=0.8 if momentum == 0 else 0.2, momentum=momentum)
    for _ in range(600 if momentum == 0 else 300):
        opt.zero_grad()
        expected_squared_loss(X, y, vnet.mean(""), vnet.factor("")).backward()
        opt.step()
    assert _rel(vnet.mean("").detach(), mu_star) < 1e-4
    assert _rel(vnet.factor("").detach(), S_star) < 1e-4


def test_wrapper_one_sample_sgd_converges(problem):
    """One reparametrized sample per step (the paper's estimator), momentum 0.9."""
    X, y = problem
    vnet = _vnet()
    mu0, S0 = vnet.mean("").detach().clone(), vnet.factor("").detach().clone()
    mu_star, S_star = linear_regression_limit(X, y, mu0, S0)
    opt = vnet.optimizer(torch.optim.SGD, lr=0.5, momentum=0.9)
    gen = torch.Generator().manual_seed(3)
    for _ in range(1300):
        opt.zero_grad()
        vnet.expected_loss(X, y, loss="mse", generator=gen).backward()
        opt.step()
    mu, S = vnet.mean("").detach(), vnet.factor("").detach()
    assert _rel(mu, mu_star) < 1e-4
    assert _rel(S, S_star) < 1e-4
    # the trained q is closer to the prior than other minimisers of the expected loss
    cov0, proj = S0 @ S0.T, null_space_projector(X)
    w2_trained = gaussian_w2(mu, S @ S.T, mu0, cov0)
    for _ in range(5):
        xi, Xi = torch.randn(D, generator=gen, dtype=DT), torch.randn(D, D, generator=gen, dtype=DT)
        S_other = proj @ (S0 + 0.1 * Xi / D**0.5)
        w2_other = gaussian_w2(mu_star + 0.1 * proj @ xi, S_other @ S_other.T, mu0, cov0)
        assert w2_trained < w2_other


def test_mc_expected_loss_is_unbiased(problem):
    X, y = problem
    vnet = _vnet(seed=2)
    exact = expected_squared_loss(X, y, vnet.mean(""), vnet.factor("")).detach() / (2 * N)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        draws = torch.stack(
            [vnet.expected_loss(X, y, loss="mse", generator=gen) for _ in range(4000)]
        )
    se = float(draws.std() / len(draws) ** 0.5)
    assert abs(float(draws.mean()) - float(exact)) < 4 * se
    with torch.no_grad():  # n_samples averages the same draws
        g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
        avg = vnet.expected_loss(X, y, n_samples=3, loss="mse", generator=g1)
        singles = [vnet.expected_loss(X, y, loss="mse", generator=g2) for _ in range(3)]
    torch.testing.assert_close(avg, sum(singles) / 3)


# ------------------------------------------------------------------- W₂ to the prior


def _w2_scipy(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₂^{1/2}Σ₁Σ₂^{1/2})^{1/2}) with scipy.linalg.sqrtm (Σ₂ = prior)."""
    c1, c2 = cov1.numpy(), cov2.numpy()
    root2 = np.real(scipy.linalg.sqrtm(c2))
    cross = np.real(scipy.linalg.sqrtm(root2 @ c1 @ root2))
    w2sq = float((mu1 - mu2).pow(2).sum()) + np.trace(c1 + c2 - 2 * cross)
    return max(w2sq, 0.0) ** 0.5


def test_limit_is_closest_minimiser_to_prior(problem):
    X, y = problem
    mu0, S0 = _prior()
    cov0 = S0 @ S0.T
    mu_star, S_star = linear_regression_limit(X, y, mu0, S0)
    proj = null_space_projector(X)
    w2_star = gaussian_w2(mu_star, S_star @ S_star.T, mu0, cov0)
    assert w2_star == pytest.approx(_w2_scipy(mu_star, S_star @ S_star.T, mu0, cov0), rel=1e-5)
    # the Bures term has the closed form ‖S*ᵀS₀‖_* (nuclear norm) for Σ = AAᵀ, Σ₀ = S₀S₀ᵀ
    bures = torch.trace(S_star @ S_star.T + cov0) - 2 * torch.linalg.matrix_norm(
        S_star.T @ S0, "nuc"
    )
    expected = float((mu_star - mu0).pow(2).sum() + bures) ** 0.5
    assert w2_star == pytest.approx(expected, rel=1e-6)
    gen = torch.Generator().manual_seed(11)
    for scale in (1e-3, 1e-2, 0.1, 1.0):
        for _ in range(5):
            xi = torch.randn(D, generator=gen, dtype=DT) * scale
            Xi = torch.randn(D, D, generator=gen, dtype=DT) * scale / D**0.5
            mu_other = mu_star + proj @ xi
            S_other = proj @ (S0 + Xi)
            # another minimiser of the expected loss (zero loss) ...
            assert float(expected_squared_loss(X, y, mu_other, S_other)) < 1e-20
            # ... farther from the prior
            w2_other = gaussian_w2(mu_other, S_other @ S_other.T, mu0, cov0)
            assert w2_other > w2_star
            assert _w2_scipy(mu_other, S_other @ S_other.T, mu0, cov0) > w2_star


# --------------------------------------------------------------------- bad input


def test_bad_shapes_raise(problem):
    X, y = problem
    mu0, S0 = _prior()
    with pytest.raises(InputError, match="X must have shape"):
        linear_regression_limit(X[0], y, mu0, S0)
    with pytest.raises(InputError, match="y must have shape"):
        linear_regression_limit(X, y[:3], mu0, S0)
    with pytest.raises(InputError, match="mu must have shape"):
        linear_regression_limit(X, y, mu0[:5], S0)
    with pytest.raises(InputError, match="S must have shape"):
        linear_regression_limit(X, y, mu0, S0[:5])
    with pytest.raises(InputError, match="NaN"):
        linear_regression_limit(X, y * float("nan"), mu0, S0)
    with pytest.raises(InputError, match="floating-point"):
        linear_regression_limit(X, y.long(), mu0, S0)
