"""KroneckerProduct against dense ground truth (torch.kron and dense linear algebra)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tacitbayes.errors import InputError
from tacitbayes.linalg import KroneckerProduct, KroneckerProductSum

DT = torch.float64
SETTINGS = settings(max_examples=25, deadline=None)
sizes = st.integers(1, 6)
seeds = st.integers(0, 2**31 - 1)


def spd(n: int, g: torch.Generator, dtype: torch.dtype = DT) -> torch.Tensor:
    """Random SPD matrix Q Qᵀ/n + 0.3·I."""
    Q = torch.randn(n, n, generator=g, dtype=dtype)
    return Q @ Q.T / n + 0.3 * torch.eye(n, dtype=dtype)


def general(n: int, g: torch.Generator) -> torch.Tensor:
    """Random non-symmetric matrix with positive determinant: SPD + skew-symmetric."""
    S = torch.randn(n, n, generator=g, dtype=DT)
    return spd(n, g) + (S - S.T)


@SETTINGS
@given(m=sizes, n=sizes, k=st.integers(1, 3), seed=seeds)
def test_matvec_matches_torch_kron(m: int, n: int, k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(m, m, generator=g, dtype=DT), torch.randn(n, n, generator=g, dtype=DT)
    kp = KroneckerProduct(A, B)
    dense = torch.kron(A, B)
    v = torch.randn(m * n, generator=g, dtype=DT)
    V = torch.randn(m * n, k, generator=g, dtype=DT)
    torch.testing.assert_close(kp.matvec(v), dense @ v)
    torch.testing.assert_close(kp @ V, dense @ V)
    W = v.reshape(m, n)
    torch.testing.assert_close(kp @ v, (A @ W @ B.T).reshape(-1))
    torch.testing.assert_close(kp.to_dense(), dense)
    assert kp.shape == (m * n, m * n)


@SETTINGS
@given(m=sizes, n=sizes, seed=seeds, symmetric=st.booleans())
def test_solve_logdet_inverse_match_dense(m: int, n: int, seed: int, symmetric: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    make = spd if symmetric else general
    kp = KroneckerProduct(make(m, g), make(n, g))
    assert kp.is_spd() == symmetric or m == n == 1
    dense = kp.to_dense()
    V = torch.randn(m * n, 2, generator=g, dtype=DT)
    torch.testing.assert_close(kp.solve(V), torch.linalg.solve(dense, V))
    torch.testing.assert_close(kp.solve(V[:, 0]), torch.linalg.solve(dense, V[:, 0]))
    sign, logabs = torch.linalg.slogdet(dense)
    assert sign > 0
    torch.testing.assert_close(kp.logdet(), logabs)
    torch.testing.assert_close(kp.inverse().to_dense(), torch.linalg.inv(dense))


@SETTINGS
@given(m=sizes, n=sizes, seed=seeds)
def test_trace_and_diag(m: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    kp = KroneckerProduct(torch.randn(m, m, generator=g, dtype=DT), spd(n, g))
    dense = kp.to_dense()
    torch.testing.assert_close(kp.trace(), dense.trace())
    torch.testing.assert_close(kp.diag(), dense.diagonal())


@SETTINGS
@given(m=sizes, n=sizes, seed=seeds)
def test_sampling_map_has_exact_covariance(m: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    kp = KroneckerProduct(spd(m, g), spd(n, g))
    dense = kp.to_dense()
    eye = torch.eye(m * n, dtype=DT)
    G = kp.sample_transform(eye, as_precision=True)
    torch.testing.assert_close(G @ G.T, torch.linalg.inv(dense))
    G = kp.sample_transform(eye, as_precision=False)
    torch.testing.assert_close(G @ G.T, dense)


@pytest.mark.parametrize("as_precision", [True, False])
def test_sample_monte_carlo_covariance(as_precision: bool) -> None:
    g = torch.Generator().manual_seed(0)
    kp = KroneckerProduct(spd(2, g), spd(3, g))
    target = torch.linalg.inv(kp.to_dense()) if as_precision else kp.to_dense()
    X = kp.sample(40_000, as_precision=as_precision, generator=g)
    assert X.shape == (40_000, 6)
    emp = X.T @ X / X.shape[0]
    assert (emp - target).abs().max() < 0.05 * target.abs().max()


def test_sample_generator_is_reproducible() -> None:
    g = torch.Generator().manual_seed(1)
    kp = KroneckerProduct(spd(3, g), spd(2, g))
    a = kp.sample(4, generator=torch.Generator().manual_seed(5))
    b = kp.sample(4, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert kp.sample().shape == (1, 6)


def test_float32_is_supported() -> None:
    g = torch.Generator().manual_seed(2)
    A, B = spd(3, g, torch.float32), spd(4, g, torch.float32)
    kp = KroneckerProduct(A, B)
    v = torch.randn(12, 3, generator=g)
    out = kp @ v
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.kron(A, B) @ v)
    torch.testing.assert_close(
        kp.solve(v), torch.linalg.solve(torch.kron(A, B), v), atol=1e-4, rtol=1e-4
    )
    assert kp.sample(2).dtype == torch.float32


def test_arithmetic() -> None:
    g = torch.Generator().manual_seed(3)
    A, B, C, D = spd(2, g), spd(3, g), spd(2, g), spd(3, g)
    p, q = KroneckerProduct(A, B), KroneckerProduct(C, D)
    s = p + q
    assert isinstance(s, KroneckerProductSum) and len(s) == 2
    torch.testing.assert_close(s.to_dense(), torch.kron(A, B) + torch.kron(C, D))
    torch.testing.assert_close((2.5 * p).to_dense(), 2.5 * torch.kron(A, B))
    torch.testing.assert_close((p * 2.0).to_dense(), 2 * torch.kron(A, B))
    torch.testing.assert_close((-p).to_dense(), -torch.kron(A, B))
    torch.testing.assert_close((p @ q).to_dense(), torch.kron(A, B) @ torch.kron(C, D))
    torch.testing.assert_close(p.transpose().to_dense(), torch.kron(A, B).T)
    torch.testing.assert_close(sum([p, q]).to_dense(), s.to_dense())
    assert len(p + s) == 3


def test_bad_inputs_raise_input_error() -> None:
    g = torch.Generator().manual_seed(4)
    A, B = spd(2, g), spd(3, g)
    with pytest.raises(InputError, match="square"):
        KroneckerProduct(torch.randn(2, 3, dtype=DT), B)
    with pytest.raises(InputError, match="square"):
        KroneckerProduct(A, torch.randn(3, dtype=DT))
    with pytest.raises(InputError, match="dtype"):
        KroneckerProduct(A, B.float())
    with pytest.raises(InputError, match="float32 or float64"):
        KroneckerProduct(A.long(), B.long())
    with pytest.raises(InputError, match="device"):
        KroneckerProduct(A, torch.empty(3, 3, dtype=DT, device="meta"))
    with pytest.raises(InputError, match="must be a torch.Tensor"):
        KroneckerProduct([[1.0]], B)  # type: ignore[arg-type]
    kp = KroneckerProduct(A, B)
    with pytest.raises(InputError, match="length 6"):
        kp @ torch.randn(5, dtype=DT)
    with pytest.raises(InputError, match="length 6"):
        kp.solve(torch.randn(6, 2, 1, dtype=DT))
    with pytest.raises(InputError, match="dtype"):
        kp @ torch.randn(6)
    with pytest.raises(InputError, match="positive definite"):
        KroneckerProduct(-A, B).sample(3)
    with pytest.raises(InputError, match="n_samples"):
        kp.sample(0)
    with pytest.raises(InputError, match="singular"):
        KroneckerProduct(torch.zeros(2, 2, dtype=DT), B).solve(torch.randn(6, dtype=DT))
    with pytest.raises(InputError, match="not positive"):
        KroneckerProduct(-A[:1, :1], B).logdet()
    with pytest.raises(InputError, match="factor sizes"):
        kp @ KroneckerProduct(B, A)
