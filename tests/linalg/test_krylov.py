"""CG, MINRES and LSQR against dense solves and pseudo-inverses."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tacitbayes.errors import InputError
from tacitbayes.linalg import KroneckerProduct, cg, lsqr, minres

DT = torch.float64


def spd(n: int, g: torch.Generator, eps: float = 0.1) -> torch.Tensor:
    Q = torch.randn(n, n, generator=g, dtype=DT)
    return Q @ Q.T / n + eps * torch.eye(n, dtype=DT)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 30), k=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_cg_matches_dense_solve(n: int, k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    A = spd(n, g)
    B = torch.randn(n, k, generator=g, dtype=DT)
    X, info = cg(A, B, tol=1e-12)
    assert bool(info.converged.all())
    assert rel(X, torch.linalg.solve(A, B)) < 1e-8
    assert info.operator_applications == info.iterations
    assert int(info.column_iterations.max()) == info.iterations
    torch.testing.assert_close(
        info.residual_norms, torch.linalg.vector_norm(B - A @ X, dim=0), rtol=0, atol=1e-9
    )


def test_cg_callable_preconditioner_x0_and_vector_rhs() -> None:
    g = torch.Generator().manual_seed(0)
    A = spd(40, g) * torch.logspace(0, 2, 40, dtype=DT)  # badly scaled rows ...
    A = 0.5 * (A + A.T) + 40 * torch.eye(40, dtype=DT)  # ... made symmetric and SPD again
    b = torch.randn(40, generator=g, dtype=DT)
    dinv = 1 / A.diagonal()
    X, info = cg(lambda V: A @ V, b, tol=1e-10, preconditioner=lambda V: dinv[:, None] * V)
    assert X.shape == (40,) and bool(info.converged.all())
    assert rel(X, torch.linalg.solve(A, b)) < 1e-8
    assert info.preconditioner_applications == info.iterations  # initial + all but the last
    x0 = X + 1e-3 * torch.randn(40, generator=g, dtype=DT)
    X2, info2 = cg(A, b, x0=x0, tol=1e-10)
    assert rel(X2, torch.linalg.solve(A, b)) < 1e-8
    assert info2.operator_applications == info2.iterations + 1


def test_cg_on_kronecker_operator_and_zero_column() -> None:
    g = torch.Generator().manual_seed(1)
    kp = KroneckerProduct(spd(4, g), spd(5, g))
    B = torch.randn(20, 3, generator=g, dtype=DT)
    B[:, 1] = 0
    X, info = cg(kp, B, tol=1e-12)
    assert rel(X, kp.solve(B)) < 1e-8
    assert bool(info.converged.all()) and int(info.column_iterations[1]) == 0
    assert torch.all(X[:, 1] == 0)


def test_cg_psd_consistent_gives_minimum_norm() -> None:
    g = torch.Generator().manual_seed(2)
    Q = torch.randn(12, 5, generator=g, dtype=DT)
    A = Q @ Q.T  # rank 5
    b = A @ torch.randn(12, generator=g, dtype=DT)
    x, info = cg(A, b, tol=1e-12)
    assert bool(info.converged.all())
    assert rel(x, torch.linalg.pinv(A) @ b) < 1e-8


def test_cg_rejects_indefinite_operator() -> None:
    A = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=DT))
    with pytest.raises(InputError, match="positive"):
        cg(A, torch.ones(3, dtype=DT))


def test_minres_indefinite_and_singular() -> None:
    g = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(15, 15, generator=g, dtype=DT))
    ev = torch.linspace(-3, 4, 15, dtype=DT)
    ev = ev + 0.05 * torch.where(ev >= 0, 1.0, -1.0)
    A = Q @ torch.diag(ev) @ Q.T
    B = torch.randn(15, 2, generator=g, dtype=DT)
    X, info = minres(A, B, tol=1e-12)
    assert bool(info.converged.all())
    assert rel(X, torch.linalg.solve(A, B)) < 1e-8
    ev[:4] = 0  # singular; a right-hand side in the range gives the minimum-norm solution
    A = Q @ torch.diag(ev) @ Q.T
    b = A @ torch.randn(15, generator=g, dtype=DT)
    x, info = minres(lambda V: A @ V, b, tol=1e-12)
    assert rel(x, torch.linalg.pinv(A) @ b) < 1e-8
    assert info.operator_applications == info.iterations


def test_minres_with_preconditioner() -> None:
    g = torch.Generator().manual_seed(4)
    A = spd(20, g) - 0.3 * torch.eye(20, dtype=DT)
    b = torch.randn(20, generator=g, dtype=DT)
    d = torch.linspace(1, 3, 20, dtype=DT)
    x, info = minres(A, b, tol=1e-12, preconditioner=lambda V: d[:, None] * V)
    assert rel(x, torch.linalg.solve(A, b)) < 1e-8
    assert info.preconditioner_applications == info.iterations + 1


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 12), extra=st.integers(1, 20), seed=st.integers(0, 2**31 - 1))
def test_lsqr_wide_matches_pinv(n: int, extra: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    d = n + extra
    A = torch.randn(n, d, generator=g, dtype=DT)
    B = torch.randn(n, 3, generator=g, dtype=DT)
    X, info = lsqr(lambda V: A @ V, lambda U: A.T @ U, B, tol=1e-14, max_iters=200)
    assert rel(X, torch.linalg.pinv(A) @ B) < 1e-8
    assert info.operator_applications == info.iterations
    assert info.adjoint_applications == info.iterations + 1


def test_lsqr_residual_history_is_the_true_residual_of_each_iterate() -> None:
    g = torch.Generator().manual_seed(8)
    A = torch.randn(15, 40, generator=g, dtype=DT)
    B = torch.randn(15, 3, generator=g, dtype=DT)
    _, info = lsqr(A, A.T, B, tol=1e-12, atol=0.0, least_squares_stop=False, max_iters=12)
    assert len(info.relative_residual_history) == info.iterations == 12
    for k in (1, 4, 12):  # LSQR is deterministic: stopping at k gives the k-th iterate
        X, _ = lsqr(A, A.T, B, tol=1e-12, atol=0.0, least_squares_stop=False, max_iters=k)
        true = torch.linalg.vector_norm(B - A @ X, dim=0) / torch.linalg.vector_norm(B, dim=0)
        assert info.relative_residual_history[k - 1] == pytest.approx(float(true.max()), rel=1e-8)


def test_lsqr_rank_deficient_consistent_and_vector() -> None:
    g = torch.Generator().manual_seed(5)
    A = torch.randn(12, 3, generator=g, dtype=DT) @ torch.randn(3, 8, generator=g, dtype=DT)
    b = A @ torch.randn(8, generator=g, dtype=DT)
    x, info = lsqr(A, A.T, b, tol=1e-14)
    assert x.shape == (8,) and bool(info.converged.all())
    assert rel(x, torch.linalg.pinv(A) @ b) < 1e-8
    assert float(info.residual_norms[0]) < 1e-10 * float(torch.linalg.vector_norm(b))


def test_lsqr_tall_inconsistent_and_damped() -> None:
    g = torch.Generator().manual_seed(6)
    A = torch.randn(30, 6, generator=g, dtype=DT)
    B = torch.randn(30, 2, generator=g, dtype=DT)
    X, info = lsqr(A, A.T, B, tol=1e-14)
    assert rel(X, torch.linalg.pinv(A) @ B) < 1e-8
    R = B - A @ X
    torch.testing.assert_close(info.residual_norms, torch.linalg.vector_norm(R, dim=0))
    assert float(info.normal_residual_norms.max()) < 1e-8
    damp = 0.7
    X, info = lsqr(A, A.T, B, tol=1e-14, damp=damp)
    ridge = torch.linalg.solve(A.T @ A + damp**2 * torch.eye(6, dtype=DT), A.T @ B)
    assert rel(X, ridge) < 1e-8
    torch.testing.assert_close(info.residual_norms, torch.linalg.vector_norm(B - A @ X, dim=0))


def test_lsqr_zero_rhs_column() -> None:
    A = torch.randn(5, 7, dtype=DT, generator=torch.Generator().manual_seed(7))
    B = torch.zeros(5, 2, dtype=DT)
    B[:, 0] = 1
    X, info = lsqr(A, A.T, B, tol=1e-14)
    assert torch.all(X[:, 1] == 0) and bool(info.converged.all())
    assert rel(X[:, 0], torch.linalg.pinv(A) @ B[:, 0]) < 1e-8


def test_float32_solvers() -> None:
    g = torch.Generator().manual_seed(8)
    A = spd(10, g).float()
    b = torch.randn(10, generator=g)
    x, info = cg(A, b, tol=1e-5)
    assert x.dtype == torch.float32 and bool(info.converged.all())
    x, _ = lsqr(A, A.T, b, tol=1e-6)
    assert rel(x.double(), torch.linalg.solve(A.double(), b.double())) < 1e-3


def test_bad_inputs_raise_input_error() -> None:
    A = torch.eye(3, dtype=DT)
    with pytest.raises(InputError, match="torch.Tensor"):
        cg(A, [1.0, 2.0, 3.0])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="float32 or float64"):
        cg(A, torch.ones(3, dtype=torch.int64))
    with pytest.raises(InputError, match="shape"):
        cg(A, torch.ones(3, 2, 2, dtype=DT))
    with pytest.raises(InputError, match="callable"):
        cg(3, torch.ones(3, dtype=DT))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="rows"):
        cg(torch.eye(4, dtype=DT)[:, :3], torch.ones(3, dtype=DT))
    with pytest.raises(InputError, match="x0"):
        cg(A, torch.ones(3, dtype=DT), x0=torch.ones(4, dtype=DT))
    with pytest.raises(InputError, match="tol"):
        cg(A, torch.ones(3, dtype=DT), tol=-1.0)
    with pytest.raises(InputError, match="damp"):
        lsqr(A, A.T, torch.ones(3, dtype=DT), damp=-1.0)
    with pytest.raises(InputError, match="dtype"):
        lsqr(lambda V: (A @ V).float(), A.T, torch.ones(3, dtype=DT))
    with pytest.raises(InputError, match="positive definite"):
        minres(A, torch.ones(3, dtype=DT), preconditioner=-A)


def test_lsqr_residual_only_stop_reaches_the_residual_tolerance() -> None:
    g = torch.Generator().manual_seed(11)
    # an ill-conditioned consistent system: the default rules may stop on ‖Aᵀr‖ first
    U, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=DT))
    V, _ = torch.linalg.qr(torch.randn(60, 30, generator=g, dtype=DT))
    A = U @ torch.diag(torch.logspace(0, -6, 30, dtype=DT)) @ V.T
    B = A @ torch.randn(60, 4, generator=g, dtype=DT)
    X, info = lsqr(A, A.T, B, tol=1e-3, atol=0.0, least_squares_stop=False, max_iters=500)
    residual = torch.linalg.vector_norm(A @ X - B, dim=0) / torch.linalg.vector_norm(B, dim=0)
    assert bool(info.converged.all())
    assert bool((residual <= 1.01e-3).all())
    torch.testing.assert_close(
        info.residual_norms, torch.linalg.vector_norm(A @ X - B, dim=0), rtol=1e-6, atol=1e-12
    )
