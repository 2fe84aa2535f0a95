"""rows="ggn": the null space of the GGN JᵀΛJ, against dense autograd matrices."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import jacrev

import tacitbayes as tb
from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.curvature.ntk import kernel_factors, ntk_gram
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel, flatten, unflatten


def _setup(n=8, width=12, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (n,), generator=gen)
    torch.manual_seed(seed + 1)
    model = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 10)).double()
    with torch.no_grad():  # no probability near 0: Λ_n has rank O − 1 cleanly
        model[2].weight.mul_(0.3)
    return model, x, y, gen


def _dense_ggn_rows(model, x):
    """Rows S_nᵀ J_n with S_n S_nᵀ = Λ_n (any factor gives the same Gram and null space)."""
    fmodel = FunctionalModel(model)
    params = fmodel.params()
    theta = flatten(params)
    J = jacrev(lambda t: fmodel(unflatten(t, params), x))(theta)  # (N, O, P)
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    # a factor S_n S_nᵀ = Λ_n: column c is √p_c (e_c − p); 1ᵀ S_n = 0 exactly
    root = (torch.eye(10, dtype=p.dtype) - p[:, :, None]) * p.sqrt()[:, None, :]
    torch.testing.assert_close(root @ root.transpose(1, 2), lam)
    return torch.einsum("nop,noc->ncp", J, root).reshape(-1, theta.numel()), J, lam


def test_data_jacobian_ggn_rows_give_the_ggn_and_its_null_space() -> None:
    model, x, y, _ = _setup()
    rows, J, lam = _dense_ggn_rows(model, x)
    jac = DataJacobian(model, [(x, y)], outputs="ggn")
    dense = jac @ torch.eye(jac.shape[1], dtype=torch.float64)
    ggn = torch.einsum("nop,noq,nqr->pr", J, lam, J)
    torch.testing.assert_close(dense.T @ dense, ggn, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dense.T @ dense, rows.T @ rows, rtol=1e-10, atol=1e-12)


def test_kernel_factors_ggn_gram_equals_s_k_s() -> None:
    model, x, y, _ = _setup()
    factors = kernel_factors(model, x, y, outputs="ggn")
    jac = DataJacobian(model, [(x, y)], outputs="ggn")
    dense = jac @ torch.eye(jac.shape[1], dtype=torch.float64)
    torch.testing.assert_close(ntk_gram([factors]), dense @ dense.T, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("solver", ["gram", "parameter", "nystrom", "block", "krylov"])
def test_projected_posterior_ggn_rows_equal_the_dense_ggn_projector(solver: str) -> None:
    model, x, y, gen = _setup(n=8, width=12)  # P = 190 > N·O = 80
    rows, J, _ = _dense_ggn_rows(model, x)
    assert int(torch.linalg.matrix_rank(rows)) == 8 * 9  # N·(O − 1): one null row per example
    projector = torch.eye(rows.shape[1], dtype=torch.float64) - torch.linalg.pinv(rows) @ rows
    post = tb.ProjectedPosterior(model, rows="ggn", solver=solver, tol=1e-9, max_iters=800)
    post.fit([(x, y)])
    samples = post.projected_noise(3)
    expected = projector @ post._eps[:, :3]
    assert float((samples - expected).norm() / expected.norm()) <= 1e-6
    # the linearised training probabilities are unchanged: J δ shifts each example's logits alike
    shift = torch.einsum("nop,ps->nos", J, samples)
    assert float((shift - shift.mean(1, keepdim=True)).abs().max()) <= 1e-6 * float(
        shift.abs().max()
    )
    assert (
        float(shift.abs().max()) > 1e-3
    )  # and the shift itself is not zero (a superset of null J)


def test_rows_is_checked() -> None:
    model, *_ = _setup()
    with pytest.raises(InputError, match="rows"):
        tb.ProjectedPosterior(model, rows="hessian")
    with pytest.raises(InputError, match="loss_projected"):
        tb.ProjectedPosterior(model, rows="ggn", loss_projected=True)


@pytest.mark.parametrize("rows", ["logits", "ggn"])
def test_nystrom_minres_equals_the_dense_projector(rows: str) -> None:
    """krylov="minres" minimises ‖J𝒫v‖ over each Krylov space; the projection is the same."""
    model, x, y, _ = _setup(n=8, width=12)
    dense_rows = _dense_ggn_rows(model, x)[0] if rows == "ggn" else None
    if dense_rows is None:
        jac = DataJacobian(model, [(x, y)])
        dense_rows = jac @ torch.eye(jac.shape[1], dtype=torch.float64)
    eye = torch.eye(dense_rows.shape[1], dtype=torch.float64)
    projector = eye - torch.linalg.pinv(dense_rows) @ dense_rows
    post = tb.ProjectedPosterior(
        model, rows=rows, solver="nystrom", krylov="minres", tol=1e-9, max_iters=800
    ).fit([(x, y)])
    samples = post.projected_noise(3)
    expected = projector @ post._eps[:, :3]
    assert float((samples - expected).norm() / expected.norm()) <= 1e-6
    assert post.infos[0].max_residual <= 1e-9


def test_minres_with_a_row_inner_product_equals_the_plain_one() -> None:
    """The sharded form (inner=) takes the same steps as the plain one on one process."""
    from tacitbayes.linalg import minres

    gen = torch.Generator().manual_seed(3)
    root = torch.randn(30, 20, generator=gen, dtype=torch.float64)
    A, B = root @ root.T, root @ torch.randn(20, 2, generator=gen, dtype=torch.float64)
    plain, _ = minres(lambda v: A @ v, B, tol=1e-10, max_iters=100)
    sharded, info = minres(
        lambda v: A @ v, B, tol=1e-10, max_iters=100, inner=lambda a, b: (a * b).sum(0)
    )
    torch.testing.assert_close(sharded, plain)
    torch.testing.assert_close(A @ plain, B, rtol=1e-8, atol=1e-8)
    assert info.relative_residual_history[-1] <= 1e-10


def test_krylov_is_checked() -> None:
    model, *_ = _setup()
    with pytest.raises(InputError, match="krylov"):
        tb.ProjectedPosterior(model, krylov="gmres")


def test_nll_tol_sets_the_residual_from_the_ggn_trace_and_the_evidence_precision() -> None:
    model, x, y, _ = _setup(n=8)
    rows, _, _ = _dense_ggn_rows(model, x)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    alpha = min(8 * 9, theta.numel()) / float(theta.pow(2).sum())  # rank bound N(O − 1)
    trace = float(rows.pow(2).sum())
    for products in ("factors", "autograd"):  # exact trace / Hutchinson estimate
        post = tb.ProjectedPosterior(
            model, rows="ggn", solver="block", nll_tol=1e-3, tol=1e-9, products=products
        ).fit([(x, y)])
        want = (2 * 8 * alpha * 1e-3 / trace) ** 0.5
        rel = 1e-9 if products == "factors" else 0.7  # 4 Hutchinson probes
        assert abs(post.effective_tol - want) <= rel * want
        post.projected_noise(4)
        assert post.infos[0].max_residual <= post.effective_tol
        # the projection stopped early: the predicted per-sample NLL change is within nll_tol
        eps, proj = post._eps[:, :4], post.projected_noise(4)
        moved = (rows @ proj).pow(2).sum(0) / (2 * 8 * alpha)
        full = (rows @ eps).pow(2).sum(0) / (2 * 8 * alpha)
        assert float(moved.max()) <= 1e-3 * float(full.max() / full.mean()) * 1.01


def test_nll_tol_needs_ggn_rows() -> None:
    model, _, _, _ = _setup()
    with pytest.raises(InputError, match="nll_tol needs rows='ggn'"):
        tb.ProjectedPosterior(model, nll_tol=1e-3)
    with pytest.raises(InputError, match="nll_tol must be a positive number"):
        tb.ProjectedPosterior(model, rows="ggn", nll_tol=0.0)


def test_evidence_rank_is_the_row_bound_after_an_inexact_solve() -> None:
    model, x, y, _ = _setup(n=8)
    rows, _, _ = _dense_ggn_rows(model, x)
    true_rank = int(torch.linalg.matrix_rank(rows))
    assert true_rank == 8 * 9  # full row rank N·(O − 1) with P = 190
    exact = tb.ProjectedPosterior(model, rows="ggn", solver="block", tol=1e-10).fit([(x, y)])
    # converged: the Hutchinson estimate P − mean ‖𝒫ε‖² (32 samples), near the rank
    assert abs(exact.rank_estimate(32) - true_rank) < 0.25 * true_rank
    stopped = tb.ProjectedPosterior(model, rows="ggn", solver="block", tol=1e-10, max_iters=1).fit(
        [(x, y)]
    )
    with pytest.warns(RuntimeWarning, match="stopped at residual"):
        stopped.projected_noise(32)
    hutchinson = stopped.n_params - stopped.trace_projector(32)
    assert hutchinson < 0.6 * true_rank  # one step reaches about 32 of 72 directions
    assert stopped.rank_estimate(32) == true_rank  # the row bound instead
