"""The four studies of ``tacitbayes linsys``; each returns its figures and writes one plot.

1. ``closed_form_study``: depth-1 GD from y₀ against y₀ + A⁺(b − Ay₀).
2. ``init_scale_study``: distance of the GD solution to the min-ℓ₁ and min-ℓ₂ solutions
   across init scale α and depth, for diagonal and deep linear networks.
3. ``phase_transition_study``: sparse-recovery success rate against n/d.
4. ``first_layer_study``: a trained MLP's first-layer change ΔW against the
   minimum-norm change ΔW* = J⁺JΔW with the same first-order effect on the outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tacitbayes import plots
from tacitbayes.data import load_dataset
from tacitbayes.dynamics.first_layer import (
    first_layer_factors,
    min_distance_change,
    projection_summary,
)
from tacitbayes.dynamics.linsys import (
    min_l1_solution,
    min_norm_solution,
    solve_underdetermined_batch,
)
from tacitbayes.models import build_model
from tacitbayes.training import TrainConfig, train_map

SUCCESS_THRESHOLD = 1e-2
PLOT_RESIDUAL = 1e-3  # study 2 plots a point when ‖Ay − b‖/‖b‖ ≤ this at the end
_FLOOR = 1e-300  # keeps exact zeros plottable on log axes


def _rel(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    return float((a - b).norm() / b.norm().clamp_min(_FLOOR))


def sparse_problems(
    batch: int, n: int, d: int, k: int, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian A (batch, n, d), k-sparse y* with N(0, 1) entries on a uniform support, b = Ay*."""
    A = torch.randn(batch, n, d, generator=gen, dtype=torch.float64)
    y = torch.zeros(batch, d, dtype=torch.float64)
    for i in range(batch):
        support = torch.randperm(d, generator=gen)[:k]
        y[i, support] = torch.randn(k, generator=gen, dtype=torch.float64)
    return A, y, (A * y.unsqueeze(-2)).sum(-1)


def closed_form_study(
    n: int, d: int, n_inits: int, seed: int, out: Path, progress: bool = True
) -> dict[str, Any]:
    """Depth 1: ‖y_GD − (y₀ + A⁺(b − Ay₀))‖/‖…‖ for y₀ = 0 and ``n_inits`` Gaussian y₀."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=gen, dtype=torch.float64)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    y0 = torch.cat(
        [
            torch.zeros(1, d, dtype=torch.float64),
            torch.randn(n_inits, d, generator=gen, dtype=torch.float64),
        ]
    )
    B = len(y0)
    results = solve_underdetermined_batch(
        A.expand(B, n, d), b.expand(B, n), model="linear", y0=y0, tol=1e-13, record_every=5
    )
    errors = [_rel(r.y, min_norm_solution(A, b, y0[i])) for i, r in enumerate(results)]
    explicit = A.T @ torch.linalg.solve(A @ A.T, b)  # Aᵀ(AAᵀ)⁻¹b
    plots.line_plot(
        {
            ("y0 = 0" if i == 0 else f"y0 #{i}"): (r.loss_steps, r.losses.clamp_min(_FLOOR))
            for i, r in enumerate(results)
        },
        out / "closed_form.png",
        xlabel="gradient step",
        ylabel="½‖Ay − b‖²",
        title=f"depth 1 (linear), A {n}×{d}: loss",
        logy=True,
    )
    return {
        "n": n,
        "d": d,
        "rel_errors": errors,
        "max_rel_error": max(errors),
        "zero_init_vs_explicit": _rel(results[0].y, explicit),
        "steps": [r.steps for r in results],
        "converged": [r.converged for r in results],
    }


def init_scale_study(
    n: int,
    d: int,
    k: int,
    scales: Sequence[float],
    depths: Sequence[int],
    max_steps: int,
    tol: float,
    seed: int,
    out: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Relative distance of the GD solution to min-ℓ₁ and min-ℓ₂ across (model, depth, α)."""
    A, y_true, b = sparse_problems(1, n, d, k, torch.Generator().manual_seed(seed + 1))
    A, y_true, b = A[0], y_true[0], b[0]
    l1, l2 = min_l1_solution(A, b), min_norm_solution(A, b)
    S = len(scales)
    models: dict[str, dict[str, dict[str, list]]] = {"diagonal": {}, "deep-linear": {}}
    jobs = [(m, L) for m in models for L in depths]
    for model, depth in tqdm(jobs, desc="init scale", disable=not progress or None, leave=False):
        runs = solve_underdetermined_batch(
            A.expand(S, n, d),
            b.expand(S, n),
            model=model,
            depth=depth,
            init_scale=list(scales),
            max_steps=max_steps,
            tol=tol,
            seed=seed,
            record_every=max_steps,
        )
        models[model][str(depth)] = {
            "to_min_l1": [_rel(r.y, l1) for r in runs],
            "to_min_l2": [_rel(r.y, l2) for r in runs],
            "converged": [r.converged for r in runs],
            "residual": [r.residual for r in runs],
            "steps": [r.steps for r in runs],
        }
    panels = (
        ("diagonal", "to_min_l1", "min-ℓ₁", "init_scale_diagonal_l1.png"),
        ("diagonal", "to_min_l2", "min-ℓ₂", "init_scale_diagonal_l2.png"),
        ("deep-linear", "to_min_l2", "min-ℓ₂", "init_scale_deep_linear.png"),
    )
    for model, key, name, filename in panels:
        series = {}
        for depth, row in models[model].items():
            reached = [res <= PLOT_RESIDUAL for res in row["residual"]]
            ys = [
                max(v, 1e-16) if ok else math.nan for v, ok in zip(row[key], reached, strict=True)
            ]
            series[f"depth {depth}"] = (list(scales), ys)
        plots.line_plot(
            series,
            out / filename,
            xlabel="init scale α",
            ylabel=f"‖y − y_{name}‖ / ‖y_{name}‖",
            title=f"{model}, A {n}×{d}, {k}-sparse b: distance to {name}",
            logx=True,
            logy=True,
        )
    return {
        "n": n,
        "d": d,
        "k": k,
        "scales": list(scales),
        "max_steps": max_steps,
        "tol": tol,
        "min_l1_to_truth": _rel(l1, y_true),
        "min_l2_to_truth": _rel(l2, y_true),
        "models": models,
    }


