"""Outputs of ``tacitbayes eos``: results.json, report.md and the sharpness / loss plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from tacitbayes import plots
from tacitbayes.experiments.reporting import cell, footer, markdown_table, text_table
from tacitbayes.experiments.reporting import write_outputs as write_files
from tacitbayes.plots import save_figure

COLUMNS = (
    ("σ", "sigma", "{:g}"),
    ("N_s", "n_samples", "{:d}"),
    ("final sharpness", "final_sharpness", "{:.2f}"),
    ("÷ 2/ρ", "ratio_to_gd_threshold", "{:.3f}"),
    ("VGD h_crit", "threshold", "{:.2f}"),
    ("÷ h_crit", "ratio_to_threshold", "{:.3f}"),
    ("h_crit (ref. z)", "threshold_reference", "{:.3g}"),
    ("train loss", "final_loss", "{:.4f}"),
    ("test acc.", "test_accuracy", "{:.4f}"),
    ("seconds", "seconds", "{:.0f}"),
)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    if key in ("threshold", "ratio_to_threshold") and row["kind"] != "vgd":
        return "-"
    return cell(row.get(key), fmt)


def format_table(results: dict[str, Any]) -> str:
    """The per-run summary as a fixed-width text table for the terminal."""
    rows = {
        name + (" (diverged)" if row["diverged"] else ""): row
        for name, row in results["runs"].items()
    }
    return text_table(rows, COLUMNS, first="run", cell_of=_cell)


def sharpness_plot(results: dict[str, Any], path: str | Path) -> Path:
    """Sharpness vs step per run; 2/ρ (black) and each VGD run's h_crit (dotted, in its colour)."""
    fig = Figure(figsize=(9.5, 4.8), layout="constrained")
    ax = fig.subplots()
    gd_line = results["gd_threshold"]
    ax.axhline(gd_line, color="black", linestyle="--", linewidth=1.2, label=f"2/ρ = {gd_line:.3g}")
    for i, (name, row) in enumerate(results["runs"].items()):
        traj = row["trajectory"]
        if not traj:
            continue
        color = f"C{i % 10}"
        ax.plot([r["step"] for r in traj], [r["sharpness"] for r in traj], color=color, label=name)
        if row["kind"] == "vgd" and row.get("threshold") is not None:
            ax.axhline(row["threshold"], color=color, linestyle=":", linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("sharpness λ_max(∇²L)")
    ax.set_title(
        f"{results['dataset']} / {results['model']}, ρ = {results['lr']:g}: "
        "dotted = VGD threshold h_crit"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path, dpi=110)


def _report(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        f"# tacitbayes eos: {results['dataset']} / {results['model']}",
        "",
        f"{results['n_params']:,} parameters, {results['n_train']} training images, full-batch "
        f"MSE loss ½‖f − onehot‖² (mean over examples), {s['steps']} steps of ρ = {s['lr']:g} "
        f"(2/ρ = {results['gd_threshold']:.3g}); sharpness every {s['record_every']} steps "
        "(Lanczos, tol 1e-3, on the whole training subset, at the mean weights).",
        "",
        f"Final sharpness: mean over the records of the last {s['tail']:.0%} of training. "
        "VGD h_crit: docs/methods.md §3 threshold 2√(z/3)·sinh(⅓·arsinh((3/ρ)√(3/z))) with "
        "z = N_s c/σ², c = (∇L·v₁)² the squared gradient along the top Hessian eigenvector "
        "measured at each record; median over the same records. 'h_crit (ref. z)' uses the "
        "reference code's z = N_s‖∇L‖²/(Pσ²).",
        "",
    ]
    rows = [
        [
            name + (" (diverged)" if row["diverged"] else ""),
            *(_cell(row, k, f) for _, k, f in COLUMNS),
        ]
        for name, row in results["runs"].items()
    ]
    lines += markdown_table(["run", *(title for title, _, _ in COLUMNS)], rows)
    ivon = results["runs"].get("ivon")
    if ivon and ivon.get("final_preconditioned_sharpness") is not None:
        lines += [
            "",
            f"IVON preconditioned sharpness λ_max(D^-½ H D^-½), D = diag(h + δ): "
            f"{ivon['final_preconditioned_sharpness']:.3g} (its momentum-GD limit "
            f"2(1+β₁)/(α(1−β₁)) = {ivon['preconditioned_threshold']:.3g}).",
        ]
    checks = [f"- {k}: {v}" for k, v in results["checks"].items()]
    return "\n".join(lines + footer(s, results["versions"], [("Checks", checks)]))


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """results.json, report.md, sharpness.png, loss.png (and ivon.png with an IVON run)."""
    sharpness_plot(results, out / "sharpness.png")
    series = {
        name: ([r["step"] for r in row["trajectory"]], [r["loss"] for r in row["trajectory"]])
        for name, row in results["runs"].items()
        if row["trajectory"]
    }
    if series:
        plots.line_plot(
            series, out / "loss.png", xlabel="step", ylabel="training loss", logy=True,
            title=f"{results['dataset']} / {results['model']}: training loss",
        )  # fmt: skip
    ivon = results["runs"].get("ivon")
    if ivon and ivon["trajectory"]:
        traj = ivon["trajectory"]
        plots.line_plot(
            {
                "raw sharpness": ([r["step"] for r in traj], [r["sharpness"] for r in traj]),
                "preconditioned": (
                    [r["step"] for r in traj],
                    [r["preconditioned_sharpness"] for r in traj],
                ),
            },
            out / "ivon.png",
            xlabel="step",
            ylabel="top eigenvalue",
            title="IVON: sharpness of H and of D^-½ H D^-½",
            hlines={"2/ρ (GD)": results["gd_threshold"]},
        )
    write_files(out, results, _report(results))
