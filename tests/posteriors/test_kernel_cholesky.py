"""The float32 in-place Cholesky preconditioner against the dense scaled kernel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tacitbayes.posteriors.kernel_cholesky as kernel_cholesky
from tacitbayes.curvature.ntk import ntk_gram
from tacitbayes.errors import InputError
from tacitbayes.posteriors.kernel_projection import jacobian_factors
from tacitbayes.posteriors.projected import ProjectedPosterior

DT = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def _loader(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1)
    x, y = torch.randn(n, 30, dtype=DT), torch.randint(0, 3, (n,))
    return [(x[i : i + 5], y[i : i + 5]) for i in range(0, n, 5)]


def _fitted(
    n: int = 24, width: int = 40, loss_projected: bool = False, solver: str = "gram"
) -> ProjectedPosterior:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, width), nn.Tanh(), nn.Linear(width, 3)).to(DT)
    post = ProjectedPosterior(model, solver=solver, loss_projected=loss_projected)
    return post.fit(_loader(n))


@pytest.mark.parametrize("chunk_rows", [1, 7, 10_000])
def test_the_preconditioner_is_the_scaled_jittered_inverse(
    monkeypatch: pytest.MonkeyPatch, chunk_rows: int
) -> None:
    monkeypatch.setattr(kernel_cholesky, "CHUNK_ROWS", chunk_rows)  # one block … many blocks
    jac = _fitted()._jac
    K = ntk_gram(jacobian_factors(jac))
    pre = kernel_cholesky.cholesky_preconditioner(jac, 2**30)
    s = K.diagonal().rsqrt()
    scaled = s[:, None] * K * s[None, :] + pre.jitter * torch.eye(len(K), dtype=DT)
    R = torch.randn(len(K), 4, dtype=DT)
    expected = s[:, None] * torch.linalg.solve(scaled, s[:, None] * R)
    got = pre(R)
    assert pre.jitter == kernel_cholesky.JITTERS[0] and got.dtype == DT
    # float32 factor of a kernel with condition number about 1e3 after scaling
    assert float((got - expected).norm() / expected.norm()) < 1e-4


def test_the_factor_overwrites_the_kernel_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    original = kernel_cholesky.CholeskyPreconditioner._scaled_kernel

    def recording(self, chunks, jitter):  # noqa: ANN001, ANN202
        kernel = original(self, chunks, jitter)
        built.append(kernel.data_ptr())
        return kernel

    monkeypatch.setattr(kernel_cholesky.CholeskyPreconditioner, "_scaled_kernel", recording)
    jac = _fitted()._jac
    pre = kernel_cholesky.cholesky_preconditioner(jac, 2**30)
    rows = jac.shape[0]
    assert pre._factor.dtype == torch.float32 and pre._factor.shape == (rows, rows)
    assert built == [pre._factor.data_ptr()]  # one kernel, factored where it was written


def test_a_failed_factorisation_rebuilds_the_kernel_with_the_next_jitter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    post = _fitted(n=60, width=4)  # 180 rows, 139 parameters: K is singular
    # a negative first "jitter" makes the singular kernel indefinite: spotrf fails half-way
    # through, having overwritten the kernel, which must then be built afresh
    monkeypatch.setattr(kernel_cholesky, "JITTERS", (-0.5, 1e-6))
    with pytest.warns(RuntimeWarning, match="jitter 1e-06"):
        pre = kernel_cholesky.cholesky_preconditioner(post._jac, 2**30)
    assert pre.jitter == 1e-6
    K = ntk_gram(jacobian_factors(post._jac))
    R = K @ torch.randn(len(K), 2, dtype=DT)  # consistent right-hand sides, in the range of K
    # the factor solves them (its float32 rounding falls mostly into null(K))
    assert float((K @ pre(R) - R).norm() / R.norm()) < 1e-2
    monkeypatch.setattr(kernel_cholesky, "JITTERS", (-0.5,))
    with pytest.raises(InputError, match="not positive definite"):
        kernel_cholesky.cholesky_preconditioner(post._jac, 2**30)


@pytest.mark.parametrize("loss_projected", [False, True])
def test_projection_equals_the_float64_gram_solver(loss_projected: bool) -> None:
    expected = _fitted(loss_projected=loss_projected).projected_noise(5)
    post = _fitted(loss_projected=loss_projected, solver="gram_float32")
    got = post.projected_noise(5)
    assert post.solver_used == "gram_float32" and post.infos[-1].solver == "gram_float32"
    assert post.infos[-1].max_residual <= post.tol
    # both meet tol 1e-3 on ‖J𝒫ε‖/‖Jε‖; the projections agree far closer
    assert float((got - expected).norm() / expected.norm()) < 1e-3


def test_bad_inputs() -> None:
    jac = _fitted()._jac
    with pytest.raises(InputError, match="memory_budget"):
        kernel_cholesky.cholesky_preconditioner(jac, 100)
    pre = kernel_cholesky.cholesky_preconditioner(jac, 2**30)
    with pytest.raises(InputError, match="different data set"):
        pre(torch.zeros(3, 1, dtype=DT))
