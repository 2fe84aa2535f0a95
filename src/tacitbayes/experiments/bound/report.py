"""Outputs of ``tacitbayes bound``: results.json, report.md and bounds.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tacitbayes.experiments.reporting import footer, text_table
from tacitbayes.experiments.reporting import write_outputs as write_files
from tacitbayes.plots import save_figure
from tacitbayes.search import edge_messages

COLUMNS = (
    ("test err Q", "test_error", "{:.4f}"),
    ("MAP test err", "map_test_error", "{:.4f}"),
    ("L̂ (MC)", "mc_risk", "{:.4f}"),
    ("L̂ upper", "emp_risk_upper", "{:.4f}"),
    ("KL", "kl", "{:.1f}"),
    ("McAllester", "mcallester", "{:.4f}"),
    ("Catoni", "catoni", "{:.4f}"),
    ("kl-inverse", "kl_inverse", "{:.4f}"),
)
BARS = (
    ("test error of Q", "test_error"),
    ("L̂(Q), Monte Carlo", "mc_risk"),
    ("McAllester", "mcallester"),
    ("Catoni", "catoni"),
    ("kl-inverse", "kl_inverse"),
)


def _hyper(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in row["hyperparameters"].items())


def format_table(results: dict[str, Any]) -> str:
    """One line per prior family: errors, KL and the three bounds."""
    columns = [*COLUMNS, ("  chosen", "hyperparameters", "{}")]
    rows = {n: {**r, "hyperparameters": _hyper(r)} for n, r in results["priors"].items()}
    return text_table(rows, columns, first="prior", first_width=18, width=14)


def bound_plot(results: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars per prior family: test error, L̂(Q) and the three bounds; a line at 1."""
    names = list(results["priors"])
    fig = Figure(figsize=(8.0, 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(BARS)
    x = np.arange(len(names))
    for i, (label, key) in enumerate(BARS):
        values = [results["priors"][n][key] for n in names]
        ax.bar(x + (i - (len(BARS) - 1) / 2) * width, values, width, label=label)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="vacuous (1)")
    # the chosen hyper-parameters under each family (β = 0: the learned family chose no covariance)
    labels = [f"{n}\n{_hyper(results['priors'][n]).replace(', ', chr(10))}" for n in names]
    ax.set_xticks(x, labels, fontsize="small")
    ax.set_ylabel("0-1 risk")
    ax.set_title(
        f"{results['dataset']} / {results['model']}: classes {results['source_classes']} → "
        f"{results['target_classes']}, δ = {results['delta']}"
    )
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path, dpi=110)


def _report(results: dict[str, Any]) -> str:
    s, rows = results["settings"], results["priors"]
    first = next(iter(rows.values()))
    lines = [
        f"# tacitbayes bound: {results['dataset']} / {results['model']}",
        "",
        f"{results['n_params']:,} parameters. Source task: classes {results['source_classes']} "
        f"({results['n_source']} training images; source test error "
        f"{results['source']['test_error']:.4f}; Laplace prior precision δ = "
        f"{results['source']['laplace_prior_precision']:.4g}). Target task: classes "
        f"{results['target_classes']} ({results['n_target']} training images bound, "
        f"{results['n_target_test']} test images).",
        "",
        f"Bounds on the 0-1 risk of the Gibbs classifier Q hold with probability ≥ 1 − δ = "
        f"{1 - results['delta']:.3g}: δ/2 for the Monte Carlo estimate of L̂(Q) "
        f"(kl-inverse sample-convergence bound over {first['mc_draws']:,} independent draws), δ/2 "
        "for the PAC-Bayes bound, which pays ln|grid| for the grid of prior hyper-parameters (and "
        "Catoni another ln|c grid|); τ and the posterior mean are choices of Q and free. "
        f"Hyper-parameters were chosen by the {results['kind']} bound with a proxy L̂ on a "
        "subset with separate samples.",
        "",
        "| prior | family | "
        + " | ".join(t for t, _, _ in COLUMNS)
        + " | chosen | grid | independence |",
        "|---" * (len(COLUMNS) + 5) + "|",
    ]
    for name, row in rows.items():
        cells = " | ".join(fmt.format(row[key]) for _, key, fmt in COLUMNS)
        lines.append(
            f"| {name} | {row['prior']} | {cells} | {_hyper(row)} | {row['grid_size']} "
            f"(ln = {row['union_cost']:.2f}) | {row['prior_independence']} |"
        )
    searches = [results["source"].get("searches"), *(r.get("searches") for r in rows.values())]
    edges = [m for found in searches for m in edge_messages(found)]
    if edges:
        lines += ["", *(f"- WARNING {m}." for m in edges)]
    lines += _profile_lines(rows.get("learned", {}))
    lines += ["", "## Checks", "", *(f"- {k}: {v}" for k, v in results["checks"].items())]
    lines += [
        "",
        f"Largest relative Frobenius error of the compressed posterior precision (learned prior): "
        f"{rows.get('learned', first)['compression_error_max']:.3g} (KL is exact for the Q used).",
        f"Run time: {results['seconds']:.0f} s.",
    ]
    return "\n".join(lines + footer(s, results["versions"]))


def _profile_lines(row: dict[str, Any]) -> list[str]:
    """The learned prior's KL against β at the chosen α and τ (empty without a profile)."""
    profile = row.get("beta_profile")
    if not profile:
        return []
    h = row["hyperparameters"]
    best = min(profile, key=lambda r: r["kl"])
    lines = [
        "",
        f"## Learned prior: KL(Q‖P) against β (α = {h['alpha']:.3g}, τ = {h['tau']:.3g}, the "
        "final target weights)",
        "",
        'Raising β lowers the log-volume part ("rest") where source and target curvature '
        "share directions and raises the Mahalanobis part βΔᵀF_srcΔ/2 along the target's move "
        "away from the source weights.",
        "",
        "| β (hidden) | β (output) | KL | Mahalanobis | rest |",
        "|---|---|---|---|---|",
    ]
    for r in profile:
        lines.append(
            f"| {r['beta']:.3g} | {r['beta_output']:.3g} | {r['kl']:.1f} | "
            f"{r['mahalanobis']:.1f} | {r['rest']:.1f} |"
        )
    verdict = (
        "the source covariance lowers the KL"
        if best["beta"] > 0 or best["beta_output"] > 0
        else "no β > 0 lowers the KL below the isotropic prior at the source weights (β = 0): "
        "the learned covariance does not tighten the bound of these target weights"
    )
    return [
        *lines,
        "",
        f"Smallest KL at β = {best['beta']:.3g} (output {best['beta_output']:.3g}): {verdict}.",
    ]


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """bounds.png, report.md and results.json in ``out`` (each written atomically)."""
    write_files(
        out, results, _report(results), [lambda folder: bound_plot(results, folder / "bounds.png")]
    )
