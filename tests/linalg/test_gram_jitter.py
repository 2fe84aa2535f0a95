"""GramSolver (the NTK Gram's Cholesky): jitter 1e-10 on healthy K, larger jitter and a warning on near-singular K, never NaN."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import tacitbayes.posteriors.solvers.gram as gram
from tacitbayes.curvature.ntk import ntk_gram
from tacitbayes.errors import InputError
from tacitbayes.posteriors.kernel_projection import JITTER, GramSolver
from tacitbayes.posteriors.projected import ProjectedPosterior

DT = torch.float64


def _near_singular_gram(noise: float = 1e-6) -> torch.Tensor:
    """K = J Jᵀ of 30 rows, the last 15 within ``noise`` of the first 15, formed in float32.

    Its 15 smallest eigenvalues are O(noise²·‖K‖) in exact arithmetic, but the float32
    rounding of K moves them by O(1e-7·‖K‖), to about −1e-5 here: far below −1e-10·mean diag K.
    """
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(30, 50, generator=gen, dtype=DT)
    J[15:] = J[:15] + noise * torch.randn(15, 50, generator=gen, dtype=DT)
    K = (J.float() @ J.float().T).double()
    return 0.5 * (K + K.T)


def test_healthy_gram_is_factored_with_the_base_jitter_and_no_warning() -> None:
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(8, 20, generator=gen, dtype=DT)
    K = J @ J.T
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solver = GramSolver(K)
    shift = JITTER * float(K.diagonal().mean())
    assert solver.shift == shift
    expected = torch.linalg.cholesky(K + shift * torch.eye(8, dtype=DT))
    torch.testing.assert_close(solver.factor, expected, rtol=0, atol=0)
    torch.testing.assert_close(solver.gram, K, rtol=0, atol=0)  # the shift was undone


def test_near_singular_gram_gets_a_larger_jitter_a_warning_and_finite_solves() -> None:
    K = _near_singular_gram()
    assert float(torch.linalg.eigvalsh(K)[0]) < -JITTER * float(K.diagonal().mean())
    with pytest.warns(RuntimeWarning, match="NTK Gram matrix .* factored with jitter") as record:
        solver = GramSolver(K)
    assert len(record) == 1
    assert solver.shift > JITTER * float(K.diagonal().mean())
    assert bool(torch.isfinite(solver.factor).all())
    torch.testing.assert_close(solver.gram, K, rtol=0, atol=0)  # the shift was undone
    B = K @ torch.randn(30, 4, generator=torch.Generator().manual_seed(1), dtype=DT)
    U = solver.solve(B)
    assert bool(torch.isfinite(U).all())
    # B in range(K): iterative refinement against the unshifted K shrinks the error along an
    # eigenvalue λ by μ/(λ + μ) per step; the ~1e-5-sized eigenvalues rounding made are
    # where it is slow, so the residual ends near 1e-7 relative, not at machine precision.
    residual = (K @ U - B).norm(dim=0) / B.norm(dim=0)
    assert float(residual.max()) < 1e-5


@pytest.mark.parametrize(
    "K, match",
    [
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]], dtype=DT), "NaN or infinite"),
        (torch.tensor([[1.0, 0.0], [0.0, float("inf")]], dtype=DT), "NaN or infinite"),
        (torch.tensor([[1.0, 0.0], [0.0, -5.0]], dtype=DT), "not positive definite even with"),
    ],
)
def test_bad_grams_are_input_errors(K: torch.Tensor, match: str) -> None:
    with pytest.raises(InputError, match=match):
        GramSolver(K)


def test_projected_posterior_with_near_duplicate_rows_and_a_float32_gram(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Near-duplicate training rows make K nearly singular; rounded to float32 it is indefinite."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
    x = torch.randn(12, 4, dtype=DT)
    x[6:] = x[:6] + 1e-4 * torch.randn(6, 4, dtype=DT)
    y = torch.randint(0, 3, (12,))
    loader = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 12, 4)]
    monkeypatch.setattr(gram, "ntk_gram", lambda factors: ntk_gram(factors).float().double())
    with pytest.warns(RuntimeWarning, match="NTK Gram matrix .* factored with jitter"):
        post = ProjectedPosterior(model, solver="gram").fit(loader)
    outputs = post.sample_outputs(x, n_samples=4)
    assert bool(torch.isfinite(outputs).all())
    assert post.infos[0].max_residual <= 1e-3  # the default tol, reached despite the jitter
