"""KroneckerProductSum and nearest_kronecker against dense ground truth."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tacitbayes.errors import InputError
from tacitbayes.linalg import KroneckerProduct, KroneckerProductSum, nearest_kronecker

DT = torch.float64
SETTINGS = settings(max_examples=25, deadline=None)
sizes = st.integers(1, 6)
seeds = st.integers(0, 2**31 - 1)


def spd(n: int, g: torch.Generator, eps: float = 0.3) -> torch.Tensor:
    """Random SPD matrix Q Qᵀ/n + eps·I."""
    Q = torch.randn(n, n, generator=g, dtype=DT)
    return Q @ Q.T / n + eps * torch.eye(n, dtype=DT)


def psd(n: int, g: torch.Generator) -> torch.Tensor:
    """Random symmetric PSD matrix of rank about n/2 (often singular)."""
    Q = torch.randn(n, max(1, n // 2), generator=g, dtype=DT)
    return Q @ Q.T


def rearrange(S: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Van Loan–Pitsianis rearrangement of a dense (mn × mn) matrix into (m² × n²)."""
    return S.reshape(m, n, m, n).permute(0, 2, 1, 3).reshape(m * m, n * n)


@SETTINGS
@given(m=sizes, n=sizes, k=st.integers(1, 4), seed=seeds)
def test_matvec_trace_diag_match_dense(m: int, n: int, k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    terms = [
        (torch.randn(m, m, generator=g, dtype=DT), torch.randn(n, n, generator=g, dtype=DT))
        for _ in range(k)
    ]
    s = KroneckerProductSum(terms)
    dense = sum(torch.kron(A, B) for A, B in terms)
    V = torch.randn(m * n, 3, generator=g, dtype=DT)
    torch.testing.assert_close(s @ V, dense @ V)
    torch.testing.assert_close(s.matvec(V[:, 1]), dense @ V[:, 1])
    torch.testing.assert_close(s.to_dense(), dense)
    torch.testing.assert_close(s.trace(), dense.trace())
    torch.testing.assert_close(s.diag(), dense.diagonal())
    assert s.shape == (m * n, m * n) and len(s) == k


@SETTINGS
@given(m=sizes, n=sizes, seed=seeds, swap=st.booleans())
def test_two_terms_exact_logdet_solve(m: int, n: int, seed: int, swap: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    sym = KroneckerProduct(psd(m, g), psd(n, g))
    pd = KroneckerProduct(spd(m, g), spd(n, g))
    s = KroneckerProductSum([pd, sym] if swap else [sym, pd])
    dense = s.to_dense()
    sign, logabs = torch.linalg.slogdet(dense)
    assert sign > 0
    torch.testing.assert_close(s.logdet(), logabs)
    V = torch.randn(m * n, 2, generator=g, dtype=DT)
    torch.testing.assert_close(s.solve(V), torch.linalg.solve(dense, V))
    torch.testing.assert_close(s.solve(V[:, 0]), torch.linalg.solve(dense, V[:, 0]))


@SETTINGS
@given(m=sizes, n=sizes, seed=seeds)
def test_two_terms_sampling_map_has_exact_covariance(m: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    s = KroneckerProductSum([(psd(m, g), psd(n, g)), (spd(m, g), spd(n, g))])
    dense = s.to_dense()
    eye = torch.eye(m * n, dtype=DT)
    G = s.sample_transform(eye, as_precision=True)
    torch.testing.assert_close(G @ G.T, torch.linalg.inv(dense))
    G = s.sample_transform(eye, as_precision=False)
    torch.testing.assert_close(G @ G.T, dense)


def test_symmetric_indefinite_first_term_solve_but_no_logdet() -> None:
    g = torch.Generator().manual_seed(0)
    A1 = torch.randn(3, 3, generator=g, dtype=DT)
    A1 = A1 + A1.T
    s = KroneckerProductSum([(A1, spd(2, g)), (spd(3, g), spd(2, g))])
    dense = s.to_dense()
    v = torch.randn(6, dtype=DT, generator=g)
    torch.testing.assert_close(s.solve(v), torch.linalg.solve(dense, v))
    if torch.linalg.eigvalsh(dense).min() < 0:
        with pytest.raises(InputError, match="positive definite"):
            s.logdet()
        with pytest.raises(InputError, match="positive definite"):
            s.sample(2)


@pytest.mark.parametrize("as_precision", [True, False])
def test_two_terms_monte_carlo_covariance(as_precision: bool) -> None:
    g = torch.Generator().manual_seed(1)
    s = KroneckerProductSum([(psd(2, g), psd(3, g)), (spd(2, g), spd(3, g))])
    target = torch.linalg.inv(s.to_dense()) if as_precision else s.to_dense()
    X = s.sample(40_000, as_precision=as_precision, generator=g)
    assert X.shape == (40_000, 6)
    emp = X.T @ X / X.shape[0]
    assert (emp - target).abs().max() < 0.05 * target.abs().max()


def test_single_term_delegates() -> None:
    g = torch.Generator().manual_seed(2)
    A, B = spd(3, g), spd(2, g)
    s = KroneckerProductSum([(A, B)])
    dense = torch.kron(A, B)
    torch.testing.assert_close(s.logdet(), torch.linalg.slogdet(dense)[1])
    v = torch.randn(6, dtype=DT, generator=g)
    torch.testing.assert_close(s.solve(v), torch.linalg.solve(dense, v))
    G = s.sample_transform(torch.eye(6, dtype=DT))
    torch.testing.assert_close(G @ G.T, torch.linalg.inv(dense))


def test_three_terms_need_nearest_kronecker() -> None:
    g = torch.Generator().manual_seed(3)
    s = KroneckerProductSum([(spd(3, g), spd(2, g)) for _ in range(3)])
    for call in (s.logdet, lambda: s.solve(torch.ones(6, dtype=DT)), lambda: s.sample(2)):
        with pytest.raises(InputError, match="nearest_kronecker"):
            call()
    approx, _ = nearest_kronecker(s)
    with pytest.warns(UserWarning, match="nearest single Kronecker product"):
        ld = s.logdet(approximate=True)
    torch.testing.assert_close(ld, approx.logdet())
    v = torch.randn(6, 2, dtype=DT, generator=g)
    with pytest.warns(UserWarning):
        torch.testing.assert_close(s.solve(v, approximate=True), approx.solve(v))


def test_two_terms_without_spd_term_raise() -> None:
    g = torch.Generator().manual_seed(4)
    s = KroneckerProductSum([(-spd(2, g), spd(2, g)), (torch.randn(2, 2, dtype=DT), spd(2, g))])
    with pytest.raises(InputError, match="symmetric positive definite"):
        s.logdet()


def test_nearest_kronecker_exact_for_single_product() -> None:
    g = torch.Generator().manual_seed(5)
    A, B = spd(3, g), spd(4, g)
    kp, err = nearest_kronecker([(A, B), (2 * A, B)])
    assert err < 1e-7
    torch.testing.assert_close(kp.to_dense(), 3 * torch.kron(A, B))
    assert kp.A.trace() > 0 and kp.B.trace() > 0
    kp, err = nearest_kronecker([(-A, -B)])
    assert err < 1e-7 and kp.A.trace() > 0 and kp.B.trace() > 0
    torch.testing.assert_close(kp.to_dense(), torch.kron(A, B))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("spd_terms", [True, False])
def test_nearest_kronecker_matches_dense_svd(seed: int, spd_terms: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    m, n = 1 + seed % 4, 2 + seed % 3
    if spd_terms:
        terms = [(spd(m, g), spd(n, g)) for _ in range(3 + seed % 3)]
    else:
        terms = [
            (torch.randn(m, m, generator=g, dtype=DT), torch.randn(n, n, generator=g, dtype=DT))
            for _ in range(3 + seed % 3)
        ]
    s = KroneckerProductSum(terms)
    kp, err = s.nearest_kronecker()
    R = rearrange(s.to_dense(), m, n)
    U, sv, Vh = torch.linalg.svd(R)
    best = (sv[0] * torch.outer(U[:, 0], Vh[0])).reshape(m, m, n, n).permute(0, 2, 1, 3)
    torch.testing.assert_close(kp.to_dense(), best.reshape(m * n, m * n))
    dense_err = torch.linalg.matrix_norm(s.to_dense() - kp.to_dense()) / torch.linalg.matrix_norm(
        s.to_dense()
    )
    assert abs(err - float(dense_err)) < 1e-10
    if spd_terms:
        assert torch.linalg.eigvalsh(kp.A).min() > 0 and torch.linalg.eigvalsh(kp.B).min() > 0
        torch.testing.assert_close(kp.A, kp.A.T, rtol=0, atol=0)


def test_float32_two_terms() -> None:
    g = torch.Generator().manual_seed(6)
    terms = [(psd(3, g).float(), psd(2, g).float()), (spd(3, g).float(), spd(2, g).float())]
    s = KroneckerProductSum(terms)
    dense = s.to_dense().double()
    torch.testing.assert_close(
        s.logdet().double(), torch.linalg.slogdet(dense)[1], rtol=1e-4, atol=1e-4
    )
    v = torch.randn(6, generator=g)
    x = s.solve(v)
    assert x.dtype == torch.float32
    torch.testing.assert_close(
        x.double(), torch.linalg.solve(dense, v.double()), rtol=1e-3, atol=1e-3
    )


def test_bad_inputs_raise_input_error() -> None:
    g = torch.Generator().manual_seed(7)
    with pytest.raises(InputError, match="at least one term"):
        KroneckerProductSum([])
    with pytest.raises(InputError, match="factor sizes"):
        KroneckerProductSum([(spd(2, g), spd(3, g)), (spd(3, g), spd(2, g))])
    with pytest.raises(InputError, match="dtype"):
        KroneckerProductSum([(spd(2, g), spd(3, g)), (spd(2, g).float(), spd(3, g).float())])
    with pytest.raises(InputError, match="pair"):
        KroneckerProductSum([(spd(2, g),)])  # type: ignore[list-item]
    with pytest.raises(InputError, match="square"):
        KroneckerProductSum([(torch.randn(2, 3, dtype=DT), spd(3, g))])
    s = KroneckerProductSum([(spd(2, g), spd(3, g)), (psd(2, g), psd(3, g))])
    with pytest.raises(InputError, match="length 6"):
        s.solve(torch.ones(7, dtype=DT))
    with pytest.raises(InputError, match="zero matrix"):
        nearest_kronecker([(torch.zeros(2, 2, dtype=DT), spd(2, g))])
    with pytest.raises(InputError, match="at least one term"):
        nearest_kronecker([])
