"""Projected-posterior solvers on whole training sets: seconds, passes, residual, training NLL, GFLOP/s.

For each part and solver this fits ``ProjectedPosterior`` (GGN rows by default,
``--rows logits`` for the logit Jacobian) on every image of the part, projects
``--samples`` standard normals (one block) and reports:

* ``seconds`` (set-up included), ``setup_seconds``, ``iterations``, ``data_passes``;
* ``residual_max`` / ``residual_mean``: ‖J𝒫ε‖/‖Jε‖ measured afresh with the Jacobian;
* ``prior_precision``: the evidence α the compare method uses;
* ``train_nll_change``: the training NLL of the linearised predictive (the samples'
  mean probabilities) minus MAP's, and ``train_map_distance``: the mean total-variation
  distance to MAP's training predictions (the guarantee: both near 0);
* ``product``: the achieved GFLOP/s of one kernel product K W = J(JᵀW) on the fitted
  Jacobian (4·N·P·k flops for k = ``--samples`` columns; the held per-layer factors when
  they fit ``memory_budget``) against the same run's 4096² float32 matmul
  (``product.fraction_of_matmul``; target ≥ 0.5).

Parts: ``digits`` (all 1,294 training images, MLP 64-512-512-10, 30 epochs),
``fashion10k`` (the first 10,000 fashion-mnist training images) and ``fashion55k`` (all
55,000), both with the MLP 784-512-512-10 trained for 10 epochs on all of them. The
iterative solvers stop at ``--max-iters`` steps; the compare target is a fit of at most
30 minutes on all of fashion-mnist. Prints one JSON object.

    .venv/bin/python benchmarks/projected_scale.py [--parts digits,fashion10k,fashion55k]
        [--solvers gram,block,nystrom,krylov] [--samples 32] [--max-iters 40]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from _timing import matmul_gflops
from torch.utils.data import TensorDataset

from tacitbayes import metrics
from tacitbayes.data import BatchLoader, load_dataset
from tacitbayes.errors import InputError
from tacitbayes.models import build_model
from tacitbayes.posteriors.projected import ProjectedPosterior
from tacitbayes.training import TrainConfig, train_map

TOL = 1e-3
PARTS = {"digits": ("digits", None, 30), "fashion10k": ("fashion-mnist", 10_000, 10)}
PARTS["fashion55k"] = ("fashion-mnist", None, 10)


def _probs(predict, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([predict(x[i : i + 2000]).double() for i in range(0, len(x), 2000)])


def _product(post: ProjectedPosterior, columns: int, peak: float) -> dict:
    jac = post._fitted()
    W = torch.randn(jac.shape[0], columns, dtype=jac.dtype)
    start = time.perf_counter()
    jac.local_matmat(jac.local_rmatmat(W))
    seconds = time.perf_counter() - start
    gflops = 4 * jac.n_data * jac.shape[1] * columns / seconds / 1e9
    return {
        "seconds": seconds,
        "columns": columns,
        "factors": jac.factors is not None,
        "gflops": gflops,
        "matmul_gflops": peak,
        "fraction_of_matmul": gflops / peak,
    }


def _run(model, x, y, solver: str, args, peak: float) -> dict:
    loader = BatchLoader(TensorDataset(x, y), 256)
    start = time.perf_counter()
    post = ProjectedPosterior(
        model, rows=args.rows, solver=solver, tol=TOL, max_iters=args.max_iters
    ).fit(loader)
    setup = time.perf_counter() - start
    post.projected_noise(args.samples)
    seconds = time.perf_counter() - start
    alpha = post.optimize_prior_precision("marglik", n_samples=args.samples)
    info = post.infos[0]
    with torch.no_grad():
        p_map = _probs(lambda t: torch.softmax(model(t), -1), x)
    p_post = _probs(lambda t: post.predict(t, n_samples=args.samples), x)
    return {
        "solver": post.solver_used,
        "seconds": seconds,
        "setup_seconds": setup,
        "iterations": info.iterations,
        "data_passes": info.data_passes,
        "residual_max": info.max_residual,
        "residual_mean": sum(info.residuals) / len(info.residuals),
        "reached_tol": info.max_residual <= TOL,
        "prior_precision": alpha,
        "train_nll_map": metrics.nll(p_map, y),
        "train_nll_change": metrics.nll(p_post, y) - metrics.nll(p_map, y),
        "train_map_distance": metrics.total_variation(p_post, p_map),
        "product": _product(post, args.samples, peak),
    }


def _part(name: str, args, peak: float) -> dict:
    dataset, n, epochs = PARTS[name]
    torch.manual_seed(0)
    data = load_dataset(dataset, ood=False)
    model = build_model("mlp", data.input_shape, data.n_classes)
    train_map(model, data.train, TrainConfig(epochs=epochs, progress=False))
    model.eval()
    x, y = data.train.tensors
    x, y = (x, y) if n is None else (x[:n], y[:n])
    out: dict = {"n_fit": len(x), "n_params": sum(p.numel() for p in model.parameters())}
    for solver in args.solvers.split(","):
        try:
            out[solver] = _run(model, x, y, solver, args, peak)
        except InputError as exc:  # over the memory budget: say so, run the others
            out[solver] = {"refused": str(exc)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="digits,fashion10k")
    parser.add_argument("--solvers", default="gram,block,nystrom,krylov")
    parser.add_argument("--rows", default="ggn", choices=("ggn", "logits"))
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--max-iters", type=int, default=40)
    args = parser.parse_args()
    peak = matmul_gflops()
    out: dict = {
        "tol": TOL,
        "rows": args.rows,
        "samples": args.samples,
        "max_iters": args.max_iters,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "matmul_gflops": peak,
    }
    for name in args.parts.split(","):
        if name not in PARTS:
            parser.error(f"unknown part {name!r}; available: {', '.join(PARTS)}")
        out[name] = _part(name, args, peak)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
