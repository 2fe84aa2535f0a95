"""symmetric_eigh: exactly eigh on healthy matrices; retries with one warning when eigh fails; errors otherwise."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from tacitbayes.errors import InputError
from tacitbayes.linalg.eigen import psd_projection, symmetric_eigh
from tacitbayes.posteriors.laplace import Laplace

EIGH = torch.linalg.eigh  # the real one, before any monkeypatching


def _spd(n: int, dtype: torch.dtype, batch: tuple[int, ...] = (), seed: int = 0) -> torch.Tensor:
    """An exactly symmetric positive semi-definite matrix of rank n − 2 (a double eigenvalue 0)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, n, n - 2, generator=gen, dtype=torch.float64)
    P = (A @ A.mT).to(dtype)
    return 0.5 * (P + P.mT)  # a GEMM's A Aᵀ can differ from its transpose in the last bit


def _failing_eigh(n_failures: int | None) -> tuple[Callable, list[int]]:
    """A torch.linalg.eigh that raises LinAlgError on its first ``n_failures`` calls (None: always)."""
    calls = [0]

    def eigh(M: torch.Tensor, *args, **kwargs):
        calls[0] += 1
        if n_failures is None or calls[0] <= n_failures:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return EIGH(M, *args, **kwargs)

    return eigh, calls


def _reconstruction_error(lam: torch.Tensor, Q: torch.Tensor, M: torch.Tensor) -> float:
    """‖Q diag(λ) Qᵀ − M‖_F / ‖M‖_F, computed in float64 (maximum over a batch)."""
    Q64, lam64, M64 = Q.double(), lam.double(), M.double()
    R = Q64 @ (lam64[..., None] * Q64.mT) - M64
    return float((R.norm(dim=(-2, -1)) / M64.norm(dim=(-2, -1))).max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [(), (3,)])
def test_healthy_matrix_gives_exactly_eighs_result_without_warning(
    dtype: torch.dtype, batch: tuple[int, ...]
) -> None:
    M = _spd(7, dtype, batch)
    M = M + 1e-3 * torch.randn(M.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lam, Q = symmetric_eigh(M)
    ref_lam, ref_Q = EIGH(0.5 * (M + M.mT))
    torch.testing.assert_close(lam, ref_lam, rtol=0, atol=0)
    torch.testing.assert_close(Q, ref_Q, rtol=0, atol=0)
    S = _spd(7, dtype, batch)  # an exactly symmetric input is decomposed as it is
    for got, want in zip(symmetric_eigh(S), EIGH(S), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_matrix_is_an_input_error_naming_it(bad: float) -> None:
    M = _spd(4, torch.float64)
    M[1, 2] = bad
    with pytest.raises(InputError, match="the test matrix holds NaN or infinite entries"):
        symmetric_eigh(M, "the test matrix")
    with pytest.raises(InputError, match="square"):
        symmetric_eigh(torch.ones(2, 3), "the test matrix")


@pytest.mark.parametrize(
    "dtype, n_failures, remedy",
    [
        (torch.float32, 1, r"in float64$"),
        (torch.float32, 2, r"in float64 with jitter 1e-10 × its mean \|diagonal\|$"),
        (torch.float64, 1, r"in float64 with jitter 1e-10 × its mean \|diagonal\|$"),
        (torch.float64, 3, r"in float64 with jitter 1e-06 × its mean \|diagonal\|$"),
    ],
)
@pytest.mark.parametrize("batch", [(), (2,)])
def test_convergence_failure_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
    dtype: torch.dtype,
    n_failures: int,
    remedy: str,
    batch: tuple[int, ...],
) -> None:
    n = 9
    M = _spd(n, dtype, batch)
    ref_lam, _ = EIGH(M.double())
    eigh, calls = _failing_eigh(n_failures)
    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lam, Q = symmetric_eigh(M, "the test matrix")
    assert calls[0] == n_failures + 1
    assert len(caught) == 1 and caught[0].category is RuntimeWarning
    message = str(caught[0].message)
    assert "did not converge on the test matrix" in message
    assert re.search(remedy, message)
    assert lam.dtype == Q.dtype == dtype and lam.shape == (*batch, n) and Q.shape == M.shape
    assert bool(torch.isfinite(lam).all() and torch.isfinite(Q).all())
    # Tolerance: eigh is backward stable, Q diag(λ) Qᵀ = M + E with ‖E‖ = O(n·eps₆₄·‖M‖); the
    # jitter μ is exact to take back off λ (M + μI has M's eigenvectors) up to rounding
    # O(eps₆₄·μ); casting λ and Q back to ``dtype`` adds O(n·eps·‖M‖) with eps of ``dtype``.
    # 10·n·eps of ``dtype`` bounds all of these with room (observed: at most 0.7·n·eps).
    eps = torch.finfo(dtype).eps
    assert _reconstruction_error(lam, Q, M) < 10 * n * eps
    eye = torch.eye(n, dtype=torch.float64)
    assert float((Q.double().mT @ Q.double() - eye).abs().max()) < 10 * n * eps
    scale = float(ref_lam.abs().max())
    assert float((lam.double() - ref_lam).abs().max()) < 10 * n * eps * scale


def test_all_attempts_failing_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    eigh, calls = _failing_eigh(None)
    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    with pytest.raises(InputError, match="did not converge on the test matrix even in float64"):
        symmetric_eigh(_spd(5, torch.float32), "the test matrix")
    assert calls[0] == 5  # as it is, in float64, and with 3 jitters


def test_kfac_laplace_survives_an_eigh_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    data = [(x[:7], y[:7]), (x[7:], y[7:])]
    xq = torch.randn(4, 5, dtype=torch.float64)

    def predict() -> torch.Tensor:
        la = Laplace(model, "classification", "kron", prior_precision=0.8).fit(data)
        return la.predict(xq, n_samples=6, generator=torch.Generator().manual_seed(3))

    expected = predict()
    monkeypatch.setattr(torch.linalg, "eigh", _failing_eigh(1)[0])
    with pytest.warns(RuntimeWarning, match="did not converge on the KFAC factor") as record:
        got = predict()
    assert sum(issubclass(w.category, RuntimeWarning) for w in record) == 1
    assert bool(torch.isfinite(got).all())
    # the fallback decomposes the same factor (float64, jitter 1e-10 taken back off)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


def test_psd_projection_is_the_nearest_psd_matrix() -> None:
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    psd = B @ B.T
    torch.testing.assert_close(psd_projection(psd), psd)  # already PSD: unchanged
    lam, Q = torch.linalg.eigh(psd)
    lam[:2] = torch.tensor([-1e-3, -2.0], dtype=torch.float64)
    M = (Q * lam) @ Q.T
    P = psd_projection(M + 1e-9 * torch.randn(6, 6, generator=gen, dtype=torch.float64))
    assert float(torch.linalg.eigvalsh(P).min()) >= -1e-12
    expected = (Q * lam.clamp_min(0)) @ Q.T
    torch.testing.assert_close(P, expected, atol=1e-8, rtol=0)
    # the nearest in Frobenius norm: no random PSD matrix is closer
    for _ in range(20):
        C = torch.randn(6, 6, generator=gen, dtype=torch.float64)
        other = expected + 1e-2 * C @ C.T
        assert torch.linalg.norm(M - other) >= torch.linalg.norm(M - P) - 1e-9
