"""The VGD stability threshold: derivation, the closed form, its limits, and simulated VGD.

Derivation checked here (METHODS.md §3 agrees): along an eigendirection with curvature λ
and coordinate a, one VGD step gives E[a'²]/a² = (1 − ρλ)² + ρ²λ²σ²/(N_s a²).  With
c = (λa)² and z = N_s c/σ² (so σ²/(N_s a²) = λ²/z),

    E[a'²]/a² − 1 = ρλ(−2 + ρλ + ρλ³/z) = (ρ²λ/z)(λ³ + zλ − 2z/ρ),

so the step decreases the expected loss iff λ³ + zλ − 2z/ρ < 0, whose only real root is
h_crit = 2√(z/3) sinh(⅓ arsinh((3/ρ)√(3/z))).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tacitbayes.dynamics import (
    expected_update_factor,
    momentum_stability_threshold,
    stability_condition,
    vl_stability_threshold,
    z_from_gradient,
    z_reference,
)
from tacitbayes.errors import InputError
from tacitbayes.optim import VariationalGD

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- the algebra


def test_condition_is_the_cubic() -> None:
    rng = np.random.default_rng(0)
    lam = rng.uniform(0.01, 50, 5000)
    a = rng.normal(0, 1, 5000)
    rho = rng.uniform(0.005, 0.5, 5000)
    sigma = rng.uniform(0.001, 1, 5000)
    ns = rng.integers(1, 9, 5000)
    z = z_from_gradient(sigma, ns, (lam * a) ** 2)
    cubic = lam**3 + z * lam - 2 * z / rho
    factor = expected_update_factor(lam, a, rho, sigma, ns)
    np.testing.assert_allclose(factor - 1, rho**2 * lam / z * cubic, rtol=1e-8, atol=1e-12)
    clear = np.abs(cubic) > 1e-9 * (lam**3 + z * lam)
    assert np.array_equal(stability_condition(lam, a, rho, sigma, ns)[clear], (cubic < 0)[clear])


def test_threshold_is_the_real_root_of_the_cubic() -> None:
    for rho in (0.001, 0.02, 0.1, 1.0, 5.0):
        for z in np.logspace(-6, 8, 29):
            roots = np.roots([1.0, 0.0, z, -2.0 * z / rho])
            real = roots[np.abs(roots.imag) < 1e-9 * np.abs(roots).max()].real
            assert len(real) == 1
            assert vl_stability_threshold(rho, z) == pytest.approx(real[0], rel=1e-9)


def test_threshold_equals_the_fixed_a_crossing() -> None:
    """For fixed a the factor crosses 1 at λ = 2/(ρ(1 + σ²/(N_s a²))); that λ is h_crit(z(c = (λa)²))."""
    for rho, sigma, ns, a in [(0.1, 0.05, 1, 0.02), (0.02, 0.01, 4, 0.003), (0.5, 0.3, 2, 1.0)]:
        lam = 2.0 / (rho * (1.0 + sigma**2 / (ns * a**2)))
        assert expected_update_factor(lam, a, rho, sigma, ns) == pytest.approx(1.0, rel=1e-12)
        z = z_from_gradient(sigma, ns, (lam * a) ** 2)
        assert vl_stability_threshold(rho, z) == pytest.approx(lam, rel=1e-10)


def test_limits_monotonicity_and_vectorisation() -> None:
    rho = np.array([0.01, 0.1, 1.0])
    assert np.array_equal(vl_stability_threshold(rho, np.inf), 2 / rho)
    np.testing.assert_allclose(vl_stability_threshold(rho, 1e14), 2 / rho, rtol=1e-6)
    assert vl_stability_threshold(0.1, 0.0) == 0.0
    assert vl_stability_threshold(0.1, 1e-250) == pytest.approx(
        (2e-250 / 0.1) ** (1 / 3), rel=1e-12
    )
    zs = np.logspace(-8, 12, 200)
    h = vl_stability_threshold(0.1, zs)
    assert h.shape == (200,) and np.all(np.diff(h) > 0) and np.all(h < 20.0)
    grid = vl_stability_threshold(rho[:, None], zs[None, :])
    assert grid.shape == (3, 200)
    assert isinstance(vl_stability_threshold(0.1, 3.0), float)
    as_tensor = vl_stability_threshold(torch.tensor([0.1, 0.2]), 5.0)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == (2,)
    # larger σ² or fewer samples → smaller z → lower threshold
    assert vl_stability_threshold(0.1, z_from_gradient(0.1, 1, 1.0)) < vl_stability_threshold(
        0.1, z_from_gradient(0.05, 1, 1.0)
    )
    assert vl_stability_threshold(0.1, z_from_gradient(0.1, 1, 1.0)) < vl_stability_threshold(
        0.1, z_from_gradient(0.1, 8, 1.0)
    )


def test_z_helpers() -> None:
    assert z_from_gradient(0.1, 4, 0.5) == pytest.approx(4 * 0.5 / 0.01)
    assert z_from_gradient(0.0, 1, 0.5) == math.inf
    assert z_reference(0.1, 2, 30.0, 300) == pytest.approx(2 * 30.0 / (300 * 0.01))
    for bad in (
        lambda: vl_stability_threshold(0.0, 1.0),
        lambda: vl_stability_threshold(0.1, -1.0),
        lambda: vl_stability_threshold(0.1, float("nan")),
        lambda: z_from_gradient(0.1, 0, 1.0),
        lambda: z_reference(0.1, 1, 1.0, 0),
        lambda: expected_update_factor(1.0, 0.0, 0.1, 0.1, 1),
        lambda: momentum_stability_threshold(0.1, 1.0),
    ):
        with pytest.raises(InputError):
            bad()


def test_momentum_threshold_is_where_the_recursion_loses_stability() -> None:
    """g ← βg + (1 − β)λμ, μ ← μ − αg: spectral radius of the 2×2 map crosses 1 at 2(1+β)/(α(1−β))."""
    for alpha, beta in [(0.1, 0.9), (0.05, 0.5), (1.0, 0.0)]:
        crit = momentum_stability_threshold(alpha, beta)

        def radius(lam: float, alpha: float = alpha, beta: float = beta) -> float:
            # state (g, μ): g' = βg + (1 − β)λμ, μ' = μ − αg' = −αβg + (1 − α(1 − β)λ)μ
            mat = np.array(
                [[beta, (1 - beta) * lam], [-alpha * beta, 1 - alpha * (1 - beta) * lam]]
            )
            return float(np.abs(np.linalg.eigvals(mat)).max())

        assert radius(0.99 * crit) < 1 < radius(1.01 * crit)


# --------------------------------------------------------------------------- simulated VGD


def _empirical_crossover(rho: float, sigma: float, ns: int, z: float, seed: int) -> float:
    """One VGD step on ½ mᵀQm (Q randomly rotated) for 4,000 independent runs at once.

    Every eigendirection i starts with the same gradient component c = (λᵢaᵢ)² = zσ²/N_s;
    returns the λ where the measured E[a'ᵢ²]/aᵢ² crosses 1 (linear interpolation).
    """
    gen = torch.Generator().manual_seed(seed)
    h = vl_stability_threshold(rho, z)
    lam = torch.linspace(0.6, 1.4, 33, dtype=torch.float64) * h
    q_basis, _ = torch.linalg.qr(torch.randn(33, 33, generator=gen, dtype=torch.float64))
    hess = q_basis @ torch.diag(lam) @ q_basis.T
    c = z * sigma**2 / ns
    a = math.sqrt(c) / lam
    trials = 4000
    m = torch.nn.Parameter((q_basis @ a).expand(trials, -1).clone())  # each row: one VGD run
    opt = VariationalGD([m], lr=rho, sigma=sigma, n_samples=ns, seed=seed)

    def closure() -> torch.Tensor:
        loss = 0.5 * ((m @ hess) * m).sum()  # Σ over runs of ½ mᵀQm: rows are independent
        loss.backward()
        return loss

    opt.step(closure)
    a_new = m.detach() @ q_basis
    ratio = (a_new.square().mean(0) / a.square()).numpy() - 1.0
    lam = lam.numpy()
    sign_change = np.nonzero((ratio[:-1] < 0) & (ratio[1:] >= 0))[0]
    assert len(sign_change) >= 1, ratio
    i = sign_change[0]
    return float(lam[i] - ratio[i] * (lam[i + 1] - lam[i]) / (ratio[i + 1] - ratio[i]))


@pytest.mark.parametrize(
    "rho, sigma, ns, kappa",
    [(0.1, 0.05, 1, 0.5), (0.02, 0.01, 4, 2.0), (0.5, 0.3, 2, 8.0), (0.05, 0.02, 8, 1.0)],
)
def test_simulated_vgd_crosses_over_at_the_threshold(
    rho: float, sigma: float, ns: int, kappa: float
) -> None:
    z = 4.0 / (rho**2 * kappa)  # h_crit·ρ/2 solves κx³ + x − 1 = 0: from 0.8 down to 0.4
    h = vl_stability_threshold(rho, z)
    assert h < 0.85 * 2 / rho
    empirical = _empirical_crossover(rho, sigma, ns, z, seed=int(1000 * rho) + ns)
    assert abs(empirical / h - 1) < 0.05, (empirical, h)
