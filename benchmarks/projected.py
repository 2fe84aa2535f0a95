"""Projected-posterior benchmark: Krylov (LSQR) against alternating projections, and scaling in P.

Part 1, solvers. On the fashion-mnist MLP (784-512-512-10, one epoch of training),
project 10 standard-normal vectors onto null(J) of the stacked logit Jacobian of
``--n-fit`` training images, with both solvers, and count the data passes (one JVP and
one VJP over every fitted example) until the null-space residual max_s ‖J𝒫ε_s‖/‖Jε_s‖
reaches each level of ``--levels`` (target: Krylov needs at most 1/5 of alternating's
passes at 1e-3). Krylov runs once to the tightest level and each level's passes are
read from LSQR's per-iteration residual (its recurrence; the final residual is also
measured afresh with the Jacobian). Alternating runs once per projection batch size in
``--alt-batch-sizes`` for up to ``--max-sweeps`` sweeps (default: 5× Krylov's passes at
the tightest level, so a level it does not reach is a *measured* bound on the ratio),
its residual checked every 10 sweeps (the check passes are not counted against it). A
level that alternating does not reach within the cap is reported as unreached, with
the residual at the cap, the ratio bound (Krylov passes / cap), and a power-law
extrapolation r ≈ c·sweeps^(−p) fitted to the last half of its trajectory (labelled as
an extrapolation).

Part 2, scaling. Fit + projection time of the Krylov solver for a fixed number of LSQR
iterations (``--scaling-iters``, so every size does the same passes) on the same images,
at four MLP widths spanning ~0.1M to ~5M parameters; the log-log slope of time against P
(target: at most 1.15).

Prints one JSON object.

    .venv/bin/python benchmarks/projected.py [--n-fit 256] [--max-sweeps N] [--skip-scaling]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np
import torch
from torch.utils.data import TensorDataset

from tacitbayes.data import load_dataset, minibatches
from tacitbayes.models import build_model
from tacitbayes.posteriors.projected import ProjectedPosterior
from tacitbayes.training import TrainConfig, train_map

N_VECTORS = 10
SCALING_WIDTHS = (128, 384, 1024, 1800)
CHECK_EVERY = 10  # ProjectedPosterior checks alternating's residual every 10 sweeps


def _posterior(model, x, y, **kw) -> ProjectedPosterior:
    post = ProjectedPosterior(model, "classification", seed=0, **kw)
    return post.fit(list(minibatches(TensorDataset(x, y), 256)))


def _krylov_levels(model, x, y, levels: list[float], max_iters: int) -> dict:
    """One LSQR run to the tightest level; each level's passes read from its residual history."""
    post = _posterior(model, x, y, solver="krylov", tol=min(levels), max_iters=max_iters)
    start = time.perf_counter()
    post.projected_noise(N_VECTORS)
    seconds = time.perf_counter() - start
    info = post.infos[0]
    hist = np.asarray(info.history)
    rows = []
    for level in levels:
        hit = np.nonzero(hist <= level)[0]
        row = {"level": level, "reached": bool(len(hit))}
        if len(hit):
            row["passes"] = float(hit[0] + 2)  # iteration i (1-based) has used i + 1 passes
        else:
            row["passes_lower_bound"] = float(info.data_passes)
        rows.append(row)
    return {
        "levels": rows,
        "passes": info.data_passes,
        "seconds": seconds,
        "seconds_per_pass": seconds / max(info.data_passes, 1),
        "final_residual_recurrence": float(hist[-1]),
        "final_residual_measured": info.max_residual,
    }


def _extrapolate(sweeps: np.ndarray, residuals: np.ndarray, level: float) -> float | None:
    """Sweeps at which r ≈ c·sweeps^(−p), fitted to the last half of the trajectory, hits level."""
    half = len(sweeps) // 2
    if len(sweeps) - half < 2:
        return None
    slope, intercept = np.polyfit(np.log(sweeps[half:]), np.log(residuals[half:]), 1)
    if slope >= 0:
        return None
    return float(math.exp((math.log(level) - intercept) / slope))


def _alternating(model, x, y, levels, batch_size: int, max_sweeps: int) -> dict:
    post = _posterior(
        model,
        x,
        y,
        solver="alternating",
        tol=min(levels),
        n_sweeps=max_sweeps,
        projection_batch_size=batch_size,
    )
    start = time.perf_counter()
    post.projected_noise(N_VECTORS)
    info = post.infos[0]
    seconds = time.perf_counter() - start
    sweeps = np.arange(1, len(info.history) + 1) * CHECK_EVERY
    sweeps[-1] = info.iterations
    hist = np.asarray(info.history)
    per_level = []
    for level in levels:
        hit = np.nonzero(hist <= level)[0]
        row = {"level": level, "reached": bool(len(hit))}
        if len(hit):
            row["passes"] = float(sweeps[hit[0]])
        else:
            row["passes_lower_bound"] = float(info.iterations)
            row["residual_at_cap"] = float(hist[-1])
            row["extrapolated_passes"] = _extrapolate(sweeps, hist, level)
        per_level.append(row)
    return {
        "projection_batch_size": batch_size,
        "sweeps": info.iterations,
        "seconds": seconds,
        "seconds_per_sweep": seconds / max(info.iterations, 1),
        "levels": per_level,
        "history": [(int(s), float(r)) for s, r in zip(sweeps, hist, strict=True)],
    }


