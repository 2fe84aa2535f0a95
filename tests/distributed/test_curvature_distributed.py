"""Curvature, Laplace and spectral estimates on 2 gloo ranks equal the one-process results."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ranks import run_ranks
from torch import nn

from tacitbayes.curvature import GGN, KFAC, Hessian
from tacitbayes.curvature.columns import ggn_diagonal
from tacitbayes.curvature.spectral import top_eigenvalues
from tacitbayes.posteriors.laplace import Laplace

RTOL = 1e-10
SEARCH_RTOL = 1e-6  # a δ found by Brent's search (xatol 1e-7 in log δ) moves within its tolerance


def _setup(kind: str, n_batches: int) -> tuple[nn.Module, list]:
    """A small float64 MLP or CNN classifier and ``n_batches`` batches of uneven size."""
    torch.manual_seed(0)
    if kind == "mlp":
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        shape = (4,)
    else:
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
        shape = (1, 6, 6)
    model = model.double()
    batches = []
    for i in range(n_batches):
        n = 3 + i % 2
        batches.append((torch.randn(n, *shape, dtype=torch.float64), torch.randint(0, 3, (n,))))
    return model, batches


def _compute(kind: str, n_batches: int) -> dict:
    """Every quantity under test, in the current process (sharded inside a process group)."""
    model, data = _setup(kind, n_batches)
    n_p = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(1)
    v, block = torch.randn(n_p, generator=gen, dtype=torch.float64), None
    block = torch.randn(n_p, 3, generator=gen, dtype=torch.float64)
    kfac = KFAC(model, "cross_entropy", data)
    ggn = GGN(model, "cross_entropy", data)
    hess = Hessian(model, "cross_entropy", data, cache_graph=False)
    cached = Hessian(model, "cross_entropy", data, cache_graph=True)
    out = {
        "factors": [t for A, G in kfac.factors.values() for t in (A, G)],
        "kfac_n": torch.tensor([kfac.n_data, kfac.n_outputs]),
        "kfac_loss": torch.tensor(kfac.loss_sum),
        "ggn_v": ggn @ v,
        "ggn_block": ggn @ block,
        "hess_v": hess @ v,
        "hess_block": hess @ block,
        "cached_v": cached @ v,
        "cached_block": cached @ block,
        "diag": ggn_diagonal(model, "cross_entropy", data),
        "loss": ggn.loss_value(),
        "grad": ggn.gradient(),
        "n_data": torch.tensor(ggn.n_data),
        "top": top_eigenvalues(cached, k=1, seed=0, tol=1e-12).eigenvalues,
    }
    for structure in ("kron", "diag", "last_layer"):
        la = Laplace(model, "classification", structure, prior_precision=1.0).fit(data)
        out[f"{structure}_marglik"] = la.log_marginal_likelihood().detach()
        la.optimize_prior_precision("marglik")
        out[f"{structure}_delta"] = la.prior_precision.detach()
    la = Laplace(model, "classification", "diag", prior_precision=1.0)
    la.fit(data)
    la.optimize_prior_precision(
        "validation", val_loader=data, grid=[0.1, 1.0, 10.0], link_approx="probit"
    )
    out["val_delta"] = la.prior_precision.detach()
    return out


def _on_rank(rank: int, world_size: int, kind: str, n_batches: int) -> dict:
    return _compute(kind, n_batches)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> bool:
    """max |a − b| ≤ rtol · max |b|."""
    return not b.numel() or float((a - b).abs().max()) <= rtol * float(b.abs().max())


@pytest.mark.parametrize(("kind", "n_batches"), [("mlp", 5), ("cnn", 5), ("mlp", 1)])
def test_two_ranks_equal_one_process(tmp_path: Path, kind: str, n_batches: int) -> None:
    r0, r1 = run_ranks(_on_rank, tmp_path, args=(kind, n_batches))
    ref = _compute(kind, n_batches)
    assert r0.keys() == ref.keys()
    for key, want in ref.items():
        got0, got1 = r0[key], r1[key]
        if isinstance(want, list):
            assert all(torch.equal(a, b) for a, b in zip(got0, got1, strict=True)), key
            assert all(_close(a, b) for a, b in zip(got0, want, strict=True)), key
        else:
            assert torch.equal(got0, got1), key
            rtol = SEARCH_RTOL if key.endswith("_delta") else RTOL
            assert _close(got0, want, rtol), (key, got0, want)
