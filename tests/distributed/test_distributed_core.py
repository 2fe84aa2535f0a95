"""The distributed primitives on 2 gloo processes: shards, all-reduce, all-gather."""

from __future__ import annotations

from pathlib import Path

import torch
from ranks import run_ranks

from tacitbayes import distributed as D


def _core(rank: int, world_size: int) -> dict:
    batches = [(torch.full((2,), float(i)), torch.zeros(2)) for i in range(5)]
    mine = [float(x[0]) for x, _ in D.shard(batches)]
    total = D.all_reduce_(torch.tensor([float(rank + 1)], dtype=torch.float64))
    gathered = D.all_gather_cat(torch.arange(rank + 1, dtype=torch.float64) + 10 * rank)
    again = [float(x[0]) for x, _ in D.shard(D.presharded(batches))]
    return {
        "mine": mine,
        "total": float(total),
        "sum": D.all_reduce_float(0.5),
        "gathered": gathered.tolist(),
        "again": again,
        "main": D.is_main(),
        "len": len(D.shard(batches)),
    }


def test_shards_are_disjoint_and_sums_global(tmp_path: Path) -> None:
    r0, r1 = run_ranks(_core, tmp_path)
    assert r0["mine"] == [0.0, 2.0, 4.0] and r1["mine"] == [1.0, 3.0]
    assert r0["len"] == 3 and r1["len"] == 2
    assert r0["total"] == r1["total"] == 3.0 and r0["sum"] == r1["sum"] == 1.0
    assert r0["gathered"] == r1["gathered"] == [0.0, 10.0, 11.0]
    assert r0["again"] == r1["again"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert r0["main"] and not r1["main"]


def test_one_process_is_the_identity() -> None:
    batches = [1, 2, 3]
    assert D.shard(batches) is batches and D.world_size() == 1 and D.rank() == 0
    t = torch.ones(2)
    assert D.all_reduce_(t) is t and D.all_gather_cat(t) is t and D.all_reduce_float(2.0) == 2.0


def _transposed(rank: int, world_size: int) -> list:
    t = torch.arange(6, dtype=torch.float64).reshape(2, 3).T * (rank + 1)  # not contiguous
    return D.all_reduce_(t).tolist()


def test_all_reduce_of_a_non_contiguous_view(tmp_path: Path) -> None:
    r0, r1 = run_ranks(_transposed, tmp_path)
    want = (torch.arange(6, dtype=torch.float64).reshape(2, 3).T * 3).tolist()
    assert r0 == r1 == want
