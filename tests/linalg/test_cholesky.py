"""jittered_cholesky: exact on SPD matrices, jitter and a warning on singular ones, errors otherwise."""

from __future__ import annotations

import warnings

import pytest
import torch

from tacitbayes.errors import InputError
from tacitbayes.linalg.cholesky import JITTERS, jittered_cholesky


def test_spd_matrix_is_factored_without_jitter_or_warning() -> None:
    torch.manual_seed(0)
    A = torch.randn(6, 6, dtype=torch.float64)
    M = A @ A.T + 0.1 * torch.eye(6, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L = jittered_cholesky(M)
    torch.testing.assert_close(L, torch.linalg.cholesky(M))


def test_singular_psd_matrix_gets_the_smallest_jitter_that_works_and_a_warning() -> None:
    torch.manual_seed(0)
    A = torch.randn(8, 3, dtype=torch.float32)
    M = A @ A.T  # rank 3 of 8: not positive definite in float32
    with pytest.warns(RuntimeWarning, match="jitter"):
        L = jittered_cholesky(M, "the test matrix")
    assert torch.isfinite(L).all()
    shift = (L @ L.T - M).diagonal().mean() / M.diagonal().mean()
    assert any(abs(float(shift) / j - 1) < 0.05 for j in JITTERS)
    probe = torch.randn(8, 2)
    assert torch.isfinite(torch.cholesky_solve(probe, L)).all()


@pytest.mark.parametrize(
    "M, match",
    [
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), "NaN or infinite"),
        (torch.tensor([[1.0, 0.0], [0.0, -5.0]]), "not positive definite even with jitter"),
        (torch.ones(2, 3), "square"),
    ],
)
def test_bad_matrices_are_input_errors(M: torch.Tensor, match: str) -> None:
    with pytest.raises(InputError, match=match):
        jittered_cholesky(M)
