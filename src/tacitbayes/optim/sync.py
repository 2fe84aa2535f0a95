"""Keeping replicated optimizer state identical on every rank of a process group.

Data parallelism with a *shared* sample: every rank holds the same parameters and draws
the same noise (one generator, broadcast from rank 0), reads the same global batch B and
computes the gradient of its own slice B_r of it (:func:`tacitbayes.distributed.rank_rows`); the per-rank
statistics s_r (gradients, ĝ ⊙ ε sums, losses) are then combined as

    s = Σ_r w_r s_r,   w_r = |B_r| / |B|,

which is the one-process statistic of the global batch (a mean over B is the
|B_r|-weighted mean of the slice means). All decisions are taken from reduced values, so
the ranks never branch apart. Without a process group every function here is the identity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from tacitbayes import distributed as D
from tacitbayes.distributed import rank_rows
from tacitbayes.errors import InputError

__all__ = [
    "all_reduce_weighted_",
    "broadcast_generator_",
    "broadcast_tensors_",
    "check_weight",
    "rank_rows",
]


def _flat_groups(tensors: Sequence[Tensor]) -> dict[tuple, list[int]]:
    """Indices of ``tensors`` grouped by (dtype, device): one collective per group."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    return groups


def _flat_apply_(tensors: Sequence[Tensor], collective: Callable[[Tensor], object]) -> None:
    """Per (dtype, device) group: concatenate, run ``collective`` on the flat copy in place, write back."""
    for idx in _flat_groups(tensors).values():
        flat = torch.cat([tensors[i].detach().reshape(-1) for i in idx])
        collective(flat)
        offset = 0
        for i in idx:
            t = tensors[i]
            with torch.no_grad():
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def broadcast_tensors_(tensors: Sequence[Tensor], src: int = 0) -> None:
    """t ← rank ``src``'s t for every tensor, in place (flattened per dtype; identity with one rank)."""
    if not D.is_distributed() or not tensors:
        return
    _flat_apply_(tensors, lambda flat: D.broadcast_(flat, src=src))


def broadcast_generator_(generator: torch.Generator, device: torch.device, src: int = 0) -> None:
    """The generator's state ← rank ``src``'s (sent as bytes on ``device``; identity with one rank)."""
    if not D.is_distributed():
        return
    state = generator.get_state()
    shipped = state.to(device)
    D.broadcast_(shipped, src=src)
    generator.set_state(shipped.cpu())


def all_reduce_weighted_(
    tensors: Sequence[Tensor], weight: float, extras: Sequence[float] = ()
) -> list[float]:
    """t ← Σ_r w_r t_r in place for every tensor; returns Σ_r x_r for the numbers ``extras``.

    ``weight`` is this rank's w_r; the extras are summed unweighted (in float64), so a
    caller passes w_r·x_r for a weighted sum or counts for a consistency check.
    """
    if not D.is_distributed():
        return [float(x) for x in extras]
    device = tensors[0].device if tensors else torch.device("cpu")
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    header = torch.tensor([float(x) for x in extras], dtype=torch.float64, device=device)
    if header.numel():
        D.all_reduce_(header)
    _flat_apply_(tensors, lambda flat: D.all_reduce_(flat.mul_(weight)))
    return header.tolist()


def check_weight(weight: float | None) -> float:
    """This rank's share w_r of the global batch: ``weight``, or 1/W when None; InputError unless 0 ≤ w ≤ 1."""
    if weight is None:
        return 1.0 / D.world_size()
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise InputError(f"weight must be a number in [0, 1] (|B_r|/|B|), got {weight!r}")
    return float(weight)
