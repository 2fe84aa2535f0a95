"""IVON (sync mode), ``train_ivon`` and ``train_ibvi`` on 2 gloo ranks equal one process on the global batch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from ranks import run_ranks
from torch import nn
from torch.utils.data import TensorDataset

from tacitbayes import distributed as D
from tacitbayes.errors import InputError
from tacitbayes.optim import IVON, VariationalGD
from tacitbayes.optim.sync import rank_rows

DT = torch.float64
# Hessian approximations / update modes the sampled optimizers offer
MODES = {
    "reparam": dict(beta2=0.99),  # ĥ = ĝ ⊙ ε / σ, all-reduced
    "reparam_mc2": dict(beta2=0.9, mc_samples=2, clip_radius=0.05, rescale_lr=True),
    "fixed": dict(beta2=1.0),  # β₂ = 1: no ĝ ⊙ ε collected (nothing None is reduced)
    "closure": dict(beta2=0.99, mc_samples=2),  # step(closure): the loss is reduced too
    "vgd": {},
}


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(21, 4, generator=g, dtype=DT)
    y = torch.randint(0, 3, (21,), generator=g)
    return [(x[:7], y[:7]), (x[7:16], y[7:16]), (x[16:17], y[16:17]), (x[17:], y[17:])]


def _optimizer(mode: str, model: nn.Module, seed: int, sync: bool):
    if mode == "vgd":
        return VariationalGD(model.parameters(), lr=0.1, sigma=0.05, n_samples=2, seed=seed,
                             sync=sync)  # fmt: skip
    return IVON(model.parameters(), lr=0.1, ess=50.0, seed=seed, sync=sync, **MODES[mode])


def _ivon_run(mode: str, init_seed: int, sync: bool = True) -> dict:
    """A few steps, each rank on its rows of the same global batches (all rows with one process)."""
    model = _mlp(init_seed)
    opt = _optimizer(mode, model, seed=5 + init_seed, sync=sync)
    loss_fn = nn.functional.cross_entropy
    losses = []
    for x, y in _batches():
        start, stop = rank_rows(len(y))
        weight = (stop - start) / len(y) if D.is_distributed() else None
        if start == stop:  # an empty slice: one row at weight 0 keeps the draws in step
            start, stop = 0, 1
        xs, ys = x[start:stop], y[start:stop]
        if mode == "closure":

            def closure(xs: torch.Tensor = xs, ys: torch.Tensor = ys) -> torch.Tensor:
                loss = loss_fn(model(xs), ys)
                loss.backward()
                return loss

            losses.append(opt.step(closure, weight=weight))
            continue
        for _ in range(opt.mc_samples):
            with opt.sampled_params(train=True):
                loss_fn(model(xs), ys).backward()
        opt.step(weight=weight)
    states = [opt.state[p] for p in model.parameters()]
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "hess": [s["hess"].clone() for s in states if "hess" in s],
        "momentum": [s["momentum"].clone() for s in states if "momentum" in s],
        "rng": opt.generator.get_state(),
        "losses": losses,
    }


def _all_ranks(rank: int, world_size: int) -> dict:
    """Everything the 2-rank tests check, in one spawn of the ranks (the spawn dominates the time)."""
    return {"steps": _ivon_ranks(rank), "train": _training_ranks(rank)}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_ranks(_all_ranks, tmp_path_factory.mktemp("variational"))


def _ivon_ranks(rank: int) -> dict:
    out = {mode: _ivon_run(mode, init_seed=rank) for mode in MODES}  # different inits: broadcast
    model = _mlp(0)
    opt = IVON(model.parameters(), lr=0.1, ess=50.0, seed=0, sync=True)
    x, y = _batches()[0]
    try:  # rank 0 collects two samples, rank 1 one: every rank refuses the step
        for _ in range(1 + (rank == 0)):
            with opt.sampled_params(train=True):
                nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    except InputError as exc:
        out["mismatch"] = str(exc)
    return out


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-10) -> bool:
    return float((a - b).abs().max()) <= rel * max(float(b.abs().max()), 1e-300)


def _assert_equal_runs(ref: dict, r0: dict, r1: dict, what: str) -> None:
    for key in ("params", "hess", "momentum"):
        assert len(ref[key]) == len(r0[key]), (what, key)
        for a, b, c in zip(r0[key], r1[key], ref[key], strict=True):
            assert torch.equal(a, b), (what, key, "ranks differ")
            assert _close(a, c), (what, key, float((a - c).abs().max()))


def test_ivon_steps_on_two_ranks_equal_one_process(ranks: list[dict]) -> None:
    r0, r1 = (r["steps"] for r in ranks)
    for mode in MODES:
        ref = _ivon_run(mode, init_seed=0)
        _assert_equal_runs(ref, r0[mode], r1[mode], mode)
        assert torch.equal(r0[mode]["rng"], r1[mode]["rng"])
        assert torch.equal(r0[mode]["rng"], ref["rng"]), mode  # same number of draws
        for a, b, c in zip(r0[mode]["losses"], r1[mode]["losses"], ref["losses"], strict=True):
            assert a == b and abs(a - c) <= 1e-10 * abs(c), mode
    assert r0["fixed"]["hess"] and all(
        torch.equal(h, torch.ones_like(h)) for h in r0["fixed"]["hess"]
    )
    assert "different numbers" in r0["mismatch"] and "different numbers" in r1["mismatch"]


@pytest.mark.parametrize("mode", list(MODES))
def test_sync_without_a_process_group_changes_nothing(mode: str) -> None:
    a, b = _ivon_run(mode, 0, sync=True), _ivon_run(mode, 0, sync=False)
    for key in ("params", "hess", "momentum"):
        assert all(torch.equal(s, t) for s, t in zip(a[key], b[key], strict=True))
    assert a["losses"] == b["losses"]


def test_bad_weight_and_sync_are_input_errors() -> None:
    model = _mlp(0)
    with pytest.raises(InputError, match="sync"):
        IVON(model.parameters(), lr=0.1, ess=10.0, sync=1)  # type: ignore[arg-type]
    opt = IVON(model.parameters(), lr=0.1, ess=10.0)
    with pytest.raises(InputError, match="weight"):
        opt.step(weight=1.5)


# ---------------------------------------------------------------- training helpers


def _toy() -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(29, 4, generator=g, dtype=DT)  # batches 7,7,7,7,1: uneven and empty slices
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def _train_ivon() -> dict:
    from tacitbayes.experiments.compare.method_ivon import IvonSettings, train_ivon
    from tacitbayes.experiments.compare.registry import FitContext
    from tacitbayes.training import TrainConfig

    torch.set_default_dtype(DT)
    try:
        x, y = _toy().tensors
        train = TensorDataset(x.reshape(-1, 1, 2, 2), y)  # images (1, 2, 2) for the MLP
        data = SimpleNamespace(name="toy", input_shape=(1, 2, 2), n_classes=3, train=train)
        ctx = FitContext(
            model=nn.Identity(),
            data=data,  # type: ignore[arg-type]
            train_config=TrainConfig(epochs=2, batch_size=7, progress=False),
            model_name="mlp",
            model_options={"width": 8},
            progress=False,
        )
        settings = IvonSettings(lr=0.2, beta2=0.99, clip_radius=None)
        model, opt, _ = train_ivon(ctx, settings)
    finally:
        torch.set_default_dtype(torch.float32)
    hess = [opt.state[p]["hess"].clone() for p in model.parameters()]
    return {"params": [p.detach().clone() for p in model.parameters()], "hess": hess}


def _train_ibvi(seed_offset: int = 0) -> dict:
    from tacitbayes.variational import IBVIConfig, VariationalModel, train_ibvi

    torch.manual_seed(11 + seed_offset)  # rank 1 starts elsewhere: rank 0's weights win
    vnet = VariationalModel(_mlp(seed_offset), init=True, rank=2)
    config = IBVIConfig(epochs=2, batch_size=7, lr=0.05, n_samples=2, progress=False)
    result = train_ibvi(vnet, _toy(), config, val_set=_toy())
    return {"params": [p.detach().clone() for p in vnet.parameters()], "history": result.history}


def _training_ranks(rank: int) -> dict:
    return {"ivon": _train_ivon(), "ibvi": _train_ibvi(seed_offset=rank)}


def test_train_ivon_and_train_ibvi_on_two_ranks_equal_one_process(ranks: list[dict]) -> None:
    r0, r1 = (r["train"] for r in ranks)
    ref_ivon, ref_ibvi = _train_ivon(), _train_ibvi()
    for key in ("params", "hess"):
        for a, b, c in zip(r0["ivon"][key], r1["ivon"][key], ref_ivon[key], strict=True):
            assert torch.equal(a, b) and _close(a, c), key
    for a, b, c in zip(r0["ibvi"]["params"], r1["ibvi"]["params"], ref_ibvi["params"], strict=True):
        assert torch.equal(a, b) and _close(a, c)
    assert r0["ibvi"]["history"] == r1["ibvi"]["history"]
    for h, ref in zip(r0["ibvi"]["history"], ref_ibvi["history"], strict=True):
        assert h.keys() == ref.keys()
        assert all(abs(h[k] - ref[k]) <= 1e-10 * max(abs(ref[k]), 1.0) for k in ref)
