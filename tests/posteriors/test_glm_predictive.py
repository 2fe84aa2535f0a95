"""Closed-form GLM predictives: Σ applied by each backend, J Σ Jᵀ, probit and Laplace bridge."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from tacitbayes.curvature import GGN, KFAC
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel, flatten, unflatten
from tacitbayes.posteriors.glm import (
    bridge_concentration,
    dirichlet_to_gaussian,
    functional_covariance,
    glm_predictive,
    laplace_bridge,
    probit,
)
from tacitbayes.posteriors.laplace import Laplace
from tacitbayes.posteriors.laplace_curvature import module_groups, per_parameter

DT = torch.float64
STRUCTURES = ["diag", "kron", "last_layer"]
LAMBDA = math.sqrt(math.pi / 8)  # σ(a) ≈ Φ(λa)
MC = 10**6

pytestmark = pytest.mark.usefixtures("one_thread")


def make_problem() -> tuple[nn.Module, list[tuple[Tensor, Tensor]], Tensor]:
    """An MLP 4→6→LayerNorm→3 (a non-Linear owner for kron's diagonal blocks), 12 examples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
    x, y = torch.randn(12, 4, dtype=DT), torch.randint(0, 3, (12,))
    return model, [(x[:7], y[:7]), (x[7:], y[7:])], torch.randn(5, 4, dtype=DT)


def fitted(structure: str, model: nn.Module, data: list, scale_up: int = 30) -> Laplace:
    """A Laplace posterior with one δ per group (different values) and curvature scale 30/12."""
    la = Laplace(model, "classification", structure=structure)
    la.fit(data, n_data=scale_up)
    la.prior_precision = torch.linspace(0.5, 2.0, len(la.groups), dtype=DT)
    return la


def dense_covariance(la: Laplace, model: nn.Module, data: list) -> Tensor:
    """(sH + diag δ)⁻¹ with H built densely by the reference operators."""
    names = list(la.param_names)
    if la.structure == "last_layer":
        H = GGN(model, "cross_entropy", data, names, reduction="sum").to_dense()
        delta = la.prior_precision.expand(H.shape[0])
    else:
        if la.structure == "diag":
            H = torch.diag(GGN(model, "cross_entropy", data, reduction="sum").to_dense().diagonal())
        else:
            H = KFAC(model, "cross_entropy", data, reduction="sum").to_dense()
        delta = per_parameter(la.prior_precision, module_groups(model, names)[1])
    return torch.linalg.inv(la.curvature.scale * H + torch.diag(delta))


def dense_jacobian(model: nn.Module, names: list[str], x: Tensor) -> Tensor:
    """J(x_n) for every example by autograd on the flat parameters: (N, O, P)."""
    fmodel = FunctionalModel(model, names)
    params = fmodel.params()
    jac = torch.autograd.functional.jacobian(
        lambda t: fmodel(unflatten(t, params), x), flatten(params)
    )
    return jac


@pytest.mark.parametrize("structure", STRUCTURES)
def test_covariance_apply_is_the_dense_inverse(structure: str) -> None:
    model, data, _ = make_problem()
    la = fitted(structure, model, data)
    sigma = dense_covariance(la, model, data)
    V = torch.randn(la.n_params, 5, dtype=DT)
    delta = la._deltas(None)
    applied = la.curvature.covariance_apply(V, delta)
    torch.testing.assert_close(applied, sigma @ V, rtol=1e-9, atol=1e-12)
    # and the sampler's covariance T Tᵀ is the same Σ
    T = la.curvature.sample_transform(torch.eye(la.n_params, dtype=DT), delta)
    torch.testing.assert_close(T @ T.T, sigma, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_functional_covariance_is_j_sigma_jt(structure: str) -> None:
    model, data, x = make_problem()
    la = fitted(structure, model, data)
    sigma = dense_covariance(la, model, data)
    J = dense_jacobian(model, list(la.param_names), x)
    expected = J @ sigma @ J.mT
    mean, cov = la.glm_predictive(x)
    torch.testing.assert_close(mean, model(x).detach())
    torch.testing.assert_close(cov, expected, rtol=1e-9, atol=1e-12)
    # one example per chunk (a tiny working budget) gives the same blocks
    delta = la._deltas(None)
    chunked = functional_covariance(
        model,
        x,
        lambda V: la.curvature.covariance_apply(V, delta),
        la.param_names,
        max_bytes=1,
    )
    torch.testing.assert_close(chunked, expected, rtol=1e-9, atol=1e-12)


def test_keyword_inputs_and_bad_arguments() -> None:
    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))

        def forward(self, features: Tensor) -> Tensor:
            return self.net(features)

    torch.manual_seed(1)
    model = Keyword().to(DT)
    x = torch.randn(6, 3, dtype=DT)
    names = ["net.2.weight", "net.2.bias"]
    apply = lambda V: 0.3 * V  # noqa: E731  Σ = 0.3 I
    mean, cov = glm_predictive(model, {"features": x}, apply, names)
    J = dense_jacobian(model.net, ["2.weight", "2.bias"], x)
    torch.testing.assert_close(cov, 0.3 * J @ J.mT)
    torch.testing.assert_close(mean, model(x).detach())
    with pytest.raises(InputError, match="covariance_apply returned"):
        glm_predictive(model, {"features": x}, lambda V: V[:-1], names)
    with pytest.raises(InputError, match="batch dimension"):
        glm_predictive(model, [x], apply, names)
    with pytest.raises(InputError, match="fits neither"):
        probit(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(InputError, match="K ≥ 2"):
        laplace_bridge(torch.zeros(2, 1), torch.ones(2, 1))
    with pytest.raises(InputError, match="> 0"):
        laplace_bridge(torch.zeros(2, 3), torch.zeros(2, 3))


def linearised_moments(
    la: Laplace, J: Tensor, n_samples: int, chunk: int = 100_000
) -> tuple[Tensor, Tensor]:
    """Monte-Carlo mean and covariance of J δθ, δθ ~ N(0, Σ) by the posterior's sampler."""
    gen = torch.Generator().manual_seed(123)
    n, o, _ = J.shape
    total = torch.zeros(n, o, dtype=DT)
    outer = torch.zeros(n, o, o, dtype=DT)
    for _ in range(n_samples // chunk):
        shifts = torch.einsum("sp,nop->sno", la.sample_deltas(chunk, gen), J)
        total += shifts.sum(0)
        outer += torch.einsum("sni,snj->nij", shifts, shifts)
    mean = total / n_samples
    return mean, outer / n_samples - mean[:, :, None] * mean[:, None, :]


@pytest.mark.parametrize("structure", STRUCTURES)
def test_closed_form_moments_match_monte_carlo_on_a_linear_gaussian_model(structure: str) -> None:
    """Linear regression y = Wx + b + ε: the linearisation is exact, the Laplace is the posterior."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 2)).to(DT)
    x = torch.randn(200, 3, dtype=DT)  # output variances ≈ 0.04: MC errors ~2e-4
    y = x @ torch.randn(3, 2, dtype=DT) + 0.3 * torch.randn(200, 2, dtype=DT)
    la = Laplace(model, "regression", structure=structure, sigma_noise=0.5, prior_precision=2.0)
    la.fit([(x, y)])
    x_test = 2 * torch.randn(4, 3, dtype=DT)
    mean, cov = la.glm_predictive(x_test)
    J = dense_jacobian(model, list(la.param_names), x_test)
    mc_mean, mc_cov = linearised_moments(la, J, MC)
    assert float(cov.diagonal(dim1=1, dim2=2).max()) > 1e-2  # not a trivial comparison
    torch.testing.assert_close(mc_mean, torch.zeros_like(mean), rtol=0, atol=1e-3)
    torch.testing.assert_close(mc_cov, cov, rtol=0, atol=1e-3)
    pred_mean, pred_var = la(x_test)
    torch.testing.assert_close(pred_mean, model(x_test).detach())
    torch.testing.assert_close(pred_var, cov.diagonal(dim1=1, dim2=2) + 0.25)


def test_closed_form_moments_match_monte_carlo_on_a_network() -> None:
    model, data, x = make_problem()
    la = fitted("kron", model, data)
    la.prior_precision = 100.0  # logit variances ≤ 0.1: MC errors ~3e-4 (std √(v/n))
    mean, cov = la.glm_predictive(x)
    J = dense_jacobian(model, list(la.param_names), x)
    mc_mean, mc_cov = linearised_moments(la, J, MC)
    assert 1e-2 < float(cov.diagonal(dim1=1, dim2=2).max()) < 0.1
    torch.testing.assert_close(mc_mean, torch.zeros_like(mean), rtol=0, atol=1e-3)
    torch.testing.assert_close(mc_cov, cov, rtol=0, atol=1e-3)


def test_binary_probit_matches_the_exact_gaussian_identity() -> None:
    """E[Φ(λf)] = Φ(λμ/√(1 + λ²v)) for f ~ N(μ, v): the probit's scaled logit reproduces it."""
    mean = torch.tensor([[-2.0], [0.3], [1.5], [0.0]], dtype=DT)
    var = torch.tensor([[0.5], [4.0], [9.0], [1.0]], dtype=DT)
    probs = probit(mean, var)
    assert probs.shape == (4, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, dtype=DT))
    scaled = torch.logit(probs[:, 1:])  # μ / √(1 + (π/8) v)
    exact = torch.special.ndtr(LAMBDA * scaled)
    gen = torch.Generator().manual_seed(0)
    f = mean.T + var.T.sqrt() * torch.randn(MC, 4, dtype=DT, generator=gen)
    mc = torch.special.ndtr(LAMBDA * f).mean(0)
    torch.testing.assert_close(mc, exact.squeeze(1), rtol=0, atol=1e-3)
    # a (N, 1, 1) covariance works like the variance
    torch.testing.assert_close(probit(mean, var[:, :, None]), probs)


def softmax_average(mean: Tensor, factor: Tensor, n: int = MC, chunk: int = 200_000) -> Tensor:
    """E[softmax(μ + F z)], z ~ N(0, I), by n Monte-Carlo samples (per row of μ)."""
    gen = torch.Generator().manual_seed(7)
    total = torch.zeros_like(mean)
    for _ in range(n // chunk):
        z = torch.randn(chunk, *mean.shape, dtype=DT, generator=gen)
        total += torch.softmax(mean + torch.einsum("nij,snj->sni", factor, z), -1).sum(0)
    return total / n


def test_multiclass_probit_matches_monte_carlo_at_small_variance() -> None:
    """Regime: |μ_k| ≤ 2, K = 4, logit variances ≤ 1e-3 (both sides O(v) from softmax(μ))."""
    torch.manual_seed(3)
    mean = (2 * torch.rand(3, 4, dtype=DT) - 1) * 2
    A = torch.randn(3, 4, 4, dtype=DT)
    cov = A @ A.mT
    cov = 1e-3 * cov / cov.diagonal(dim1=1, dim2=2).amax(-1)[:, None, None]
    mc = softmax_average(mean, torch.linalg.cholesky(cov))
    torch.testing.assert_close(probit(mean, cov), mc, rtol=0, atol=1e-3)
    assert float((torch.softmax(mean, -1) - mc).abs().max()) > 1e-5  # the variance shows


def test_bridge_matches_monte_carlo_for_concentrated_dirichlets() -> None:
    """Regime: Gaussians of Dirichlets with α₀ ≈ 2000 (variances ≲ 1e-2 in the softmax basis)."""
    torch.manual_seed(4)
    alpha = torch.rand(3, 4, dtype=DT) * 900 + 100
    mean, cov = dirichlet_to_gaussian(alpha)
    C = torch.eye(4, dtype=DT) - 1 / 4
    factor = C @ torch.diag_embed(alpha.rsqrt())  # C D^{-1/2}: covariance C D⁻¹ C
    mc = softmax_average(mean, factor)
    torch.testing.assert_close(laplace_bridge(mean, cov), mc, rtol=0, atol=1e-3)
    torch.testing.assert_close(laplace_bridge(mean, cov), alpha / alpha.sum(-1, keepdim=True))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_bridge_round_trip_recovers_the_dirichlet(k: int) -> None:
    torch.manual_seed(k)
    alpha = torch.rand(6, k, dtype=DT) * 20 + 0.2
    mean, cov = dirichlet_to_gaussian(alpha)
    # the documented diagonal: (1/α_k)(1 − 2/K) + (1/K²) Σ_l 1/α_l, and a sum-zero mean
    diag = (1 - 2 / k) / alpha + alpha.reciprocal().sum(-1, keepdim=True) / k**2
    torch.testing.assert_close(cov.diagonal(dim1=1, dim2=2), diag)
    torch.testing.assert_close(mean.sum(-1), torch.zeros(6, dtype=DT), rtol=0, atol=1e-12)
    torch.testing.assert_close(bridge_concentration(mean, diag), alpha, rtol=1e-12, atol=0)
    torch.testing.assert_close(bridge_concentration(mean, cov), alpha, rtol=1e-12, atol=0)
    # softmax(f + c1) = softmax(f): a shift of the mean and a covariance along 1 change nothing
    ones = torch.ones(k, k, dtype=DT)
    shifted = bridge_concentration(mean + 3.0, cov + 5.0 * ones)
    torch.testing.assert_close(shifted, alpha, rtol=1e-10, atol=0)
