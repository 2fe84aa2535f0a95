"""Outputs of ``tacitbayes continual``: results.json, report.md, heat-maps and the seen-task curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tacitbayes import plots
from tacitbayes.experiments.reporting import cell, footer, markdown_table, text_table
from tacitbayes.experiments.reporting import write_outputs as write_files
from tacitbayes.search import edge_messages

COLUMNS = (
    ("β", "strength", "{:g}"),
    ("avg. acc.", "average_accuracy", "{:.4f}"),
    ("forgetting", "forgetting", "{:.4f}"),
    ("BWT", "backward_transfer", "{:+.4f}"),
    ("val. acc.", "val_average_accuracy", "{:.4f}"),
    ("seconds", "seconds", "{:.0f}"),
)
SCENARIO_TEXT = {
    "task": "task-incremental (training and evaluation on the logits of the task's classes)",
    "class": "class-incremental (one softmax over all 10 outputs)",
}


def format_table(results: dict[str, Any]) -> str:
    """One row per method: chosen β, average accuracy, forgetting, BWT, validation accuracy, time."""
    return text_table(results["methods"], COLUMNS, first_width=12, width=12)


def _matrix_md(matrix: list[list[float]], names: list[str]) -> list[str]:
    lines = [
        "| task \\ after | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for name, row in zip(names, matrix, strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return lines


def _report(results: dict[str, Any]) -> str:
    s = results["settings"]
    names = [t["name"] for t in results["tasks"]]
    sizes = ", ".join(
        f"{t['name']}: {t['n_train']}/{t['n_val']}/{t['n_test']}" for t in results["tasks"]
    )
    scenario = SCENARIO_TEXT[results["scenario"]]
    if results["sequence"] == "rotated":
        scenario += "; every task has every class, so both scenarios coincide"
    lines = [
        f"# tacitbayes continual: {results['sequence']} {results['dataset']}",
        "",
        f"{len(names)} tasks (train/val/test examples: {sizes}); scenario {scenario}. "
        f"One shared {results['model']} {results['model_options']} "
        f"({results['n_params']:,} parameters), Adam lr {s['lr']:g} with a cosine schedule per "
        f"task, {s['epochs']} epochs of batch {s['batch_size']} per task, the same initialization "
        "and shuffles for every method.",
        "",
        "Loss on task t: mean cross-entropy + penalty/N_t, penalty = the prior's ½(θ − μ)ᵀΛ(θ − μ). "
        f"All methods start from N(0, δ⁻¹I), δ = {s['delta']:g}; finetune keeps it, the priors "
        "become the Laplace posterior after each task (precision δ + β Σ_s F_s, mean the current "
        "weights; F_s the summed-loss curvature of task s: the exact GGN diagonal or the "
        "diagonal of KFAC for `diagonal`, the KFAC blocks G ⊗ A for `kronecker`).",
        "",
        f"Selection: {results['selection']}; grid {s['strengths']}.",
        "",
        "Average accuracy: mean test accuracy over all tasks after the last one. Forgetting: mean "
        "over tasks i < T of max_{i≤j<T} R[i, j] − R[i, T]. BWT: mean of R[i, T] − R[i, i].",
        "",
    ]
    rows = [
        [name, *(cell(row[k], f) for _, k, f in COLUMNS), row["curvature"] or "-"]
        for name, row in results["methods"].items()
    ]
    lines += markdown_table(["method", *(title for title, _, _ in COLUMNS), "curvature"], rows)
    for name, row in results["methods"].items():
        lines += ["", f"## {name}", ""]
        if row["strength"] is not None:
            for message in edge_messages(row.get("searches")):
                lines += [f"WARNING {message}.", ""]
            lines.append(f"β = {row['strength']:g} (chosen on validation). Test accuracy R[i, j]:")
        else:
            lines.append("Test accuracy R[i, j]:")
        lines += ["", *_matrix_md(row["accuracy_matrix"], names)]
        if row["grid"]:
            lines += [
                "",
                "Every β of the grid (selection uses the validation column only):",
                "",
                "| β | val. acc. | avg. acc. | forgetting | BWT |",
                "|---|---|---|---|---|",
            ]
            for g in row["grid"]:
                lines.append(
                    f"| {g['strength']:g} | {g['val_average_accuracy']:.4f} | "
                    f"{g['average_accuracy']:.4f} | {cell(g['forgetting'], '{:.4f}')} | "
                    f"{cell(g['backward_transfer'], '{:+.4f}')} |"
                )
    return "\n".join(lines + footer(s, results["versions"]))


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """results.json, report.md, accuracy_<method>.png per method and seen_average.png."""
    names = [t["name"] for t in results["tasks"]]
    for method, row in results["methods"].items():
        beta = "" if row["strength"] is None else f", β = {row['strength']:g}"
        plots.heatmap(
            row["accuracy_matrix"],
            out / f"accuracy_{method}.png",
            row_labels=names,
            col_labels=names,
            xlabel="after training task",
            ylabel="test accuracy on task",
            title=f"{method}{beta}: avg. {row['average_accuracy']:.3f}",
        )
    steps = list(range(1, len(names) + 1))
    plots.line_plot(
        {m: (steps, row["seen_average"]) for m, row in results["methods"].items()},
        out / "seen_average.png",
        xlabel="tasks trained",
        ylabel="mean test accuracy on the tasks seen",
        title=f"{results['sequence']} {results['dataset']}, {results['scenario']}-incremental",
    )
    write_files(out, results, _report(results))
