"""IVON benchmark: the cost of an IVON training epoch relative to an SGD epoch.

On the fashion-mnist MLP (784-512-512-10, ReLU) with real images and batch 128:
``--steps`` training steps (one MC sample per step, the ivon-opt protocol) timed as one
"epoch", against the same number of SGD-with-momentum steps on the same batches.  Runs
are interleaved (IVON, SGD, IVON, SGD, ...) after a warm-up of each, and the medians over
``--repeats`` are reported, of wall-clock time ("ratio") and of process CPU time
("ratio_cpu_time", steadier on a shared machine).  Target: ratio ≤ 1.3.  Prints one JSON
object.

With ``--peer`` the GPL package ivon-opt (``make bench-peers`` installs it into the
project's environment, for measurement only; nothing of it is part of tacitbayes) runs
the same steps with the same hyper-parameters in the same interleaved rounds, and
"ratio_to_ivon_opt" is tacitbayes' IVON time over ivon-opt's.

With ``--breakdown`` a diagnostic third run (not the method) times IVON with its noise
drawn once and reused every step: "ratio_without_draw" is what IVON would cost if
drawing ε were free, so ratio − ratio_without_draw is the draw's share of the step.

    .venv/bin/python benchmarks/ivon.py [--steps 300] [--repeats 7] [--threads N] [--peer]
        [--breakdown]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tacitbayes.data import load_dataset
from tacitbayes.models import build_model
from tacitbayes.optim import IVON


def _batches(data, steps: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = data.train.tensors
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=gen)
    out = []
    for i in range(steps):
        idx = order[(i * batch_size) % len(y) :][:batch_size]
        out.append((x[idx], y[idx]))
    return out


def _sgd_epoch(model, opt, batches) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return time.perf_counter() - start, time.process_time() - cpu


def _ivon_epoch(model, opt, batches) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    for x, y in batches:
        with opt.sampled_params(train=True):
            F.cross_entropy(model(x), y).backward()
        opt.step()
    return time.perf_counter() - start, time.process_time() - cpu


# the fashion-mnist settings of the compare method, given to both implementations
SETTINGS = dict(lr=1.0, hess_init=0.1, beta2=0.99995, weight_decay=5e-4, clip_radius=1e-2)


def _ours(model: torch.nn.Module, n_train: int) -> IVON:
    """tacitbayes' IVON with the shared settings."""
    return IVON(model.parameters(), ess=n_train, rescale_lr=True, seed=0, fused=True, **SETTINGS)


def _without_draw(opt: IVON) -> IVON:
    """``opt`` with ε drawn once and reused every step (a diagnostic, not the method)."""
    opt._noise = None  # no drawing ahead: every ε comes from the frozen buffers below
    frozen: dict[torch.Tensor, torch.Tensor] = {}

    def standard_normal(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if p not in frozen:
            frozen[p] = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        opt._work.setdefault(p, {})["eps"] = frozen[p]  # where the update reads ε
        return frozen[p]

    opt._standard_normal = standard_normal  # type: ignore[method-assign]
    return opt


def _import_ivon_opt():  # noqa: ANN202
    """The package ``ivon`` of the distribution ivon-opt (GPL; measured, never shipped).

    This script is itself named ``ivon.py`` and its folder is first on ``sys.path``, so a
    plain ``import ivon`` would import this script (and with it tacitbayes' IVON): the
    folder is left out while importing, and the module must be ivon-opt's own file.
    """
    try:
        dist = importlib.metadata.distribution("ivon-opt")
    except importlib.metadata.PackageNotFoundError as exc:
        raise SystemExit("--peer needs ivon-opt: run `make bench-peers`") from exc
    expected = Path(str(dist.locate_file("ivon/__init__.py"))).resolve()
    here = Path(__file__).resolve().parent
    saved_path, cached = list(sys.path), sys.modules.pop("ivon", None)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        module = importlib.import_module("ivon")
    finally:
        sys.path[:] = saved_path
        if cached is not None:  # this script, imported as `ivon` by someone else
            sys.modules["ivon"] = cached
    if Path(module.__file__ or "").resolve() != expected:
        raise SystemExit(f"--peer: `ivon` resolved to {module.__file__}, not ivon-opt's {expected}")
    return module


def _peer_optimizer(model, n_train: int):  # noqa: ANN001, ANN202
    """ivon-opt's IVON with the settings of ours (imported only when asked for)."""
    ivon = _import_ivon_opt()
    return ivon.IVON(model.parameters(), ess=n_train, rescale_lr=True, **SETTINGS)


def main() -> None:
    """Time interleaved IVON and SGD epochs and print the median ratio as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--peer", action="store_true", help="also time ivon-opt")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time IVON with its noise drawn once"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist", args.data_dir, ood=False)
    batches = _batches(data, args.steps, args.batch_size)
    torch.manual_seed(0)
    model_sgd = build_model("mlp", data.input_shape, data.n_classes)
    model_ivon = build_model("mlp", data.input_shape, data.n_classes)
    model_ivon.load_state_dict(model_sgd.state_dict())
    sgd = torch.optim.SGD(model_sgd.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    ivon = _ours(model_ivon, len(data.train))
    runs = {
        "ivon": lambda b: _ivon_epoch(model_ivon, ivon, b),
        "sgd": lambda b: _sgd_epoch(model_sgd, sgd, b),
    }
    if args.breakdown:
        model_free = build_model("mlp", data.input_shape, data.n_classes)
        model_free.load_state_dict(model_sgd.state_dict())
        free = _without_draw(_ours(model_free, len(data.train)))
        runs["ivon_without_draw"] = lambda b: _ivon_epoch(model_free, free, b)
    if args.peer:
        model_peer = build_model("mlp", data.input_shape, data.n_classes)
        model_peer.load_state_dict(model_sgd.state_dict())
        peer = _peer_optimizer(model_peer, len(data.train))
        runs["ivon_opt"] = lambda b: _ivon_epoch(model_peer, peer, b)
    for fn in runs.values():  # warm-up
        fn(batches[:20])
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            w, c = fn(batches)
            wall[name].append(w)
            cpu[name].append(c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    peer = {}
    if args.peer:
        peer = {
            "ivon_opt_version": importlib.metadata.version("ivon-opt"),
            "ivon_opt_epoch_seconds": med["ivon_opt"],
            "ivon_opt_ratio_to_sgd": med["ivon_opt"] / med["sgd"],
            "ratio_to_ivon_opt": med["ivon"] / med["ivon_opt"],
            "ratio_to_ivon_opt_cpu_time": med_cpu["ivon"] / med_cpu["ivon_opt"],
        }
    print(
        json.dumps(
            {
                "benchmark": "ivon_epoch_time_ratio",
                "model": "mlp 784-512-512-10 (relu), fashion-mnist",
                "batch_size": args.batch_size,
                "steps_per_epoch": args.steps,
                "repeats": args.repeats,
                "threads": torch.get_num_threads(),
                "ivon_epoch_seconds": med["ivon"],
                "sgd_epoch_seconds": med["sgd"],
                "ratio": med["ivon"] / med["sgd"],
                "ratio_cpu_time": med_cpu["ivon"] / med_cpu["sgd"],
                **(
                    {"ratio_without_draw": med["ivon_without_draw"] / med["sgd"]}
                    if args.breakdown
                    else {}
                ),
                "target": 1.3,
                **peer,
                "ivon_wall_all": wall["ivon"],
                "sgd_wall_all": wall["sgd"],
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
