"""Memory and cost of the curvature fits: peak memory on a 25M-parameter model, diag GGN vs KFAC.

1. Peak process memory (resident set) of ``Laplace(structure="kron")``, ``"diag"`` and
   ``ProjectedPosterior`` fits on a 25.8M-parameter MLP (784-3400-3400-3400-10, float32,
   512 fashion-mnist-sized random images in batches of 128), each fit in a fresh
   process. Reported against its allowance: the model (in the baseline), the state the
   fit keeps (curvature factors and θ*), the working budget of :mod:`tacitbayes.budget`,
   and 10% slack; for the projected posterior, ``memory_budget`` (which bounds its kernel
   matrices and Jacobian factors) and 10% slack.
2. Time of the exact GGN diagonal (``ggn_diagonal``: layer formulas, one batched backward
   per batch) against the KFAC fit on the fashion-mnist MLP (784-512-512-10) over all
   55,000 training images (target: ≤ 2×), interleaved repeats, medians.

    .venv/bin/python benchmarks/memory.py [--repeats 3] [--skip-time] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from _timing import interleaved

import tacitbayes as tb
from tacitbayes.budget import WORKING_BYTES
from tacitbayes.models import build_model
from tacitbayes.posteriors.solvers import DEFAULT_MEMORY_BUDGET

WIDE = {"width": 3400, "depth": 3}
N_WIDE, BATCH_WIDE = 512, 128


def _rss_bytes() -> int:
    """Current resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(kind: str) -> dict:
    """One fit in this (fresh) process; memory figures relative to model + data."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = build_model("mlp", (1, 28, 28), 10, **WIDE)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_WIDE, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (N_WIDE,), generator=gen)
    batches = [(x[i : i + BATCH_WIDE], y[i : i + BATCH_WIDE]) for i in range(0, N_WIDE, BATCH_WIDE)]
    model(x[:2])  # warm the allocator and kernels
    base = _rss_bytes()
    start = time.perf_counter()
    n_params = sum(p.numel() for p in model.parameters())
    if kind == "projected":
        post = tb.ProjectedPosterior(model, "classification").fit(batches)
        state = post._gram.factor.numel() * 8 * 2 if post._gram is not None else 0
        state += sum(f.nbytes() for f in post._factors or [])
        # memory_budget bounds the kernel, its factor and the Jacobian factors (the state)
        budget, allowance = DEFAULT_MEMORY_BUDGET, 1.1 * DEFAULT_MEMORY_BUDGET
    else:
        la = tb.Laplace(model, "classification", structure=kind).fit(batches)
        curv = la.curvature
        if kind == "kron":
            state = sum(A.numel() + G.numel() for A, G in curv.kfac.factors.values()) * 4
        else:
            state = curv.diagonal.numel() * 4
        state += n_params * 4  # the posterior mean θ*, kept to check the model is unchanged
        budget = WORKING_BYTES
        allowance = 1.1 * (state + budget)
    seconds = time.perf_counter() - start
    peak = _peak_bytes()
    extra = max(0, peak - base)
    return {
        "fit": kind,
        "n_params": n_params,
        "model_bytes": n_params * 4,
        "baseline_rss_bytes": base,
        "peak_rss_bytes": peak,
        "peak_over_baseline_bytes": extra,
        "state_bytes": state,
        "working_budget_bytes": budget,
        "allowance_bytes": int(allowance),
        "within_allowance": extra <= allowance,
        "peak_over_state": round(extra / max(state, 1), 3),
        "seconds": round(seconds, 2),
    }


def _memory_part() -> list[dict]:
    rows = []
    for kind in ("kron", "diag", "projected"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def _time_part(repeats: int) -> dict:
    from tacitbayes.data import load_dataset

    torch.manual_seed(0)
    bundle = load_dataset("fashion-mnist", val_size=5000)
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=512)
    model = build_model("mlp", (1, 28, 28), 10)
    n = len(bundle.train)
    fns = {
        "kfac": lambda: tb.curvature.KFAC(model, "cross_entropy", loader, reduction="sum"),
        "diag": lambda: tb.curvature.ggn_diagonal(model, "cross_entropy", loader, reduction="sum"),
    }
    med = interleaved(fns, repeats)
    return {
        "model": "mlp 784-512-512-10",
        "n_images": n,
        "kfac_seconds": round(med["kfac"], 2),
        "diag_seconds": round(med["diag"], 2),
        "diag_over_kfac": round(med["diag"] / med["kfac"], 3),
        "target_diag_over_kfac": 2.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", choices=["kron", "diag", "projected"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child)))
        return
    result: dict = {"benchmark": "memory"}
    if not args.skip_memory:
        result["peak_memory"] = _memory_part()
    if not args.skip_time:
        result["diag_vs_kfac"] = _time_part(args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
