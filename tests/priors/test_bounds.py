"""PAC-Bayes bounds against hand-computed values, Monte Carlo risks, and an end-to-end sanity check."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tacitbayes.curvature import KFAC
from tacitbayes.errors import InputError
from tacitbayes.linalg import KroneckerProductSum
from tacitbayes.priors import (
    CATONI_GRID,
    KroneckerGaussian,
    KroneckerPrior,
    ParameterLayout,
    binary_kl,
    catoni_bound,
    empirical_risk,
    empirical_risk_local,
    kl_divergence,
    kl_inverse,
    kl_inverse_bound,
    laplace_posterior,
    local_linear_output,
    mcallester_bound,
    pac_bayes_bound,
    sample_convergence_bound,
    union_bound_cost,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_binary_kl_and_its_inverse() -> None:
    assert binary_kl(0.1, 0.3) == pytest.approx(0.1163217565860046, rel=1e-12)
    assert binary_kl(0.1, 0.3) == pytest.approx(
        0.1 * math.log(0.1 / 0.3) + 0.9 * math.log(0.9 / 0.7), rel=1e-12
    )
    assert binary_kl(0.0, 0.5) == pytest.approx(math.log(2))
    assert binary_kl(0.3, 0.3) == 0.0 and binary_kl(0.5, 1.0) == math.inf
    for q in (0.0, 0.02, 0.3, 0.9):
        for c in (1e-4, 0.01, 0.5):
            p = kl_inverse(q, c)
            assert q <= p <= 1
            if p < 1:
                assert binary_kl(q, p) == pytest.approx(c, rel=1e-6, abs=1e-9)
                assert binary_kl(q, p - 1e-7) <= c
    assert kl_inverse(0.2, 0.0) == pytest.approx(0.2, abs=1e-8)
    assert kl_inverse(0.2, 50.0) == 1.0


def test_mcallester_kl_inverse_and_catoni_by_hand() -> None:
    expected = 0.1 + math.sqrt((50 + math.log(2 * math.sqrt(1000) / 0.05)) / 2000)
    assert expected == pytest.approx(0.2690307029707991, rel=1e-12)
    assert mcallester_bound(0.1, 50.0, 1000, 0.05) == pytest.approx(expected, rel=1e-12)
    c_term = (50 + math.log(2 * math.sqrt(1000) / 0.05)) / 1000
    kli = kl_inverse_bound(0.1, 50.0, 1000, 0.05)
    assert binary_kl(0.1, kli) == pytest.approx(c_term, rel=1e-6)
    assert 0.1 < kli < expected  # Pinsker: never looser than McAllester
    fixed = (1 - math.exp(-2.0 * 0.1 - (50 + math.log(1 / 0.05)) / 1000)) / (1 - math.exp(-2.0))
    assert fixed == pytest.approx(0.2585150059706267, rel=1e-12)
    assert catoni_bound(0.1, 50.0, 1000, 0.05, c=2.0) == pytest.approx(fixed, rel=1e-12)
    cost = math.log(len(CATONI_GRID))
    by_hand = min(
        (1 - math.exp(-c * 0.1 - (50 + cost + math.log(20)) / 1000)) / (1 - math.exp(-c))
        for c in CATONI_GRID
    )
    assert catoni_bound(0.1, 50.0, 1000, 0.05) == pytest.approx(by_hand, rel=1e-12)
    assert union_bound_cost(80) == pytest.approx(math.log(80))


def test_catoni_is_at_most_one_and_monotone() -> None:
    for risk in (0.0, 0.1, 0.5, 0.9):
        for kl in (0.0, 10.0, 1e3):
            assert 0 <= catoni_bound(risk, kl, 500, 0.05) <= 1
    risks = [catoni_bound(r, 20.0, 1000, 0.05) for r in (0.0, 0.05, 0.1, 0.3)]
    kls = [catoni_bound(0.1, k, 1000, 0.05) for k in (0.0, 10.0, 100.0)]
    ns = [catoni_bound(0.1, 20.0, n, 0.05) for n in (100, 1000, 10_000)]
    assert risks == sorted(risks) and kls == sorted(kls) and ns == sorted(ns, reverse=True)
    assert catoni_bound(0.1, 20.0, 1000, 0.05) >= 0.1


def test_sample_convergence_and_combined_bound() -> None:
    assert sample_convergence_bound(0.1, 100, 0.01) == pytest.approx(
        kl_inverse(0.1, math.log(2 / 0.01) / 100), rel=1e-12
    )
    ups = [sample_convergence_bound(0.1, m, 0.01) for m in (10, 100, 10_000)]
    assert ups == sorted(ups, reverse=True) and ups[-1] > 0.1
    out = pac_bayes_bound(0.1, 1000, 40.0, 2000, 0.05, kind="mcallester", grid_size=20)
    upper = kl_inverse(0.1, math.log(2 / 0.025) / 1000)
    assert out["emp_risk_upper"] == pytest.approx(upper, rel=1e-12)
    assert out["delta_mc"] == pytest.approx(0.025) and out["delta_pac_bayes"] == pytest.approx(
        0.025
    )
    kl = 40.0 + math.log(20)
    assert out["mcallester"] == pytest.approx(mcallester_bound(upper, kl, 2000, 0.025), rel=1e-12)
    assert out["kl_inverse"] == pytest.approx(kl_inverse_bound(upper, kl, 2000, 0.025), rel=1e-12)
    assert out["catoni"] == pytest.approx(catoni_bound(upper, kl, 2000, 0.025), rel=1e-12)
    assert out["bound"] == out["mcallester"] and out["kl_inverse"] <= out["mcallester"]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: mcallester_bound(1.2, 1.0, 10, 0.05), "emp_risk"),
        (lambda: mcallester_bound(0.1, -1.0, 10, 0.05), "kl"),
        (lambda: mcallester_bound(0.1, 1.0, 0, 0.05), "n must"),
        (lambda: catoni_bound(0.1, 1.0, 10, 1.0), "delta"),
        (lambda: catoni_bound(0.1, 1.0, 10, 0.05, c_grid=[1.0], c=1.0), "either"),
        (lambda: catoni_bound(0.1, 1.0, 10, 0.05, c=-1.0), "c must"),
        (lambda: sample_convergence_bound(float("nan"), 10, 0.05), "mc_risk"),
        (lambda: pac_bayes_bound(0.1, 10, 1.0, 10, 0.05, kind="pinsker"), "unknown bound kind"),
        (lambda: pac_bayes_bound(0.1, 10, 1.0, 10, 0.05, delta_mc_fraction=1.0), "fraction"),
        (lambda: union_bound_cost(0), "grid_size"),
    ],
)
def test_bad_arguments_are_input_errors(call, match) -> None:
    with pytest.raises(InputError, match=match):
        call()


def _random_gaussian(model: nn.Module, tau: float, seed: int) -> KroneckerGaussian:
    gen = torch.Generator().manual_seed(seed)
    layout = ParameterLayout(model)
    read = layout.read(model)
    precs = {}
    for s in layout.slots:
        g = torch.randn(s.n_out, s.n_out, dtype=torch.float64, generator=gen)
        a = torch.randn(s.d, s.d, dtype=torch.float64, generator=gen)
        eye = (torch.eye(s.n_out, dtype=torch.float64), torch.eye(s.d, dtype=torch.float64))
        precs[s.name] = KroneckerProductSum([eye, (g @ g.T, a @ a.T)])
    return KroneckerGaussian(layout, {n: w.detach().double() for n, w in read.items()}, precs, tau)


def test_local_linear_output_has_the_exact_covariance() -> None:
    model = nn.Sequential(nn.Linear(4, 3)).double()
    g = _random_gaussian(model, tau=0.3, seed=0)
    s = g.layout.slots[0]
    at = torch.cat(
        [torch.randn(1, 4, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)], 1
    )
    rows = local_linear_output(
        g.eig_form("0"), g.mean("0"), 0.3, at.expand(3, -1), torch.eye(3).double()
    )
    noise = rows - at @ g.mean("0").T
    J = torch.kron(torch.eye(s.n_out, dtype=torch.float64), at)
    dense = 0.3 * J @ torch.linalg.inv(g.precision("0").to_dense()) @ J.T
    torch.testing.assert_close(noise.T @ noise, dense, rtol=1e-10, atol=1e-12)


def _data(seed: int, n: int, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(centers), (n,), generator=gen)
    return centers[y] + torch.randn(n, centers.shape[1], generator=gen), y


def test_whole_network_and_local_risks_agree() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    centers = 1.5 * torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    x, y = _data(2, 200, centers)
    map_error = float((model(x).argmax(-1) != y).float().mean())
    sharp = _random_gaussian(model, tau=1e-16, seed=3)
    gen = torch.Generator().manual_seed(0)
    assert empirical_risk(model, sharp, x, y, 2, gen)[0] == pytest.approx(map_error)
    assert empirical_risk_local(model, sharp, x, y, 2, gen) == (pytest.approx(map_error), 400)
    q = _random_gaussian(model, tau=0.05, seed=4)
    whole, per_sample = empirical_risk(model, q, x, y, 300, gen)
    local, draws = empirical_risk_local(model, q, x, y, 300, gen)
    assert per_sample.shape == (300,) and draws == 60_000
    assert abs(whole - map_error) > 0.02  # the noise matters
    assert local == pytest.approx(whole, abs=0.015)
    conv = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Flatten(), nn.Linear(8, 3))
    xc = torch.randn(6, 1, 3, 3)
    with pytest.raises(InputError, match="nn.Linear layers only"):
        empirical_risk_local(conv, _random_gaussian(conv, 1.0, 5), xc, y[:6])
    assert 0 <= empirical_risk(conv, _random_gaussian(conv, 1.0, 5), xc, y[:6], 2)[0] <= 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bound_is_above_the_test_error(seed: int) -> None:
    torch.manual_seed(seed)
    centers = 1.2 * torch.randn(3, 5, generator=torch.Generator().manual_seed(100 + seed))
    x, y = _data(seed, 400, centers)
    xt, yt = _data(1000 + seed, 4000, centers)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    prior = KroneckerPrior.isotropic(model, precision=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + prior.penalty(model) / len(y)
        loss.backward()
        opt.step()
    kfac = KFAC(model, "cross_entropy", (x, y), reduction="sum")
    q = laplace_posterior(prior, kfac, model, tau=0.1)
    kl = float(kl_divergence(q, prior))
    gen = torch.Generator().manual_seed(seed)
    risk, draws = empirical_risk_local(model, q, x, y, 25, gen)
    out = pac_bayes_bound(risk, draws, max(kl, 0.0), len(y), 0.05)
    test_risk, _ = empirical_risk_local(model, q, xt, yt, 5, gen)
    assert kl > 0 and risk < 0.5
    assert min(out["mcallester"], out["catoni"], out["kl_inverse"]) >= test_risk
    assert out["kl_inverse"] < 1
