"""Data parallelism on torch.distributed: which batches a rank reads, and the sums over ranks.

When a process group is initialised (``torchrun``, or ``torch.distributed.init_process_group``
yourself), every sum over data in tacitbayes is a sum over ranks of per-rank sums:

* every rank is given the SAME loader (the code is the one-process code, unchanged);
  :func:`shard` makes rank r read batches r, r + W, r + 2W, … of it (W ranks). The shards
  are disjoint and cover every batch once; nothing is padded or repeated (torch's
  ``DistributedSampler`` pads by default, which double-counts examples in a curvature sum).
  A loader that already yields only this rank's part is marked with :func:`presharded`.
* the per-rank sums (curvature, loss, counts N) are added with :func:`all_reduce_`, so
  every rank holds the global result; parameter-space vectors are replicated.
* decisions (stopping rules, searches) are taken from all-reduced values only, so the
  ranks never branch apart.

Without a process group (or with one rank) every function here is the identity.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from tacitbayes.errors import InputError

__all__ = [
    "Shard",
    "all_gather_cat",
    "all_reduce_",
    "all_reduce_float",
    "all_ranks_ok",
    "broadcast_",
    "broadcast_object",
    "communicated_bytes",
    "is_distributed",
    "is_main",
    "launched",
    "presharded",
    "process_group_from_env",
    "rank",
    "rank_rows",
    "shard",
    "world_size",
]


_SENT = [0]  # bytes this rank contributed to collectives since the last reset


def communicated_bytes(reset: bool = False) -> int:
    """Bytes this rank has put into all-reduce / all-gather / broadcast calls (then reset if asked)."""
    sent = _SENT[0]
    if reset:
        _SENT[0] = 0
    return sent


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number W of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Whether this is rank 0: the process that writes files and shows progress."""
    return rank() == 0


def rank_rows(n: int) -> tuple[int, int]:
    """This rank's rows [r·n/W, (r+1)·n/W) of a global batch of n rows (W near-equal slices)."""
    w, r = world_size(), rank()
    return r * n // w, (r + 1) * n // w


def all_reduce_(t: Tensor) -> Tensor:
    """t ← Σ_ranks t, in place (identity with one rank); returns ``t``."""
    if is_distributed():
        _SENT[0] += t.numel() * t.element_size()
        if t.is_contiguous():
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        else:  # collectives read raw memory: reduce a contiguous copy, then write it back
            flat = t.contiguous()
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            t.copy_(flat)
    return t


def all_reduce_float(value: float, dtype: torch.dtype = torch.float64) -> float:
    """Σ_ranks value for a Python number (in ``dtype``; identity with one rank)."""
    if not is_distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=dtype, device=_collective_device())
    _SENT[0] += t.element_size()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def broadcast_(t: Tensor, src: int = 0) -> Tensor:
    """t ← rank ``src``'s t, in place (identity with one rank); returns ``t``."""
    if is_distributed():
        _SENT[0] += t.numel() * t.element_size()
        dist.broadcast(t, src=src)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself with one rank)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_collective_device())
    return box[0]


def all_ranks_ok(ok: bool) -> bool:
    """Whether ``ok`` holds on every rank: Π_ranks ok (so all ranks raise, or none, after a check)."""
    return all_reduce_float(0.0 if ok else 1.0) == 0.0


def all_gather_cat(t: Tensor, dim: int = 0) -> Tensor:
    """The ranks' tensors concatenated along ``dim`` in rank order; sizes along ``dim`` may differ."""
    if not is_distributed():
        return t
    moved = t.movedim(dim, 0).contiguous()
    size = torch.tensor([moved.shape[0]], dtype=torch.long, device=moved.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    padded = moved.new_zeros((max(counts), *moved.shape[1:]))
    padded[: moved.shape[0]] = moved
    parts = [torch.empty_like(padded) for _ in counts]
    _SENT[0] += padded.numel() * padded.element_size() + size.element_size()
    dist.all_gather(parts, padded)
    out = torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])
    return out.movedim(0, dim)


def _collective_device() -> torch.device:
    """The device collectives of this backend run on (CUDA for NCCL, else CPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Shard:
    """Batches r, r + W, r + 2W, … of a re-iterable of batches (this rank's disjoint share)."""

    def __init__(self, data: Iterable[Any], rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is not in [0, {world_size})")
        self.data, self.rank, self.world_size = data, rank, world_size

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.data):
            if i % self.world_size == self.rank:
                yield batch

    def __len__(self) -> int:
        total = len(self.data)  # type: ignore[arg-type]
        return len(range(self.rank, total, self.world_size))


class _Presharded:
    """A loader that already yields only this rank's batches (not sharded again)."""

    def __init__(self, data: Iterable[Any]) -> None:
        self.data = data

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]


def presharded(data: Iterable[Any]) -> Iterable[Any]:
    """Mark a loader that yields only this rank's part of the data: :func:`shard` keeps it whole."""
    return data if isinstance(data, (Shard, _Presharded)) else _Presharded(data)


def shard(data: Iterable[Any]) -> Iterable[Any]:
    """This rank's batches of ``data`` (all of it with one rank, or if already sharded)."""
    if not is_distributed() or isinstance(data, (Shard, _Presharded)):
        return data
    return Shard(data, rank(), world_size())


PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)  # a collective waiting longer than this fails
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """Whether torchrun started this process: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT are set."""
    return all(k in os.environ for k in LAUNCH_VARIABLES)


def _env_int(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None and default is not None:
        return default
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"environment variable {name}={text!r} is not an integer") from None


@contextmanager
def process_group_from_env(
    device: str = "cpu", timeout: timedelta = PROCESS_GROUP_TIMEOUT
) -> Iterator[str]:
    """Join the process group torchrun describes for the block (gloo; nccl for CUDA); destroy it after.

    Yields this rank's device: ``cuda`` becomes ``cuda:<LOCAL_RANK>``. Without torchrun's
    variables, with WORLD_SIZE 1 or with a process group already initialised, nothing is
    done and ``device`` is yielded as given.
    """
    if not launched() or not dist.is_available() or dist.is_initialized():
        yield device
        return
    world, rank_ = _env_int("WORLD_SIZE"), _env_int("RANK")
    if world < 1 or not 0 <= rank_ < world:
        raise InputError(f"RANK={rank_} is not in [0, WORLD_SIZE={world})")
    if world == 1:
        yield device
        return
    cuda = device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise InputError(f"device {device} requested but CUDA is not available")
        if device == "cuda":
            device = f"cuda:{_env_int('LOCAL_RANK', 0)}"
        torch.cuda.set_device(torch.device(device))
    try:
        dist.init_process_group(
            "nccl" if cuda else "gloo", rank=rank_, world_size=world, timeout=timeout
        )
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"cannot join the process group (rank {rank_} of {world}): {first}"
        ) from exc
    try:
        yield device
    finally:
        dist.destroy_process_group()
