"""Curvature benchmark: product costs relative to a gradient, Lanczos against power iteration.

On the fashion-mnist MLP (784-512-512-10) and LeNet, briefly trained, with real
images: the time of one GGN-vector product and one Hessian-vector product over a
batch of 256, each divided by the time of one gradient over the same batch
(targets: at most 3 and 4); and the time for Lanczos to reach the top Hessian
eigenvalue (over 512 examples) to 1e-3 relative accuracy divided by the time
plain power iteration needs to reach the same accuracy (target: at most 1/3).
Both stop by oracle as soon as their estimate is within 1e-3 of a tightly
converged reference (Lanczos: the matvec count read off its Ritz history, then
a timed run of exactly that length), for 5 random starts; medians reported.
``residual_rule`` repeats the comparison with the library's certified stopping rule
for both methods (relative Ritz residual ‖Av − λv‖ ≤ 1e-3·|λ|), as a user would run them. Timings are medians of
interleaved repeats in one run. Prints one JSON object.

``retained_graph`` (MLP only): the time of one Hessian-vector product on the fixed batch
of 256 by ``tb.curvature.Hessian`` (its default for a single batch, which keeps the
first-order graph, and with ``cache_graph=False``) divided by that of autograd's double
backward through a retained first-order graph, as PyHessian computes it: ``g =
autograd.grad(L, θ, create_graph=True)`` once, then ``autograd.grad(g, θ, grad_outputs=v,
retain_graph=True)`` per product (target: at most 1; ``pyhessian_vector`` also concatenates
that product into one (P,) vector, the form our operator returns); the one-off cost of the
first product (graph building included) for both; and the total time of Lanczos
(``top_eigenvalues``, tol 1e-3) against PyHessian's power iteration on its retained graph
(its stopping rule: relative change of the eigenvalue < 1e-3), both capped at 100 products
and started from a built graph, for 5 random starts (medians; errors against a tightly
converged reference).  ``--retained-only`` runs this part alone (under a minute on 2 idle
cores).

    .venv/bin/python benchmarks/curvature.py [--repeats 15] [--retained-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _timing import interleaved

import tacitbayes as tb
from tacitbayes.curvature import GGN, Hessian, power_iteration, top_eigenvalues
from tacitbayes.data import load_dataset
from tacitbayes.functional import eval_mode
from tacitbayes.models import build_model
from tacitbayes.training import TrainConfig, train_map


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()


def _power_to_accuracy(
    op, reference: float, rel: float, seed: int, max_iters: int = 5000
) -> tuple[int, float]:
    """Plain power iteration v ← Av/‖Av‖, stopped once |vᵀAv − λ*| ≤ rel·|λ*|."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(op.shape[0], generator=gen, dtype=op.dtype)
    v /= v.norm()
    for it in range(1, max_iters + 1):
        w = op @ v
        estimate = float(v @ w)
        if abs(estimate - reference) <= rel * abs(reference):
            return it, estimate
        v = w / w.norm()
    return max_iters, estimate


def _pyhessian_power(
    params: list[torch.Tensor], grads: tuple, seed: int, tol: float = 1e-3, max_iters: int = 100
) -> tuple[float, int]:
    """PyHessian's top eigenvalue: power iteration by double backward through the retained
    graph of ``grads``, stopped when |λ_i − λ_{i−1}| / (|λ_{i−1}| + 1e-6) < tol."""
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    norm = torch.sqrt(sum((t * t).sum() for t in v))
    v = [t / (norm + 1e-6) for t in v]
    eigenvalue = None
    for it in range(1, max_iters + 1):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        estimate = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((t * t).sum() for t in hv))
        v = [t / (norm + 1e-6) for t in hv]
        if eigenvalue is not None and abs(eigenvalue - estimate) / (abs(eigenvalue) + 1e-6) < tol:
            return estimate, it
        eigenvalue = estimate
    return eigenvalue, max_iters


