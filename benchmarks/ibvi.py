"""IBVI benchmark: time and memory against the plain network, and a μP/SP width sweep.

1. Time. Fashion-MNIST MLP 784-512-512-10, batch 128, real images: the time of
   ``--steps`` training steps of IBVI (one weight sample per step) divided by the time
   of the same steps of the deterministic network, both with fused SGD (momentum 0.9),
   in one process, interleaved over ``--repeats`` rounds; medians. The headline
   (target: at most 1.3) is low rank on two layers: the last two layers at rank 2, the
   two-layer setting with the lowest validation NLL (``compare``'s IBVI uses the last
   layer at rank 8, also reported; see ``experiments/compare/method_ibvi.py``). An epoch is 422 such steps, so the ratio of
   step times is the ratio of epoch times. Also reported for other variational layers
   / ranks and for LeNet, to show where the cost comes from: the update of a rank-R
   factor reads and writes R copies of its layer.
2. Memory. Each configuration trains in its own subprocess; peak resident memory is
   ``VmHWM`` of ``/proc/self/status`` after the steps (ru_maxrss would inherit
   the parent's peak across fork and exec). Reported: the peak of
   the whole process, and the peak above the process's resident memory just before the
   network was built (what training the network adds: weights, factors, gradients,
   optimizer state, activations); plus the exact bytes of parameters, gradients and
   optimizer state (target on the process peak: at most 1.2).
3. Width sweep. IBVI MLPs of widths 64..1024 on digits, trained for a few epochs with
   SGD (momentum 0.9) over a grid of learning rates under SP and under μP; the best
   learning rate per width (lowest final training loss, i.e. the expected loss). μP
   claims that the optimum transfers across widths, SP that it drifts.

Prints one JSON object. Default runtime about 10 minutes on one CPU thread;
``--quick`` takes about 2.

    .venv/bin/python benchmarks/ibvi.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch

from tacitbayes.data import load_dataset, minibatches
from tacitbayes.errors import TrainingDivergedError
from tacitbayes.models import build_model
from tacitbayes.variational import IBVIConfig, VariationalModel, train_ibvi

STEPS_PER_EPOCH = 422  # ceil(54,000 / 128) fashion-mnist training images per epoch
HEADLINE = {"two_layers": "mlp_last_two_r2", "compare": "mlp_last_r8"}
VARIANTS = {  # name: (model, variational layers or None for the default first+last, rank)
    "mlp_first_last_r8": ("mlp", None, 8),
    "mlp_last_two_r8": ("mlp", ["3", "5"], 8),
    "mlp_first_last_r2": ("mlp", None, 2),
    "mlp_last_two_r2": ("mlp", ["3", "5"], 2),
    "mlp_last_r8": ("mlp", ["5"], 8),
    "lenet_first_last_r8": ("lenet", None, 8),
}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    """VmHWM: this process's peak resident set (unlike ru_maxrss it is not inherited across exec)."""
    with open("/proc/self/status") as f:
        line = next(row for row in f if row.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # KiB


def _build(variant: str | None, model_name: str, shape: tuple) -> tuple:
    """(step function, bytes of params + grads + optimizer state after one step)."""
    torch.manual_seed(0)
    model = build_model(model_name, shape, 10)
    if variant is None:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True)

        def loss_fn(x, y):
            return torch.nn.functional.cross_entropy(model(x), y)

        params = list(model.parameters())
    else:
        _, layers, rank = VARIANTS[variant]
        vnet = VariationalModel(model, layers=layers, rank=rank, init=True)
        opt = vnet.optimizer(torch.optim.SGD, lr=0.01, momentum=0.9, fused=True)

        def loss_fn(x, y):
            return vnet.expected_loss(x, y)

        params = list(vnet.parameters())

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss_fn(x, y).backward()
        opt.step()

    def state_bytes() -> int:
        n = sum(p.numel() * p.element_size() * 2 for p in params)  # weights + gradients
        for s in opt.state.values():
            n += sum(t.numel() * t.element_size() for t in s.values() if torch.is_tensor(t))
        return n

    return step, state_bytes


def time_ratio(data, variants: list[str], steps: int, repeats: int) -> dict:
    """Median time of ``steps`` steps per configuration, interleaved; ratios to the plain network."""
    x_all, y_all = data.train.tensors
    batches = list(
        minibatches(data.train, 128, shuffle=True, generator=torch.Generator().manual_seed(0))
    )
    batches = batches[:steps]
    out = {}
    for model_name in sorted({VARIANTS[v][0] for v in variants}):
        runs = {"plain": _build(None, model_name, data.input_shape)[0]}
        runs |= {
            v: _build(v, model_name, data.input_shape)[0]
            for v in variants
            if VARIANTS[v][0] == model_name
        }
        for fn in runs.values():  # warm-up
            for x, y in batches[:5]:
                fn(x, y)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(repeats):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in order:
                start = time.perf_counter()
                for x, y in batches:
                    runs[name](x, y)
                times[name].append(time.perf_counter() - start)
        plain = statistics.median(times["plain"])
        out[f"{model_name}_plain_epoch_seconds"] = plain * STEPS_PER_EPOCH / len(batches)
        for name in runs:
            if name == "plain":
                continue
            med = statistics.median(times[name])
            per_round = [a / b for a, b in zip(times[name], times["plain"], strict=True)]
            out[name] = {
                "epoch_seconds": med * STEPS_PER_EPOCH / len(batches),
                "epoch_time_ratio": med / plain,
                "epoch_time_ratio_per_round_median": statistics.median(per_round),
            }
    return out


