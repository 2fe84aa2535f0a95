"""KroneckerGaussian against dense matrices: penalty, log det, samples, KL, curvature updates."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tacitbayes.curvature import KFAC
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel, flatten, model_params
from tacitbayes.linalg import KroneckerProduct, KroneckerProductSum
from tacitbayes.priors import KroneckerGaussian, ParameterLayout, kl_divergence

pytestmark = pytest.mark.usefixtures("one_thread")

RTOL = 1e-8


def _spd(n: int, gen: torch.Generator, shift: float = 0.5) -> torch.Tensor:
    x = torch.randn(n, n, dtype=torch.float64, generator=gen)
    return x @ x.T / n + shift * torch.eye(n, dtype=torch.float64)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _gaussian(model: nn.Module, n_terms: int, seed: int, tau: float = 1.0) -> KroneckerGaussian:
    gen = torch.Generator().manual_seed(seed)
    layout = ParameterLayout(model)
    means, precs = {}, {}
    for s in layout.slots:
        means[s.name] = torch.randn(s.n_out, s.d, dtype=torch.float64, generator=gen)
        precs[s.name] = KroneckerProductSum(
            [(_spd(s.n_out, gen), _spd(s.d, gen)) for _ in range(n_terms)]
        )
    return KroneckerGaussian(layout, means, precs, tau)


def _dense_precision(g: KroneckerGaussian) -> torch.Tensor:
    """Block-diagonal Λ in flat parameter order."""
    out = torch.zeros(g.n_params, g.n_params, dtype=torch.float64)
    for s in g.layout.slots:
        out[s.index[:, None], s.index[None, :]] = g.precision(s.name).to_dense()
    return out


def _dense_kl(q: KroneckerGaussian, p: KroneckerGaussian) -> float:
    cov_q = q.tau * torch.linalg.inv(_dense_precision(q))
    prec_p = _dense_precision(p) / p.tau
    diff = q.mean_vector() - p.mean_vector()
    k = q.n_params
    return float(
        0.5
        * (
            torch.trace(prec_p @ cov_q)
            + diff @ prec_p @ diff
            - k
            - torch.logdet(prec_p)
            - torch.logdet(cov_q)
        )
    )


def test_layout_matches_kfac_flat_order() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3)).double()
    layout = ParameterLayout(model)
    x = torch.randn(5, 1, 3, 3, dtype=torch.float64)
    kfac = KFAC(model, "cross_entropy", (x, torch.arange(5) % 3), reduction="sum")
    theta = flatten(model_params(model))
    read = layout.read(model)
    for s in layout.slots:
        assert torch.equal(s.index, kfac.flat_index(s.name))
        assert torch.equal(read[s.name].reshape(-1), theta[s.index])
    assert torch.equal(layout.flatten(layout.blocks(theta)), theta)


@pytest.mark.parametrize("n_terms", [1, 2, 3])
def test_penalty_and_its_gradient_match_dense(n_terms: int) -> None:
    model = _mlp()
    g = _gaussian(model, n_terms, seed=n_terms, tau=0.7)
    theta = flatten(model_params(model)).clone().requires_grad_(True)
    diff = theta - g.mean_vector()
    dense = 0.5 * diff @ _dense_precision(g) @ diff / 0.7
    pen = g.penalty(model)
    assert float(pen.detach()) == pytest.approx(float(dense.detach()), rel=RTOL)
    pen.backward()
    (grad_dense,) = torch.autograd.grad(dense, theta)
    grad = flatten({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(grad, grad_dense, rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("n_terms", [1, 2])
def test_logdet_and_eig_form_match_dense(n_terms: int) -> None:
    g = _gaussian(_mlp(), n_terms, seed=10 + n_terms)
    dense = _dense_precision(g)
    assert float(g.logdet_precision()) == pytest.approx(float(torch.logdet(dense)), rel=RTOL)
    for s in g.layout.slots:
        U, V, D = g.eig_form(s.name)
        T = torch.kron(U, V)
        inv = T @ torch.diag(1 / D.reshape(-1)) @ T.T
        torch.testing.assert_close(inv, torch.linalg.inv(g.precision(s.name).to_dense()))


def test_three_terms_need_compression() -> None:
    g = _gaussian(_mlp(), 3, seed=3)
    with pytest.raises(InputError, match="at most 2 Kronecker terms.*compressed"):
        g.logdet_precision()
    with pytest.raises(InputError, match="compressed"):
        g.sample(1)
    c = g.compressed()
    assert set(c.n_terms().values()) == {2}
    for s in g.layout.slots:
        terms = g.precision(s.name).terms
        rest = sum(t.to_dense() for t in terms[1:])
        approx = c.precision(s.name).terms[1].to_dense()
        err = float(torch.linalg.norm(rest - approx) / torch.linalg.norm(rest))
        assert c.compression_error[s.name] == pytest.approx(err, rel=1e-6, abs=1e-12)
        assert 0 < err < 1
        torch.testing.assert_close(c.precision(s.name).terms[0].to_dense(), terms[0].to_dense())


def test_samples_have_the_mean_and_covariance() -> None:
    g = _gaussian(_mlp(), 2, seed=4, tau=0.3)
    draws = g.sample(40_000, torch.Generator().manual_seed(0))
    assert draws.shape == (40_000, g.n_params)
    cov = 0.3 * torch.linalg.inv(_dense_precision(g))
    err = torch.cov(draws.T) - cov
    assert float(err.abs().max()) < 0.04 * float(cov.diagonal().max())
    se = cov.diagonal().sqrt() / math.sqrt(40_000)
    assert bool(((draws.mean(0) - g.mean_vector()).abs() < 5 * se).all())


@pytest.mark.parametrize(
    "q_terms, p_terms, tau_q, tau_p",
    [(1, 1, 1.0, 1.0), (2, 2, 0.2, 1.5), (1, 2, 3.0, 0.5), (2, 1, 1.0, 1.0)],
)
def test_kl_matches_dense(q_terms: int, p_terms: int, tau_q: float, tau_p: float) -> None:
    model = _mlp()
    q = _gaussian(model, q_terms, seed=20 + q_terms, tau=tau_q)
    p = _gaussian(model, p_terms, seed=30 + p_terms, tau=tau_p)
    assert float(kl_divergence(q, p)) == pytest.approx(_dense_kl(q, p), rel=RTOL)


def test_kl_of_a_gaussian_with_itself_is_zero_and_prior_logdet_needs_two_terms() -> None:
    model = _mlp()
    q = _gaussian(model, 2, seed=5, tau=0.4)
    assert abs(float(kl_divergence(q, q))) < 1e-10 * q.n_params
    p3 = _gaussian(model, 3, seed=6)
    with pytest.raises(InputError, match="compressed"):
        kl_divergence(q, p3)
    other = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    with pytest.raises(InputError, match="different parameters"):
        kl_divergence(q, _gaussian(other, 1, seed=7))


def test_with_curvature_appends_the_scaled_block_and_takes_the_model_mean() -> None:
    model = _mlp()
    g = _gaussian(model, 1, seed=8, tau=2.0)
    x = torch.randn(7, 3, dtype=torch.float64)
    kfac = KFAC(model, "cross_entropy", (x, torch.arange(7) % 2), reduction="sum")
    post = g.with_curvature(kfac, model, scale=3.0)
    assert post.tau == 1.0 and set(post.n_terms().values()) == {2}
    expected = _dense_precision(g) / 2.0 + 3.0 * kfac.to_dense()
    torch.testing.assert_close(_dense_precision(post), expected, rtol=RTOL, atol=1e-12)
    torch.testing.assert_close(post.mean_vector(), flatten(model_params(model)))
    cold = post.tempered(0.1)
    assert cold.tau == 0.1 and post.tau == 1.0
    assert float(kl_divergence(cold, g)) == pytest.approx(_dense_kl(cold, g), rel=RTOL)


def test_samples_load_into_the_model_and_restore() -> None:
    model = _mlp()
    g = _gaussian(model, 2, seed=9)
    theta = g.sample(1, torch.Generator().manual_seed(1))[0]
    before = flatten(model_params(model)).clone()
    x = torch.randn(4, 3, dtype=torch.float64)
    functional = FunctionalModel(model)(g.as_params(theta), x)
    with g.loaded(model, theta) as m:
        torch.testing.assert_close(flatten(model_params(m)), theta)
        torch.testing.assert_close(m(x), functional)
    torch.testing.assert_close(flatten(model_params(model)), before)


def test_bad_inputs_are_input_errors() -> None:
    model = _mlp()
    layout = ParameterLayout(model)
    eye = {s.name: KroneckerProduct(torch.eye(s.n_out), torch.eye(s.d)) for s in layout.slots}
    zeros = {s.name: torch.zeros(s.n_out, s.d) for s in layout.slots}
    with pytest.raises(InputError, match="tau"):
        KroneckerGaussian(layout, zeros, eye, tau=0.0)
    with pytest.raises(InputError, match="exactly the layers"):
        KroneckerGaussian(layout, {"0": zeros["0"]}, eye)
    with pytest.raises(InputError, match="must both be"):
        KroneckerGaussian(layout, {**zeros, "0": torch.zeros(2, 2)}, eye)
    g = KroneckerGaussian(
        layout, zeros, {**eye, "2": KroneckerProduct(-torch.eye(2), torch.eye(5))}
    )
    with pytest.raises(InputError, match="not positive definite"):
        g.logdet_precision()


def test_penalty_follows_the_model_dtype() -> None:
    model = _mlp()
    g = _gaussian(model, 2, seed=11)
    exact = float(g.penalty(model).detach())
    single = g.penalty(model.float())
    assert single.dtype == torch.float32
    assert float(single.detach()) == pytest.approx(exact, rel=1e-5)