def phase_transition_study(
    d: int,
    k: int,
    ratios: Sequence[float],
    trials: int,
    small_init: float,
    large_init: float,
    depth: int,
    max_steps: int,
    tol: float,
    seed: int,
    out: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Fraction of trials with ‖ŷ − y*‖/‖y*‖ < 10⁻² against n/d, for four solvers."""
    gen = torch.Generator().manual_seed(seed + 2)
    names = ("diagonal_small_init", "diagonal_large_init", "basis_pursuit", "min_norm")
    success: dict[str, list[float]] = {m: [] for m in names}
    median: dict[str, list[float]] = {m: [] for m in names}
    converged: dict[str, list[float]] = {m: [] for m in names[:2]}
    ns = sorted({min(max(round(r * d), 1), d - 1) for r in ratios})
    for n in tqdm(ns, desc="phase transition", disable=not progress or None, leave=False):
        A, y_true, b = sparse_problems(trials, n, d, k, gen)
        found: dict[str, list[Tensor]] = {}
        for name, alpha in (
            ("diagonal_small_init", small_init),
            ("diagonal_large_init", large_init),
        ):
            runs = solve_underdetermined_batch(
                A, b, model="diagonal", depth=depth, init_scale=alpha,
                max_steps=max_steps, tol=tol, seed=seed, record_every=max_steps,
            )  # fmt: skip
            found[name] = [r.y for r in runs]
            converged[name].append(sum(r.converged for r in runs) / trials)
        found["basis_pursuit"] = [min_l1_solution(A[i], b[i]) for i in range(trials)]
        found["min_norm"] = [min_norm_solution(A[i], b[i]) for i in range(trials)]
        for name in names:
            errors = torch.tensor([_rel(y, y_true[i]) for i, y in enumerate(found[name])])
            success[name].append(float((errors < SUCCESS_THRESHOLD).double().mean()))
            median[name].append(float(errors.median()))
    x = [n / d for n in ns]
    plots.line_plot(
        {name.replace("_", " "): (x, success[name]) for name in names},
        out / "phase_transition.png",
        xlabel="n / d (measurements per unknown)",
        ylabel=f"success rate (rel. error < {SUCCESS_THRESHOLD:g})",
        title=f"d = {d}, k = {k}, {trials} trials; diagonal depth {depth}, "
        f"α = {small_init:g} / {large_init:g}",
    )
    return {
        "d": d,
        "k": k,
        "n": ns,
        "ratios": x,
        "trials": trials,
        "threshold": SUCCESS_THRESHOLD,
        "depth": depth,
        "small_init": small_init,
        "large_init": large_init,
        "max_steps": max_steps,
        "success": success,
        "median_error": median,
        "converged_fraction": converged,
    }


def first_layer_study(
    widths: Sequence[int],
    n_train: int,
    steps: int,
    lr: float,
    depth: int,
    seed: int,
    out: Path,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train an MLP on a digits subset by full-batch GD (MSE) on ``device``; compare ΔW₁ with ΔW₁* = J⁺JΔW₁."""
    data = load_dataset("digits", n_train=n_train, seed=seed, ood=False)
    x = data.train.tensors[0]
    rows = []
    for width in tqdm(widths, desc="first layer", disable=not progress or None, leave=False):
        torch.manual_seed(seed)
        model = build_model("mlp", data.input_shape, data.n_classes, width=width, depth=depth)
        w_init = model[1].weight.detach().clone()
        G, X = first_layer_factors(model, x)
        width_lr = lr * 64 / width
        config = TrainConfig(
            epochs=steps, batch_size=len(x), optimizer="sgd", momentum=0.0, lr=width_lr,
            weight_decay=0.0, loss="mse", schedule="constant", seed=seed, progress=False,
        )  # fmt: skip
        history = train_map(model, data.train, config, device=device).history
        delta = model[1].weight.detach().cpu() - w_init
        delta_star, rank = min_distance_change(G, X, delta)
        losses = [h["train_loss"] for h in history]
        row = {"width": width, "lr": width_lr, **projection_summary(delta, delta_star, w_init)}
        row |= {
            "rank_J": rank,
            "n_weights": delta.numel(),
            "chance_cosine": math.sqrt(rank / delta.numel()),
            "train_loss_first_epoch": losses[0],
            "train_loss_final": losses[-1],
            "loss_monotone": all(b <= a for a, b in zip(losses, losses[1:], strict=False)),
        }
        rows.append(row)
    w = [r["width"] for r in rows]
    plots.line_plot(
        {
            "‖ΔW*‖/‖ΔW‖ = cos(ΔW, ΔW*)": (w, [r["ratio"] for r in rows]),
            "chance: √(rank J / #weights)": (w, [r["chance_cosine"] for r in rows]),
            "‖ΔW‖/‖W₁(0)‖": (w, [r["relative_change"] for r in rows]),
        },
        out / "first_layer.png",
        xlabel="hidden width",
        ylabel="ratio",
        title=f"MLP first layer, {n_train} digits, {steps} GD steps (MSE)",
        logx=True,
    )
    return {"n_train": n_train, "steps": steps, "depth": depth, "base_lr": lr, "rows": rows}
