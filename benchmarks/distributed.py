"""Data-parallel fits on 1 and 2 processes: seconds and bytes communicated per pass over the data.

For the KFAC Laplace fit (``Laplace(structure="kron").fit``: one pass) and the projected
posterior (``ProjectedPosterior.fit`` and the projection of 8 samples, ``projected_noise(8)``,
with the solver the default picks at this size (Nyström-preconditioned CG on the kernel;
its rank is fixed at ``--nystrom-rank 150``, where the default caps it by the memory
budget at 162 for 55,000 images and 325 for 27,500, so that both sizes do the same work)
capped at 20 iterations so that both world sizes do the same work)
of the fashion-mnist MLP (784-512-512-10 at its initialisation: the cost does not depend on
the weights), on ``--n-train`` training images in batches of 500, each world size W runs W
gloo processes with 2/W threads each (the machine has 2 cores, so the speed-up is bounded by
2 and by the serial parts). Per fit: the median wall time over ``--repeats`` (the slowest
rank), and the bytes one rank put into collectives per pass over the data, measured at
the full and at half the training set (the target: communication per pass independent of N,
so the two are equal). For the projected posterior the passes are the solver's; the set-up
(the fit: batch table, loss sum, the Nyström landmarks' factors and TSQR) is reported apart.

    .venv/bin/python benchmarks/distributed.py [--n-train 55000] [--repeats 3] [--solver nystrom] [--nystrom-rank 150]
        [--fits kfac,projected]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tacitbayes as tb
from tacitbayes import distributed as D
from tacitbayes.data import BatchLoader
from tacitbayes.models import build_model

BATCH = 500


def _fits(n_train: int, repeats: int, solver: str, rank: int, fits: tuple[str, ...]) -> dict:
    """Times and bytes of both fits on this rank (inside a process group, or alone)."""
    data = tb.data.load_dataset("fashion-mnist", ood=False)
    train = torch.utils.data.Subset(data.train, range(n_train))
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.n_classes)
    loader = BatchLoader(train, BATCH)
    out: dict = {f"{fit}_seconds": [] for fit in fits}
    for _ in range(repeats):
        if D.is_distributed():
            dist.barrier()
        if "kfac" in fits:
            D.communicated_bytes(reset=True)
            start = time.perf_counter()
            tb.Laplace(model, "classification", structure="kron").fit(loader)
            out["kfac_seconds"].append(time.perf_counter() - start)
            out["kfac_bytes_per_pass"] = D.communicated_bytes(reset=True)
        if "projected" not in fits:
            continue
        if D.is_distributed():
            dist.barrier()
        start = time.perf_counter()
        post = tb.ProjectedPosterior(
            model, "classification", solver=solver, max_iters=20, nystrom_rank=rank
        )
        D.communicated_bytes(reset=True)
        post.fit(loader)
        out["projected_setup_bytes"] = D.communicated_bytes(reset=True)
        with warnings.catch_warnings():  # 20 iterations may stop above tol: same work, timed
            warnings.simplefilter("ignore")
            post.projected_noise(8)
        out["projected_solver"] = post.solver_used
        out["projected_seconds"].append(time.perf_counter() - start)
        passes = sum(info.data_passes for info in post.infos)  # the solver's passes
        out["projected_bytes_per_pass"] = D.communicated_bytes(reset=True) / passes
        out["projected_passes"] = passes
    return out


def _worker(rank: int, world: int, folder: str, args: argparse.Namespace, n_train: int) -> None:
    torch.set_num_threads(max(1, 2 // world))
    store = dist.FileStore(os.path.join(folder, "store"), world)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=600)
    )
    try:
        torch.save(_run_fits(args, n_train), os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run_fits(args: argparse.Namespace, n_train: int) -> dict:
    return _fits(n_train, args.repeats, args.solver, args.nystrom_rank, args.fits)


def run(world: int, args: argparse.Namespace, n_train: int) -> dict:
    """The fits on ``world`` processes; seconds of the slowest rank, bytes of rank 0."""
    if world == 1:
        torch.set_num_threads(2)
        return _run_fits(args, n_train)
    with tempfile.TemporaryDirectory() as folder:
        ctx = mp.start_processes(
            _worker,
            args=(world, folder, args, n_train),
            nprocs=world,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + 3600
        while not ctx.join(timeout=60):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                raise TimeoutError("the ranks did not finish in an hour")
        ranks = [torch.load(os.path.join(folder, f"rank{r}.pt")) for r in range(world)]
    out = dict(ranks[0])
    for fit in args.fits:
        key = f"{fit}_seconds"
        out[key] = [max(vals) for vals in zip(*(r[key] for r in ranks), strict=True)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=55000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--solver", default="nystrom", choices=("auto", "nystrom", "krylov", "gram")
    )
    parser.add_argument("--nystrom-rank", type=int, default=150)
    parser.add_argument(
        "--fits",
        type=lambda text: tuple(f for f in text.split(",") if f),
        default=("kfac", "projected"),
        help="comma-separated: kfac, projected",
    )
    args = parser.parse_args()
    results: dict = {}
    for world in (1, 2):
        full = run(world, args, args.n_train)
        half = run(world, replace_repeats(args), args.n_train // 2) if world > 1 else None
        entry = {f"{fit}_seconds": statistics.median(full[f"{fit}_seconds"]) for fit in args.fits}
        if "projected" in args.fits:
            entry["projected_passes"] = full["projected_passes"]
            entry["projected_solver"] = full["projected_solver"]
        if half is not None:
            for key in ("kfac_bytes_per_pass", "projected_bytes_per_pass", "projected_setup_bytes"):
                if key in full:
                    entry[key] = {"n": full[key], "n/2": half[key]}
        results[f"{world}_process"] = entry
    one, two = results["1_process"], results["2_process"]
    print(
        json.dumps(
            {
                "benchmark": "distributed",
                "torch": torch.__version__,
                "n_train": args.n_train,
                "batch": BATCH,
                "results": results,
                "speedup": {
                    fit: one[f"{fit}_seconds"] / two[f"{fit}_seconds"] for fit in args.fits
                },
                "communication_independent_of_n": {
                    f"{fit}_bytes_per_pass": two[f"{fit}_bytes_per_pass"]["n"]
                    == two[f"{fit}_bytes_per_pass"]["n/2"]
                    for fit in args.fits
                },
            },
            indent=2,
        )
    )


def replace_repeats(args: argparse.Namespace) -> argparse.Namespace:
    """The same settings with one repeat (the half-size run only measures bytes)."""
    return argparse.Namespace(**{**vars(args), "repeats": 1})


if __name__ == "__main__":
    sys.exit(main())
