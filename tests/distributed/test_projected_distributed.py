"""ProjectedPosterior on 2 gloo ranks equals one process on the same loader (gram, krylov, nystrom, block)."""

from __future__ import annotations

import pytest
import torch
from ranks import run_ranks
from torch import nn

from tacitbayes import distributed as D
from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.errors import InputError
from tacitbayes.posteriors.projected import ProjectedPosterior

SOLVERS = ("gram", "krylov", "nystrom", "block")
CASES = (5, 1)  # 5 batches: rank 0 reads 0, 2, 4 and rank 1 reads 1, 3; 1 batch: rank 1 reads none


def _setup(n_batches: int) -> tuple[nn.Module, list, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    sizes = [3, 2, 3, 1, 2][:n_batches]
    loader = [(torch.randn(n, 8, dtype=torch.float64), torch.randint(0, 2, (n,))) for n in sizes]
    return model, loader, torch.randn(5, 8, dtype=torch.float64)


def _results(n_batches: int) -> dict:
    model, loader, x_test = _setup(n_batches)
    out: dict = {}
    for solver in SOLVERS:
        post = ProjectedPosterior(
            model, "classification", solver=solver, tol=1e-11, max_iters=200, nystrom_rank=6
        )
        post.fit(loader)
        out[solver] = {
            "noise": post.projected_noise(8).clone(),
            "residual": post.null_space_residual(n_samples=8),
            "alpha": post.evidence_prior_precision(8),
            "predict": post.predict(x_test, n_samples=8),
        }
    jac = DataJacobian(model, loader)
    out["jac"] = {"n_data": jac.n_data, "rows": jac.shape[0], "loss_sum": jac.loss_sum}
    return out


def _bytes_per_pass(solver: str, scale: int) -> float:
    """Bytes one rank communicates per data pass of a 6-iteration projection, at N = 11·scale.

    ``block``: 3 block steps (4 columns × 4 blocks fit the 22 rows at N = 11: no deflation).
    """
    iters = 3 if solver == "block" else 6
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    loader = [
        (torch.randn(n * scale, 8, dtype=torch.float64), torch.randint(0, 2, (n * scale,)))
        for n in (3, 2, 3, 1, 2)
    ]
    post = ProjectedPosterior(model, solver=solver, tol=1e-300, max_iters=iters, nystrom_rank=6)
    post.fit(loader)
    V = torch.randn(post.n_params, 4, dtype=torch.float64)
    D.communicated_bytes(reset=True)
    _, info = post.project(V)
    assert info.iterations == iters
    return D.communicated_bytes(reset=True) / info.data_passes


def _ranks(rank: int, world_size: int) -> dict:
    out = {n: _results(n) for n in CASES}  # one spawn for both cases (imports dominate)
    out["bytes"] = {
        s: [_bytes_per_pass(s, k) for k in (1, 4)] for s in ("krylov", "nystrom", "block")
    }
    model, loader, _ = _setup(5)
    try:
        ProjectedPosterior(model, solver="alternating").fit(loader)
    except InputError:
        out["alternating_refused"] = True
    return out


def test_communication_per_pass_does_not_grow_with_n(ranks: list[dict]) -> None:
    for solver, (small, large) in ranks[0]["bytes"].items():
        assert small > 0 and small == large, f"{solver}: {small} vs {large} bytes per pass"


def _close(a: object, b: object, what: str) -> None:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    error = float((a - b).abs().max()) / float(b.abs().max().clamp_min(1e-300))
    assert error <= 1e-10, f"{what}: relative difference {error:.2e}"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_ranks(_ranks, tmp_path_factory.mktemp("projected"))


def test_two_ranks_equal_one_process(ranks: list[dict]) -> None:
    assert ranks[0]["alternating_refused"] and ranks[1]["alternating_refused"]
    for n_batches in CASES:
        _compare(ranks[0][n_batches], ranks[1][n_batches], _results(n_batches))


def _compare(r0: dict, r1: dict, one: dict) -> None:
    assert r0["jac"]["n_data"] == one["jac"]["n_data"] == r1["jac"]["n_data"]
    assert r0["jac"]["rows"] == one["jac"]["rows"] == r1["jac"]["rows"]
    _close(r0["jac"]["loss_sum"], one["jac"]["loss_sum"], "loss_sum")
    for solver in SOLVERS:
        a, b, ref = r0[solver], r1[solver], one[solver]
        assert torch.equal(a["noise"], b["noise"]) and torch.equal(a["predict"], b["predict"])
        assert a["residual"] == b["residual"] and a["alpha"] == b["alpha"]
        _close(a["noise"], ref["noise"], f"{solver} noise")
        _close(a["predict"], ref["predict"], f"{solver} predict")
        _close(a["alpha"], ref["alpha"], f"{solver} alpha")
        # ‖J𝒫ε‖/‖Jε‖ ≤ tol is rounding-level, so its relative value is noise: compare it absolutely
        assert max(a["residual"], ref["residual"]) <= 1e-10