def bench_retained_graph(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int
) -> dict:
    """Hessian-vector products and top eigenvalue: ours against PyHessian's retained graph."""
    params = [p for p in model.parameters() if p.requires_grad]
    ours = Hessian(model, "cross_entropy", (x, y))  # one batch: keeps the first-order graph
    plain = Hessian(model, "cross_entropy", (x, y), cache_graph=False)
    v = torch.randn(ours.shape[0], generator=torch.Generator().manual_seed(0))
    sizes = [p.numel() for p in params]
    v_list = [t.view_as(p) for t, p in zip(v.split(sizes), params, strict=True)]

    def first_grads() -> tuple:
        with eval_mode(model):  # PyHessian evaluates the model in eval mode
            loss = torch.nn.functional.cross_entropy(model(x), y)
        return torch.autograd.grad(loss, params, create_graph=True)

    grads = first_grads()

    def pyhessian() -> tuple:
        return torch.autograd.grad(grads, params, grad_outputs=v_list, retain_graph=True)

    def pyhessian_vector() -> torch.Tensor:  # the same product as one (P,) vector, as ours returns
        return torch.cat([t.reshape(-1) for t in pyhessian()])

    def pyhessian_first() -> tuple:
        g = first_grads()
        return torch.autograd.grad(g, params, grad_outputs=v_list, retain_graph=True)

    def ours_first() -> torch.Tensor:
        ours.clear_cache()
        return ours @ v

    reference_hv = pyhessian_vector()
    agreement = {
        name: float((out - reference_hv).norm() / reference_hv.norm())
        for name, out in (("cached", ours @ v), ("uncached", plain @ v))
    }
    for fn in (pyhessian, pyhessian_vector, lambda: ours @ v, lambda: plain @ v):
        fn()  # warm-up
    t = interleaved(
        {
            "pyhessian": pyhessian,
            "pyhessian_vector": pyhessian_vector,
            "ours_cached": lambda: ours @ v,
            "ours_uncached": lambda: plain @ v,
        },
        3 * repeats,
    )
    first = interleaved({"pyhessian": pyhessian_first, "ours": ours_first}, repeats)

    ours @ v  # the graph is built; Lanczos and power iteration below start from built graphs
    reference = float(top_eigenvalues(ours, k=1, tol=1e-10, max_iters=100, seed=100).eigenvalues[0])
    lanczos, power = [], []
    for seed in range(5):
        start = time.perf_counter()
        res = top_eigenvalues(ours, k=1, tol=1e-3, max_iters=100, seed=seed)
        elapsed = time.perf_counter() - start
        lanczos.append((elapsed, res.n_matvecs, abs(float(res.eigenvalues[0]) / reference - 1)))
        start = time.perf_counter()
        value, iters = _pyhessian_power(params, grads, seed)
        elapsed = time.perf_counter() - start
        power.append((elapsed, iters, abs(value / reference - 1)))
    lanczos_s = statistics.median(e for e, _, _ in lanczos)
    power_s = statistics.median(e for e, _, _ in power)
    return {
        "hvp": {
            "pyhessian_seconds": t["pyhessian"],
            "ours_cached_seconds": t["ours_cached"],
            "ours_uncached_seconds": t["ours_uncached"],
            "ours_cached_over_pyhessian": t["ours_cached"] / t["pyhessian"],
            "ours_uncached_over_pyhessian": t["ours_uncached"] / t["pyhessian"],
            "pyhessian_vector_seconds": t["pyhessian_vector"],
            "ours_cached_over_pyhessian_vector": t["ours_cached"] / t["pyhessian_vector"],
            "relative_difference_to_pyhessian": agreement,
        },
        "first_product": {
            "pyhessian_seconds": first["pyhessian"],
            "ours_seconds": first["ours"],
            "ours_over_pyhessian": first["ours"] / first["pyhessian"],
        },
        "top_eigenvalue": {
            "reference": reference,
            "lanczos_seconds": lanczos_s,
            "pyhessian_power_seconds": power_s,
            "lanczos_over_pyhessian_power": lanczos_s / power_s,
            "lanczos_matvecs": [m for _, m, _ in lanczos],
            "pyhessian_power_matvecs": [m for _, m, _ in power],
            "lanczos_max_relative_error": max(e for _, _, e in lanczos),
            "pyhessian_power_max_relative_error": max(e for _, _, e in power),
        },
    }


def _trained(name: str, data) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, data.input_shape, data.n_classes)
    train_map(model, data.train, TrainConfig(epochs=1, progress=False))
    return model


