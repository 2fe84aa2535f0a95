"""Learned priors from a Laplace or KFAC, isotropic priors, data independence, target posteriors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tacitbayes.curvature import KFAC
from tacitbayes.errors import InputError
from tacitbayes.functional import flatten, model_params
from tacitbayes.posteriors import Laplace
from tacitbayes.priors import (
    KroneckerPrior,
    check_prior_independent,
    data_fingerprint,
    kl_divergence,
    laplace_posterior,
    train_with_prior,
)
from tacitbayes.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _dense(g) -> torch.Tensor:
    out = torch.zeros(g.n_params, g.n_params, dtype=torch.float64)
    for s in g.layout.slots:
        out[s.index[:, None], s.index[None, :]] = g.precision(s.name).to_dense()
    return out


def _problem(seed: int = 0, n: int = 24):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(n, 3, dtype=torch.float64)
    y = torch.arange(n) % 3
    return model, x, y


@pytest.mark.parametrize("n_data_factor", [None, 2])
def test_from_laplace_precision_is_beta_kfac_plus_alpha_delta(n_data_factor) -> None:
    model, x, y = _problem()
    la = Laplace(
        model,
        "classification",
        "kron",
        prior_precision=torch.tensor([0.7, 1.3], dtype=torch.float64),
    )
    n_data = None if n_data_factor is None else n_data_factor * len(y)
    la.fit([(x[:12], y[:12]), (x[12:], y[12:])], n_data=n_data)
    prior = KroneckerPrior.from_laplace(la, alpha=2.0, beta=0.5, tau=0.8, source_inputs=x)
    scale = 1.0 if n_data_factor is None else float(n_data_factor)
    deltas = torch.cat(
        [
            torch.full((s.n_out * s.d,), d, dtype=torch.float64)
            for s, d in zip(prior.layout.slots, (0.7, 1.3), strict=True)
        ]
    )
    perm = torch.cat([s.index for s in prior.layout.slots])
    iso = torch.zeros(prior.n_params, dtype=torch.float64)
    iso[perm] = deltas
    expected = 0.5 * scale * la.curvature.kfac.to_dense() + torch.diag(2.0 * iso)
    torch.testing.assert_close(_dense(prior), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(prior.mean_vector(), la.mean)
    assert prior.tau == 0.8 and prior.hyperparameters["alpha"] == 2.0
    assert prior.hyperparameters["delta"] == {"0": 0.7, "2": 1.3}
    assert prior.source_fingerprint == data_fingerprint(x)


def test_from_kfac_equals_from_laplace_and_isotropic_is_lambda_identity() -> None:
    model, x, y = _problem(1)
    la = Laplace(model, "classification", "kron", prior_precision=0.9).fit([(x, y)])
    kfac = KFAC(model, "cross_entropy", (x, y), reduction="sum")
    a = KroneckerPrior.from_laplace(la, alpha=3.0, beta=2.0)
    b = KroneckerPrior.from_kfac(kfac, model, alpha=3.0, beta=2.0, delta=0.9)
    torch.testing.assert_close(_dense(a), _dense(b))
    torch.testing.assert_close(a.mean_vector(), b.mean_vector())
    zero = KroneckerPrior.isotropic(model, precision=4.0)
    torch.testing.assert_close(_dense(zero), 4.0 * torch.eye(zero.n_params, dtype=torch.float64))
    assert float(zero.mean_vector().abs().max()) == 0.0
    centred = KroneckerPrior.isotropic(model, precision={"0": 1.0, "2": 2.0}, mean=model)
    torch.testing.assert_close(centred.mean_vector(), flatten(model_params(model)))
    with pytest.raises(InputError, match="alpha"):
        KroneckerPrior.from_laplace(la, alpha=0.0)
    with pytest.raises(InputError, match="one value per layer"):
        KroneckerPrior.isotropic(model, precision={"0": 1.0})
    with pytest.raises(InputError, match="structure='kron'"):
        KroneckerPrior.from_laplace(Laplace(model, "classification", "diag").fit([(x, y)]))


def test_per_layer_beta_and_a_zero_beta_layer_is_isotropic() -> None:
    model, x, y = _problem(4)
    la = Laplace(model, "classification", "kron", prior_precision=0.9).fit([(x, y)])
    prior = KroneckerPrior.from_laplace(la, alpha=2.0, beta={"0": 0.5, "2": 0.0})
    assert prior.n_terms() == {"0": 2, "2": 1}
    assert prior.hyperparameters["beta"] == {"0": 0.5, "2": 0.0}
    full = KroneckerPrior.from_laplace(la, alpha=2.0, beta=0.5)
    iso = KroneckerPrior.isotropic(model, precision=2.0 * 0.9, mean=model)
    for s in prior.layout.slots:  # layer 0 as with β = 0.5, layer 2 as N(w_src, (αδ)⁻¹ I)
        source = full if s.name == "0" else iso
        torch.testing.assert_close(
            prior.precision(s.name).to_dense(), source.precision(s.name).to_dense()
        )
    flat = KroneckerPrior.from_laplace(la, alpha=2.0, beta=0.0)  # β = 0 everywhere: nested
    torch.testing.assert_close(_dense(flat), _dense(iso))
    with pytest.raises(InputError, match="beta"):
        KroneckerPrior.from_laplace(la, beta={"0": -1.0, "2": 0.0})
    with pytest.raises(InputError, match="one value per layer"):
        KroneckerPrior.from_laplace(la, beta={"0": 1.0})


def test_rounding_below_zero_in_a_kfac_factor_keeps_the_posterior_definite() -> None:
    """A cross-entropy G has the null vector 1; float32 rounding can push it below 0."""
    model, x, y = _problem(5)
    prior = KroneckerPrior.isotropic(model, precision=0.3, mean=model)
    kfac = KFAC(model, "cross_entropy", (x, y), reduction="sum")
    A, G = kfac.factors["2"]
    ones = torch.ones(len(G), 1, dtype=G.dtype) / len(G) ** 0.5
    kfac.factors["2"] = (1e4 * A, G - 1e-3 * ones @ ones.T)  # eigenvalue −1e−3 along 1
    assert float(torch.linalg.eigvalsh(kfac.factors["2"][1]).min()) < 0
    q = laplace_posterior(prior, kfac, model)
    dense = _dense(q)
    assert float(torch.linalg.eigvalsh(dense).min()) > 0
    assert torch.isfinite(kl_divergence(q, prior))
    torch.testing.assert_close(q.logdet_precision(), torch.logdet(dense), rtol=1e-8, atol=1e-8)


def test_check_prior_independent_refuses_overlap() -> None:
    model, x, y = _problem(2)
    la = Laplace(model, "classification", "kron").fit([(x, y)])
    prior = KroneckerPrior.from_laplace(la, source_inputs=x[:12])
    assert check_prior_independent(prior, x[12:]) == "verified"
    with pytest.raises(InputError, match="prior was built on examples of the bound's data"):
        check_prior_independent(prior, torch.cat([x[12:], x[3:4]]))
    assert check_prior_independent(KroneckerPrior.from_laplace(la), x) == "unverified"
    assert check_prior_independent(KroneckerPrior.isotropic(model, 1.0), x) == "verified"
    assert check_prior_independent(KroneckerPrior.isotropic(model, 1.0, mean=model), x) == (
        "unverified"
    )
    assert data_fingerprint(x[:2]) != data_fingerprint(x[:2].float())
    assert len(data_fingerprint(torch.cat([x, x]))) == len(x)


def test_laplace_posterior_is_exact_then_compressed_with_exact_kl() -> None:
    model, x, y = _problem(3)
    la = Laplace(model, "classification", "kron", prior_precision=0.5).fit([(x, y)])
    prior = KroneckerPrior.from_laplace(la, alpha=2.0, beta=0.7, source_inputs=x)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    xt, yt = x + 1.0, (y + 1) % 3
    kfac_t = KFAC(model, "cross_entropy", (xt, yt), reduction="sum")
    exact = laplace_posterior(prior, kfac_t, model, compress=False)
    assert set(exact.n_terms().values()) == {3}
    torch.testing.assert_close(_dense(exact), kfac_t.to_dense() + _dense(prior))
    torch.testing.assert_close(exact.mean_vector(), flatten(model_params(model)))
    q = laplace_posterior(prior, kfac_t, model, tau=0.05)
    assert set(q.n_terms().values()) == {2} and q.tau == 0.05
    assert all(0 < e < 1 for e in q.compression_error.values())
    cov_q = q.tau * torch.linalg.inv(_dense(q))
    prec_p = _dense(prior)
    diff = q.mean_vector() - prior.mean_vector()
    dense_kl = 0.5 * (
        torch.trace(prec_p @ cov_q)
        + diff @ prec_p @ diff
        - q.n_params
        - torch.logdet(prec_p)
        - torch.logdet(cov_q)
    )
    assert float(kl_divergence(q, prior)) == pytest.approx(float(dense_kl), rel=1e-8)
    kfac_mean = KFAC(model, "cross_entropy", (xt, yt), reduction="mean")
    with pytest.raises(InputError, match="reduction='sum'"):
        laplace_posterior(prior, kfac_mean, model)


def test_train_with_prior_pulls_towards_the_prior_mean() -> None:
    model, x, y = _problem(4, n=64)
    model.float()
    data = TensorDataset(x.float(), y)
    start = flatten(model_params(model)).clone()
    moved = {}
    for precision in (1e-3, 1e4):
        net = copy.deepcopy(model)
        prior = KroneckerPrior.isotropic(net, precision, mean=net)
        train_with_prior(
            net, data, prior, TrainConfig(epochs=3, batch_size=16, lr=0.05, progress=False)
        )
        moved[precision] = float((flatten(model_params(net)) - start).norm())
    assert moved[1e4] < 0.1 * moved[1e-3]