def _ratios(krylov: dict, alternating: list[dict]) -> list[dict]:
    """Krylov passes / alternating passes per level, for the best alternating batch size."""
    out = []
    for i, k in enumerate(krylov["levels"]):
        entry = {"level": k["level"], "krylov_passes": k.get("passes")}
        if not k["reached"]:
            entry["krylov_reached"] = False
            out.append(entry)
            continue
        rows = [a["levels"][i] for a in alternating]
        reached = [r["passes"] for r in rows if r["reached"]]
        if reached:
            entry["alternating_passes"] = min(reached)
            entry["ratio"] = k["passes"] / min(reached)
        else:
            cap = max(r["passes_lower_bound"] for r in rows)
            extra = [r["extrapolated_passes"] for r in rows if r.get("extrapolated_passes")]
            entry["alternating_reached"] = False
            entry["alternating_passes_lower_bound"] = cap
            entry["ratio_upper_bound"] = k["passes"] / cap
            if extra:
                entry["alternating_extrapolated_passes"] = min(extra)
                entry["ratio_extrapolated"] = k["passes"] / min(extra)
        out.append(entry)
    return out


def _scaling(x, y, n_classes: int, iters: int) -> dict:
    rows = []
    warm = build_model("mlp", input_shape=tuple(x.shape[1:]), n_classes=n_classes, width=64)
    _posterior(warm, x, y, solver="krylov", tol=1e-12, max_iters=2).projected_noise(N_VECTORS)
    for width in SCALING_WIDTHS:
        torch.manual_seed(0)
        model = build_model("mlp", input_shape=tuple(x.shape[1:]), n_classes=n_classes, width=width)
        start = time.perf_counter()
        post = _posterior(model, x, y, solver="krylov", tol=1e-12, max_iters=iters)
        post.projected_noise(N_VECTORS)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "width": width,
                "n_params": post.n_params,
                "seconds": seconds,
                "passes": post.infos[0].data_passes,
            }
        )
    logp = np.log([r["n_params"] for r in rows])
    logt = np.log([r["seconds"] for r in rows])
    slope = float(np.polyfit(logp, logt, 1)[0])
    return {"lsqr_iterations": iters, "sizes": rows, "loglog_slope": slope, "target_slope": 1.15}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-fit", type=int, default=256)
    parser.add_argument("--levels", default="0.1,0.03,0.01,0.001")
    parser.add_argument("--max-iters", type=int, default=2000, help="Krylov iteration cap")
    parser.add_argument(
        "--max-sweeps",
        type=int,
        default=None,
        help="alternating cap (default: 5x Krylov's passes at the tightest level, so an "
        "unreached level is a measured ratio bound against the 1/5 target)",
    )
    parser.add_argument("--alt-batch-sizes", default="64")
    parser.add_argument("--scaling-iters", type=int, default=20)
    parser.add_argument("--skip-solvers", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()
    levels = sorted((float(v) for v in args.levels.split(",")), reverse=True)

    torch.manual_seed(0)
    data = load_dataset("fashion-mnist", ood=False)
    x, y = data.train.tensors
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[: args.n_fit]
    xf, yf = x[keep], y[keep]
    out: dict = {
        "dataset": "fashion-mnist",
        "n_fit": args.n_fit,
        "n_vectors": N_VECTORS,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if not args.skip_solvers:
        model = build_model("mlp", input_shape=data.input_shape, n_classes=10)
        train_map(model, data.train, TrainConfig(epochs=1, progress=False))
        krylov = _krylov_levels(model, xf, yf, levels, args.max_iters)
        max_sweeps = args.max_sweeps
        if max_sweeps is None:
            max_sweeps = CHECK_EVERY * (math.ceil(5 * krylov["passes"] / CHECK_EVERY) + 1)
        alternating = [
            _alternating(model, xf, yf, levels, int(b), max_sweeps)
            for b in args.alt_batch_sizes.split(",")
        ]
        out["solvers"] = {
            "model": "mlp 784-512-512-10",
            "n_params": sum(p.numel() for p in model.parameters()),
            "krylov": krylov,
            "alternating": alternating,
            "krylov_over_alternating_passes": _ratios(krylov, alternating),
            "target_ratio_at_1e-3": 0.2,
        }
    if not args.skip_scaling:
        out["scaling"] = _scaling(xf, yf, 10, args.scaling_iters)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
