"""Run a function on W CPU processes with the gloo backend (FileStore, a timeout on every join).

``run_ranks(fn, tmp_path, world_size=2, args=())`` calls ``fn(rank, world_size, *args)`` in
each process inside an initialised process group and returns the list of what each rank
returned (saved with torch.save). A rank that raises or hangs fails the test.
"""

from __future__ import annotations

import os
import pickle
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

JOIN_TIMEOUT = 300  # seconds for all ranks together


def _worker(rank: int, world_size: int, fn: Callable[..., Any], args: tuple, folder: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    store = dist.FileStore(os.path.join(folder, "store"), world_size)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world_size, timeout=timedelta(seconds=120)
    )
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
    except BaseException:
        with open(os.path.join(folder, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def run_ranks(
    fn: Callable[..., Any], tmp_path: Path, world_size: int = 2, args: tuple = ()
) -> list[Any]:
    """fn(rank, world_size, *args) on ``world_size`` gloo processes; their results in rank order."""
    folder = tmp_path / f"ranks-{fn.__name__}"
    folder.mkdir(parents=True, exist_ok=True)
    pickle.dumps(fn)  # a module-level function: the spawned processes import it
    ctx = mp.start_processes(
        _worker,
        args=(world_size, fn, args, str(folder)),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    import time

    deadline = time.monotonic() + JOIN_TIMEOUT
    try:
        while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"ranks of {fn.__name__} did not finish in {JOIN_TIMEOUT} s")
    except Exception as exc:
        errors = [p.read_text() for p in sorted(folder.glob("rank*.err"))]
        raise AssertionError(f"{exc}\n" + "\n".join(errors)) from exc
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
