"""Block MINRES against dense least squares over the block Krylov space and the pseudo-inverse."""

from __future__ import annotations

import pytest
import torch

from tacitbayes.errors import InputError
from tacitbayes.linalg.block_krylov import block_minres

DT = torch.float64


def _singular_psd(n: int, rank: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    values = torch.zeros(n, dtype=DT)
    values[:rank] = torch.logspace(-2, 1, rank, dtype=DT)
    return Q @ torch.diag(values) @ Q.T, Q[:, :rank]


def test_block_minres_solves_a_consistent_singular_system() -> None:
    g = torch.Generator().manual_seed(0)
    A, range_basis = _singular_psd(60, 40, g)
    B = A @ torch.randn(60, 3, generator=g, dtype=DT)
    X, info = block_minres(lambda V: A @ V, B, tol=1e-12, max_iters=100)
    # its range part is the minimum-norm solution (what Jᵀ U sees: null(K) = null(Jᵀ))
    in_range = range_basis @ (range_basis.T @ X)
    torch.testing.assert_close(in_range, torch.linalg.pinv(A) @ B, rtol=1e-8, atol=1e-9)
    assert bool(info.converged.all())
    assert info.iterations <= 40 // 3 + 2  # the block space holds 3 directions per step


def test_each_step_minimises_every_column_over_the_shared_block_space() -> None:
    g = torch.Generator().manual_seed(1)
    A, _ = _singular_psd(50, 50, g)
    B = torch.randn(50, 4, generator=g, dtype=DT)
    for steps in (1, 2, 4):
        X, info = block_minres(lambda V: A @ V, B, tol=0.0, max_iters=steps)
        # the dense optimum over span{B, AB, …, A^{steps-1} B}
        basis = torch.cat([torch.linalg.matrix_power(A, i) @ B for i in range(steps)], 1)
        coef = torch.linalg.lstsq(A @ basis, B).solution
        best = B - A @ basis @ coef
        got = B - A @ X
        torch.testing.assert_close(got.norm(dim=0), best.norm(dim=0), rtol=1e-7, atol=1e-10)
        reported = info.relative_residual_history[-1]
        assert abs(reported - float((got.norm(dim=0) / B.norm(dim=0)).max())) < 1e-8


def test_a_single_column_is_minres() -> None:
    g = torch.Generator().manual_seed(2)
    A, _ = _singular_psd(30, 30, g)
    b = torch.randn(30, generator=g, dtype=DT)
    x, info = block_minres(lambda V: A @ V, b, tol=1e-10, max_iters=60)
    assert x.shape == (30,)
    torch.testing.assert_close(A @ x, b, rtol=1e-8, atol=1e-8)


def test_a_restart_within_a_memory_cap_still_converges() -> None:
    g = torch.Generator().manual_seed(3)
    A, _ = _singular_psd(40, 40, g)
    B = torch.randn(40, 2, generator=g, dtype=DT)
    cap = 40 * 2 * 8 * 13  # thirteen blocks of the basis: a restart every twelve steps
    X, info = block_minres(lambda V: A @ V, B, tol=1e-6, max_iters=400, max_bytes=cap)
    assert bool(info.converged.all()) and info.iterations > 12
    residual = (B - A @ X).norm(dim=0) / B.norm(dim=0)
    assert float(residual.max()) <= 1e-6
    # a restart applies A once more to the update: more operator calls than steps
    assert info.operator_applications > info.iterations


def test_an_exhausted_space_stops_exactly() -> None:
    g = torch.Generator().manual_seed(4)
    A, _ = _singular_psd(20, 6, g)
    B = A @ torch.randn(20, 3, generator=g, dtype=DT)  # in a 6-dimensional range
    X, info = block_minres(lambda V: A @ V, B, tol=0.0, max_iters=50)
    assert info.iterations <= 3  # 3 columns, then 3 more, then nothing new
    torch.testing.assert_close(A @ X, B, rtol=1e-9, atol=1e-9)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(InputError):
        block_minres(lambda V: V, torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(InputError):
        block_minres(lambda V: V, torch.ones(3, 2, dtype=DT), tol=-1.0)
