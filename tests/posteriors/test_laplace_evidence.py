"""Linear-Gaussian regression: the Laplace evidence is exact and its maximiser is the evidence's."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor, nn

from tacitbayes.posteriors.laplace import Laplace

DT = torch.float64
SIGMA = 0.7
N, D, N_OUT = 30, 4, 2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def problem() -> tuple[Tensor, Tensor, Tensor]:
    """Inputs X (N, D), features Φ = [X, 1] and targets y (N, O) from a noisy linear map."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=g, dtype=DT)
    phi = torch.cat([X, torch.ones(N, 1, dtype=DT)], 1)
    W = torch.randn(D + 1, N_OUT, generator=g, dtype=DT)
    y = phi @ W + SIGMA * torch.randn(N, N_OUT, generator=g, dtype=DT)
    return X, phi, y


def exact_log_evidence(phi: Tensor, y: Tensor, delta: float) -> float:
    """Σ_o log N(y_o; 0, σ²I + ΦΦᵀ/δ) (the outputs are independent given the prior)."""
    cov = SIGMA**2 * torch.eye(len(phi), dtype=DT) + phi @ phi.T / delta
    dist = torch.distributions.MultivariateNormal(torch.zeros(len(phi), dtype=DT), cov)
    return float(dist.log_prob(y.T).sum())


def map_model(X: Tensor, phi: Tensor, y: Tensor, delta: float) -> nn.Linear:
    """nn.Linear at the MAP (ΦᵀΦ/σ² + δI)⁻¹ Φᵀy/σ² of the prior N(0, δ⁻¹I)."""
    A = phi.T @ phi / SIGMA**2 + delta * torch.eye(D + 1, dtype=DT)
    W = torch.linalg.solve(A, phi.T @ y / SIGMA**2)  # (D + 1, O)
    model = nn.Linear(D, N_OUT).to(DT)
    with torch.no_grad():
        model.weight.copy_(W[:D].T)
        model.bias.copy_(W[D])
    return model


def laplace(model: nn.Module, X: Tensor, y: Tensor, structure: str, delta: float) -> Laplace:
    la = Laplace(model, "regression", structure, prior_precision=delta, sigma_noise=SIGMA)
    return la.fit([(X[:17], y[:17]), (X[17:], y[17:])])


@pytest.mark.parametrize("structure", ["last_layer", "kron"])
def test_laplace_evidence_is_exact_at_the_map(problem, structure: str) -> None:
    X, phi, y = problem
    for delta in (0.05, 2.3):
        la = laplace(map_model(X, phi, y, delta), X, y, structure, delta)
        got = float(la.log_marginal_likelihood())
        assert got == pytest.approx(exact_log_evidence(phi, y, delta), rel=1e-11, abs=1e-9)
        # with θ* fixed, the Laplace evidence is a lower bound of the exact one, tangent at δ
        for other in (0.01, 0.5, 10.0):
            assert (
                float(la.log_marginal_likelihood(other)) <= exact_log_evidence(phi, y, other) + 1e-9
            )


@pytest.mark.parametrize("structure", ["last_layer", "kron"])
def test_marglik_finds_the_exact_evidence_maximiser(problem, structure: str) -> None:
    X, phi, y = problem
    res = minimize_scalar(
        lambda t: -exact_log_evidence(phi, y, math.exp(t)),
        bounds=(-10, 10),
        method="bounded",
        options={"xatol": 1e-10},
    )
    best = math.exp(res.x)
    la = laplace(map_model(X, phi, y, best), X, y, structure, 1.0)
    found = float(la.optimize_prior_precision("marglik"))
    assert found == pytest.approx(best, rel=1e-4)
