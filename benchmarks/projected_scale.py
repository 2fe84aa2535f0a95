"""Projected-posterior solvers on whole training sets: kernel solvers against LSQR and alternating.

Each solver projects ``--vectors`` standard normals onto null(J) of the stacked logit
Jacobian (``--loss-projected``: of the per-example loss gradients) to the null-space
residual max ‖J𝒫ε‖/‖Jε‖ ≤ 1e-3, and reports seconds (set-up included), data passes
(one JVP and one VJP over every fitted example) and the residual measured afresh with
the Jacobian.

* ``digits``: all 1,294 training images, MLP 64-512-512-10 trained for 30 epochs
  (12,940 rows): the dense-kernel solver (``gram``), Nyström-preconditioned CG
  (``nystrom``), LSQR (``krylov``) and alternating projections (batches of 16).
* ``fashion``: the first ``--fashion-n`` (default 10,000) fashion-mnist training images,
  MLP 784-512-512-10 trained for one epoch: ``nystrom`` (the kernel matrix does not fit
  the memory budget) against LSQR.
* ``--full``: ``nystrom`` on all 55,000 fashion-mnist training images (target ≤ 30 min).

LSQR and alternating are capped at ``--cap-seconds`` each (their per-pass time is
measured first and the iteration cap set from it), so a target they do not reach is
reported with its passes and seconds as lower bounds and the speed-up as a bound.
Target: the new solver takes at least 10× fewer seconds than LSQR. Prints one JSON object.

    .venv/bin/python benchmarks/projected_scale.py [--parts digits,fashion] [--full]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch.utils.data import TensorDataset

from tacitbayes.data import BatchLoader, load_dataset
from tacitbayes.models import build_model
from tacitbayes.posteriors.projected import ProjectedPosterior
from tacitbayes.training import TrainConfig, train_map

TOL = 1e-3


def _run(model, loader, vectors: int, loss_projected: bool, **options) -> dict:
    """Fit and project; seconds include the set-up (kernel matrix, preconditioner)."""
    start = time.perf_counter()
    post = ProjectedPosterior(
        model, "classification", loss_projected=loss_projected, tol=TOL, **options
    )
    post.fit(loader)
    setup = time.perf_counter() - start
    post.projected_noise(vectors)
    seconds = time.perf_counter() - start
    info = post.infos[0]
    return {
        "solver": post.solver_used,
        "seconds": seconds,
        "setup_seconds": setup,
        "iterations": info.iterations,
        "data_passes": info.data_passes,
        "residual": info.max_residual,
        "reached": info.max_residual <= TOL,
    }


def _capped(model, loader, vectors, loss_projected, solver, cap_seconds, **options) -> dict:
    """A reference solver with its iteration cap set from a measured short run."""
    probe_iters = 3
    key = "n_sweeps" if solver == "alternating" else "max_iters"
    probe = _run(
        model, loader, vectors, loss_projected, solver=solver, **{key: probe_iters}, **options
    )
    per_iteration = max(probe["seconds"] - probe["setup_seconds"], 1e-9) / max(
        probe["iterations"], 1
    )
    if solver == "alternating":
        per_iteration *= 1.0  # one sweep; residual checks every 10 sweeps are extra
    cap = max(probe_iters, int(cap_seconds / per_iteration))
    row = _run(model, loader, vectors, loss_projected, solver=solver, **{key: cap}, **options)
    row["iteration_cap"] = cap
    return row


def _speedup(new: dict, reference: dict) -> dict:
    ratio = reference["seconds"] / new["seconds"]
    if reference["reached"]:
        return {"seconds_ratio": ratio}
    return {"seconds_ratio_lower_bound": ratio, "reference_residual_at_cap": reference["residual"]}


def _digits(args) -> dict:
    torch.manual_seed(0)
    data = load_dataset("digits")
    model = build_model("mlp", data.input_shape, data.n_classes)
    train_map(model, data.train, TrainConfig(epochs=30, progress=False))
    model.eval()
    loader = BatchLoader(data.train, 256)
    out: dict = {"n_fit": len(data.train), "n_params": sum(p.numel() for p in model.parameters())}
    solvers = args.solvers.split(",")
    for solver in ("gram", "nystrom"):
        if solver in solvers:
            out[solver] = _run(
                model, loader, args.vectors, args.loss_projected, solver=solver, max_iters=2000
            )
    for solver in ("krylov", "alternating"):
        if solver in solvers:
            out[solver] = _capped(
                model, loader, args.vectors, args.loss_projected, solver, args.cap_seconds
            )
    for new in ("gram", "nystrom"):
        if new in out and "krylov" in out:
            out[f"{new}_vs_krylov"] = _speedup(out[new], out["krylov"])
    return out


def _fashion_model():
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist", ood=False)
    model = build_model("mlp", data.input_shape, data.n_classes)
    train_map(model, data.train, TrainConfig(epochs=1, progress=False))
    model.eval()
    return data, model


def _fashion(args, data, model) -> dict:
    x, y = data.train.tensors
    loader = BatchLoader(TensorDataset(x[: args.fashion_n], y[: args.fashion_n]), 256)
    out: dict = {"n_fit": args.fashion_n, "n_params": sum(p.numel() for p in model.parameters())}
    out["nystrom"] = _run(
        model, loader, args.vectors, args.loss_projected, solver="nystrom", max_iters=2000
    )
    out["krylov"] = _capped(
        model, loader, args.vectors, args.loss_projected, "krylov", args.cap_seconds
    )
    out["nystrom_vs_krylov"] = _speedup(out["nystrom"], out["krylov"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="digits,fashion")
    parser.add_argument("--full", action="store_true", help="also all 55,000 fashion images")
    parser.add_argument(
        "--full-max-iters", type=int, default=2000, help="CG cap for --full (a small cap probes)"
    )
    parser.add_argument("--vectors", type=int, default=10)
    parser.add_argument("--fashion-n", type=int, default=10_000)
    parser.add_argument("--cap-seconds", type=float, default=600.0)
    parser.add_argument("--loss-projected", action="store_true")
    parser.add_argument("--solvers", default="gram,nystrom,krylov,alternating", help="digits part")
    args = parser.parse_args()
    parts = set(args.parts.split(",")) if args.parts else set()
    out: dict = {
        "tol": TOL,
        "vectors": args.vectors,
        "loss_projected": args.loss_projected,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if "digits" in parts:
        out["digits"] = _digits(args)
    if "fashion" in parts or args.full:
        data, model = _fashion_model()
        if "fashion" in parts:
            out["fashion"] = _fashion(args, data, model)
        if args.full:
            loader = BatchLoader(data.train, 256)
            row = _run(
                model, loader, args.vectors, args.loss_projected, max_iters=args.full_max_iters
            )
            row["n_fit"] = len(data.train)
            row["seconds_per_iteration"] = (row["seconds"] - row["setup_seconds"]) / max(
                row["iterations"], 1
            )
            row["target_seconds"] = 1800
            out["fashion_full"] = row
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
