"""The in-place blocked Cholesky factorisation and solve against torch's dense ones."""

from __future__ import annotations

import pytest
import torch

from tacitbayes.errors import InputError
from tacitbayes.linalg.blocked_cholesky import cholesky_in_place_, cholesky_solve_blocked


def _spd(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    F = torch.randn(n, n + 3, generator=g, dtype=torch.float64)
    return (F @ F.T / n + 0.1 * torch.eye(n, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("n, block", [(1, 4), (17, 4), (17, 5), (40, 8), (33, 64)])
def test_factor_and_solve_equal_the_dense_ones(n: int, block: int) -> None:
    A = _spd(n)
    work = torch.tril(A).contiguous()
    work[torch.ones(n, n, dtype=torch.bool).triu(1)] = float("nan")  # never read
    assert cholesky_in_place_(work, block=block)
    L = torch.tril(work)
    assert torch.allclose(L, torch.linalg.cholesky(A), rtol=1e-12, atol=1e-12)
    B = torch.randn(n, 3, dtype=torch.float64)
    X = cholesky_solve_blocked(work, B, block=block)
    assert torch.allclose(A @ X, B, rtol=1e-10, atol=1e-10)


def test_float32_and_a_matrix_that_is_not_positive_definite() -> None:
    A = _spd(30, torch.float32)
    work = A.clone()
    assert cholesky_in_place_(work, block=7)
    X = cholesky_solve_blocked(work, torch.ones(30, 1), block=7)
    assert X.dtype == torch.float32
    assert float((A.double() @ X.double() - 1).abs().max()) < 1e-4
    indefinite = _spd(30)
    indefinite[20, 20] = -5.0
    assert not cholesky_in_place_(indefinite, block=7)


def test_bad_shapes() -> None:
    with pytest.raises(InputError, match="square"):
        cholesky_in_place_(torch.zeros(3, 4))
    with pytest.raises(InputError, match="contiguous"):
        cholesky_in_place_(torch.zeros(4, 4).T[:, :])  # a transposed (column-major) view
    with pytest.raises(InputError, match="shape"):
        cholesky_solve_blocked(torch.eye(3), torch.zeros(4, 1))