def bench_model(name: str, data, repeats: int) -> dict:
    model = _trained(name, data)
    x, y = data.train.tensors[0][:256], data.train.tensors[1][:256]
    ggn = GGN(model, "cross_entropy", (x, y))
    hess = Hessian(model, "cross_entropy", (x, y))
    v = torch.randn(ggn.shape[0])
    for fn in (lambda: _gradient(model, x, y), lambda: ggn @ v, lambda: hess @ v):
        fn()  # warm-up
    t = interleaved(
        {
            "gradient": lambda: _gradient(model, x, y),
            "ggn": lambda: ggn @ v,
            "hvp": lambda: hess @ v,
        },
        repeats,
    )
    eig_data = [
        (data.train.tensors[0][i : i + 256], data.train.tensors[1][i : i + 256]) for i in (0, 256)
    ]
    hess_eig = Hessian(model, "cross_entropy", eig_data)
    reference = float(
        top_eigenvalues(hess_eig, k=1, tol=1e-10, max_iters=100, seed=100).eigenvalues[0]
    )
    lanczos_times, power_times, lanczos_mv, power_mv = [], [], [], []
    rule_lanczos: list[tuple[float, int, float]] = []
    rule_power: list[tuple[float, int, float]] = []
    for seed in range(5):
        # matvecs Lanczos needs for 1e-3 accuracy, read off its Ritz history; then time exactly that run
        history = top_eigenvalues(hess_eig, k=1, tol=1e-12, max_iters=60, seed=seed).ritz_history
        m = next(
            i + 1 for i, r in enumerate(history) if abs(r - reference) <= 1e-3 * abs(reference)
        )
        start = time.perf_counter()
        top_eigenvalues(hess_eig, k=1, tol=1e-12, max_iters=m, seed=seed)
        lanczos_times.append(time.perf_counter() - start)
        lanczos_mv.append(m)
        start = time.perf_counter()
        iters, _ = _power_to_accuracy(hess_eig, reference, 1e-3, seed)
        power_times.append(time.perf_counter() - start)
        power_mv.append(iters)
        # the same certified stopping rule for both: relative Ritz residual ≤ 1e-3
        start = time.perf_counter()
        lz = top_eigenvalues(hess_eig, k=1, tol=1e-3, seed=seed)
        rule_lanczos.append(
            (
                time.perf_counter() - start,
                lz.n_matvecs,
                abs(float(lz.eigenvalues[0]) / reference - 1),
            )
        )
        start = time.perf_counter()
        pw = power_iteration(hess_eig, tol=1e-3, max_iters=2000, seed=seed)
        rule_power.append(
            (time.perf_counter() - start, pw.n_matvecs, abs(pw.eigenvalue / reference - 1))
        )
    extra = {"retained_graph": bench_retained_graph(model, x, y, repeats)} if name == "mlp" else {}
    return {
        "n_params": sum(p.numel() for p in model.parameters()),
        "gradient_seconds": t["gradient"],
        "ggn_vector_seconds": t["ggn"],
        "hvp_seconds": t["hvp"],
        "ggn_over_gradient": t["ggn"] / t["gradient"],
        "hvp_over_gradient": t["hvp"] / t["gradient"],
        "top_eigenvalue": reference,
        "lanczos_seconds": statistics.median(lanczos_times),
        "power_seconds": statistics.median(power_times),
        "lanczos_over_power": statistics.median(lanczos_times) / statistics.median(power_times),
        "lanczos_matvecs": lanczos_mv,
        "power_matvecs": power_mv,
        "residual_rule": {
            "lanczos_seconds": statistics.median(t for t, _, _ in rule_lanczos),
            "power_seconds": statistics.median(t for t, _, _ in rule_power),
            "lanczos_over_power": statistics.median(t for t, _, _ in rule_lanczos)
            / statistics.median(t for t, _, _ in rule_power),
            "lanczos_matvecs": [m for _, m, _ in rule_lanczos],
            "power_matvecs": [m for _, m, _ in rule_power],
            "lanczos_max_relative_error": max(e for _, _, e in rule_lanczos),
            "power_max_relative_error": max(e for _, _, e in rule_power),
        },
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--retained-only", action="store_true", help="only the retained-graph comparison"
    )
    args = parser.parse_args()
    data = load_dataset("fashion-mnist", n_train=4096, ood=False)
    x, y = data.train.tensors[0][:256], data.train.tensors[1][:256]
    results = {
        "benchmark": "curvature",
        "tacitbayes": tb.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": 256,
    }
    if args.retained_only:
        model = _trained("mlp", data)
        results["models"] = {
            "mlp": {"retained_graph": bench_retained_graph(model, x, y, args.repeats)}
        }
    else:
        results["models"] = {
            name: bench_model(name, data, args.repeats) for name in ("mlp", "lenet")
        }
    results["targets"] = {
        "ggn_over_gradient": 3.0,
        "hvp_over_gradient": 4.0,
        "lanczos_over_power": 1 / 3,
        "ours_cached_over_pyhessian": 1.0,
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
