"""Tests for Lanczos, power iteration and Hutchinson estimators on curvature operators."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from tacitbayes.curvature import (
    GGN,
    DenseOperator,
    Hessian,
    hutchinson_diagonal,
    hutchinson_trace,
    power_iteration,
    top_eigenvalues,
)
from tacitbayes.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


DT = torch.float64


def _problem(loss: str = "cross_entropy", n: int = 8) -> tuple[nn.Module, tuple[Tensor, Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=gen, dtype=DT)
    if loss == "cross_entropy":
        y = torch.randint(0, 3, (n,), generator=gen)
    else:
        y = torch.randn(n, 3, generator=gen, dtype=DT)
    return model, (x, y)


def _random_spd(n: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=DT)
    return a @ a.T / n


class VectorOnly:
    """An operator that only knows ``shape`` and ``@`` on single vectors."""

    def __init__(self, matrix: Tensor) -> None:
        self.matrix, self.shape, self.dtype = matrix, tuple(matrix.shape), matrix.dtype

    def __matmul__(self, v: Tensor) -> Tensor:
        assert v.ndim == 1
        return self.matrix @ v


# --------------------------------------------------------------------------- eigenvalues


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_lanczos_top3_matches_eigvalsh(loss: str) -> None:
    model, data = _problem(loss)
    hess = Hessian(model, loss, data)
    exact = torch.linalg.eigvalsh(hess.to_dense()).flip(0)[:3]
    res = top_eigenvalues(hess, k=3, seed=0, return_eigenvectors=True)
    assert res.converged
    assert res.n_matvecs <= hess.shape[0]
    assert torch.allclose(res.eigenvalues, exact, rtol=1e-6, atol=0)
    vecs = res.eigenvectors
    assert vecs is not None and vecs.shape == (hess.shape[0], 3)
    assert torch.allclose(vecs.T @ vecs, torch.eye(3, dtype=DT), atol=1e-10)
    resid = (hess @ vecs - vecs * res.eigenvalues).norm(dim=0)
    assert bool((resid <= 1e-5 * res.eigenvalues.abs()).all())


def test_lanczos_finds_repeated_and_negative_eigenvalues() -> None:
    diag = torch.tensor([5.0, 5.0, 5.0, 2.0, -1.0, -7.0, 0.5, 0.0], dtype=DT)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=DT, generator=torch.Generator().manual_seed(2)))
    mat = q @ torch.diag(diag) @ q.T
    res = top_eigenvalues(mat, k=4, seed=3)  # plain Tensors are operators too
    assert torch.allclose(res.eigenvalues, torch.tensor([5.0, 5.0, 5.0, 2.0], dtype=DT), atol=1e-9)
    full = top_eigenvalues(DenseOperator(mat), k=8, seed=3)
    assert torch.allclose(full.eigenvalues, diag.sort(descending=True).values, atol=1e-9)
    assert full.n_matvecs == 8


def test_lanczos_is_seeded_and_reports_non_convergence() -> None:
    mat = _random_spd(30, seed=4)
    a = top_eigenvalues(mat, k=2, seed=5)
    b = top_eigenvalues(mat, k=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.eigenvalues, b.eigenvalues) and a.n_matvecs == b.n_matvecs
    short = top_eigenvalues(mat, k=2, max_iters=3, tol=1e-12, seed=5)
    assert not short.converged and short.n_matvecs == 3
    assert len(short.ritz_history) == 3 and short.ritz_history[-1] == float(short.eigenvalues[0])
    assert short.ritz_history == sorted(short.ritz_history)  # Ritz values rise monotonically
    assert top_eigenvalues(VectorOnly(mat), k=1, seed=0).converged


def test_power_iteration_agrees_with_lanczos_top() -> None:
    model, data = _problem("cross_entropy")
    ggn = GGN(model, "cross_entropy", data)
    exact = float(torch.linalg.eigvalsh(ggn.to_dense())[-1])
    power = power_iteration(ggn, max_iters=3000, tol=1e-6, seed=0)
    lanczos = top_eigenvalues(ggn, k=1, tol=1e-6, seed=0)
    assert power.converged
    assert math.isclose(power.eigenvalue, exact, rel_tol=1e-6)
    assert math.isclose(float(lanczos.eigenvalues[0]), exact, rel_tol=1e-6)
    assert float(power) == power.eigenvalue
    assert lanczos.n_matvecs < power.n_matvecs
    assert power.residual <= 1e-6 * abs(power.eigenvalue) * 1.0001


def test_spectral_bad_inputs() -> None:
    mat = _random_spd(5, seed=6)
    with pytest.raises(InputError, match="exceeds"):
        top_eigenvalues(mat, k=6)
    with pytest.raises(InputError, match="square"):
        top_eigenvalues(torch.zeros(3, 4, dtype=DT))
    with pytest.raises(InputError, match="k must"):
        top_eigenvalues(mat, k=0)
    with pytest.raises(InputError, match="tol"):
        power_iteration(mat, tol=-1.0)
    with pytest.raises(InputError, match="distribution"):
        hutchinson_trace(mat, distribution="uniform")
    with pytest.raises(InputError, match="n_samples"):
        hutchinson_diagonal(mat, n_samples=0)


# --------------------------------------------------------------------------- Hutchinson


def test_hutchinson_exact_for_diagonal_operator_with_rademacher() -> None:
    d = torch.linspace(-2.0, 5.0, 13, dtype=DT)
    est = hutchinson_trace(torch.diag(d), n_samples=7, seed=0, block_size=3)
    assert math.isclose(float(est), float(d.sum()), rel_tol=1e-12)
    assert est.stderr < 1e-12 and est.n_samples == 7 and est.samples.shape == (7,)
    diag = hutchinson_diagonal(torch.diag(d), n_samples=5, seed=0)
    assert torch.allclose(diag.estimate, d) and float(diag.stderr.max()) < 1e-12


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_trace_is_unbiased_on_ggn(distribution: str) -> None:
    model, data = _problem("cross_entropy")
    ggn = GGN(model, "cross_entropy", data)
    exact = float(ggn.to_dense().trace())
    est = hutchinson_trace(ggn, n_samples=800, seed=1, distribution=distribution, block_size=100)
    assert abs(est.estimate - exact) <= 4 * est.stderr
    assert est.stderr < 0.1 * exact  # the standard error is meaningful, not huge


def test_hutchinson_mean_of_independent_estimates_is_unbiased() -> None:
    mat = _random_spd(40, seed=7) - 0.3 * torch.eye(40, dtype=DT)
    gen = torch.Generator().manual_seed(8)
    estimates = torch.tensor(
        [float(hutchinson_trace(mat, n_samples=10, generator=gen)) for _ in range(400)]
    )
    sem = float(estimates.std() / math.sqrt(len(estimates)))
    assert abs(float(estimates.mean()) - float(mat.trace())) <= 4 * sem
    single = hutchinson_trace(VectorOnly(mat), n_samples=50, seed=0)  # column-by-column path
    assert single.n_samples == 50 and math.isfinite(single.stderr)


def test_hutchinson_diagonal_matches_ggn_diagonal() -> None:
    model, data = _problem("mse")
    ggn = GGN(model, "mse", data)
    exact = ggn.diagonal()
    est = hutchinson_diagonal(ggn, n_samples=600, seed=2, block_size=200)
    z = (est.estimate - exact).abs() / est.stderr.clamp_min(1e-12)
    assert float(z.max()) < 5.0
    assert est.estimate.shape == exact.shape