def _memory_child(variant: str, model_name: str, steps: int) -> None:
    shape = (1, 28, 28) if model_name in ("mlp", "lenet") else None
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(4, 128, *shape, generator=gen)
    ys = torch.randint(0, 10, (4, 128), generator=gen)
    # one-time imports and library set-up (torch.optim, torch.func) before the baseline
    tiny = VariationalModel(torch.nn.Linear(2, 2), rank=1, init=True)
    opt = tiny.optimizer(torch.optim.SGD, lr=0.1, momentum=0.9, fused=True)
    tiny.expected_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)).backward()
    opt.step()
    before = _rss_mib()
    step, state_bytes = _build(None if variant == "plain" else variant, model_name, shape)
    for i in range(steps):
        step(xs[i % 4], ys[i % 4])
    print(
        json.dumps(
            {"rss_before_mib": before, "peak_mib": _peak_mib(), "state_mib": state_bytes() / 2**20}
        )
    )


def memory_ratio(variants: list[str], steps: int, threads: int) -> dict:
    """Peak RSS of each configuration in its own subprocess, against the plain network."""
    out = {}
    for model_name in sorted({VARIANTS[v][0] for v in variants}):
        names = ["plain"] + [v for v in variants if VARIANTS[v][0] == model_name]
        rows = {}
        for name in names:
            cmd = [
                sys.executable,
                __file__,
                "--_memory-child",
                name,
                model_name,
                str(steps),
                "--threads",
                str(threads),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["added_mib"] = row["peak_mib"] - row["rss_before_mib"]
            rows[name] = row
        plain = rows.pop("plain")
        out[f"{model_name}_plain"] = plain
        for name, row in rows.items():
            out[name] = {
                **row,
                "peak_ratio_process": row["peak_mib"] / plain["peak_mib"],
                "peak_ratio_added": row["added_mib"] / plain["added_mib"],
                "state_ratio": row["state_mib"] / plain["state_mib"],
            }
    return out


def width_sweep(
    widths: list[int], lrs: list[float], epochs: int, parametrizations: list[str]
) -> dict:
    """Best learning rate (lowest final training expected loss) per width and parametrization."""
    data = load_dataset("digits", ood=False)
    out: dict = {"widths": widths, "lrs": lrs, "epochs": epochs, "dataset": "digits"}
    for par in parametrizations:
        table = {}
        for width in widths:
            losses = []
            for lr in lrs:
                torch.manual_seed(0)
                net = build_model("mlp", data.input_shape, data.n_classes, width=width)
                vnet = VariationalModel(net, rank=8, parametrization=par, init=True)
                config = IBVIConfig(epochs=epochs, batch_size=128, lr=lr, progress=False)
                try:
                    loss = train_ibvi(vnet, data.train, config).history[-1]["train_loss"]
                except TrainingDivergedError:
                    loss = math.inf
                losses.append(loss if math.isfinite(loss) else None)
            finite = [(v, lr) for v, lr in zip(losses, lrs, strict=True) if v is not None]
            best = min(finite)[1] if finite else None
            table[str(width)] = {"train_loss": losses, "best_lr": best}
        bests = [math.log2(t["best_lr"]) for t in table.values() if t["best_lr"]]
        out[par] = {
            "per_width": table,
            "best_lr_by_width": {w: t["best_lr"] for w, t in table.items()},
            "log2_best_lr_spread": max(bests) - min(bests) if bests else None,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, repeats and widths")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", default="", help="comma list of: time, memory, sweep")
    parser.add_argument("--_memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args._memory_child:
        variant, model_name, steps = args._memory_child
        _memory_child(variant, model_name, int(steps))
        return
    skip = set(filter(None, args.skip.split(",")))
    quick = args.quick
    variants = list(HEADLINE.values()) + ["lenet_first_last_r8"] if quick else list(VARIANTS)
    result: dict = {"threads": args.threads, "torch": torch.__version__, "quick": quick}
    start = time.perf_counter()
    if "memory" not in skip:
        result["memory"] = memory_ratio(variants, steps=20, threads=args.threads)
        result["memory"]["how"] = (
            "VmHWM (peak RSS) of one subprocess per configuration (synthetic batches of 128)"
        )
    if "time" not in skip:
        data = load_dataset("fashion-mnist", ood=False)
        result["time"] = time_ratio(
            data, variants, steps=100 if quick else 200, repeats=3 if quick else 5
        )
        result["time"]["steps"] = 100 if quick else 200
    if "sweep" not in skip:
        widths = [64, 256, 1024] if quick else [64, 128, 256, 512, 1024]
        lrs = [2.0**k for k in range(-10, 2, 2 if quick else 1)]
        result["width_sweep"] = width_sweep(
            widths, lrs, epochs=3 if quick else 5, parametrizations=["sp", "mup"]
        )
    summary: dict = {"epoch_time_target": 1.3, "peak_memory_target": 1.2}
    for label, variant in HEADLINE.items():
        timing = result.get("time", {}).get(variant, {})
        memory = result.get("memory", {}).get(variant, {})
        summary[label] = {
            "variant": variant,
            "epoch_time_ratio": timing.get("epoch_time_ratio"),
            "peak_memory_ratio_process": memory.get("peak_ratio_process"),
            "peak_memory_ratio_added": memory.get("peak_ratio_added"),
        }
    sweep = result.get("width_sweep", {})
    for par in ("sp", "mup"):
        summary[f"{par}_log2_best_lr_spread"] = sweep.get(par, {}).get("log2_best_lr_spread")
    result["summary"] = summary
    result["seconds"] = time.perf_counter() - start
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
