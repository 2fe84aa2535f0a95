"""What ``compare`` writes: report.md (verdicts first, then the tables), results.json and the plots.

Plots, one panel per method where methods would otherwise overlay:

* ``reliability.png``: a reliability diagram per method;
* ``ood_histograms.png``: per method, the max-probability confidence on the test set
  and on the OOD set (the score the OOD AUROC column ranks);
* ``shift.png``: accuracy and NLL against the rotation angle, from 0° (the test set);
* ``metrics.png``: the headline metrics as bars.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tacitbayes import plots_panels
from tacitbayes.experiments.compare.verdicts import HEADLINE, best_baseline, verdict
from tacitbayes.experiments.reporting import cell, footer, markdown_table, text_table
from tacitbayes.experiments.reporting import write_outputs as write_files
from tacitbayes.search import edge_messages

__all__ = ["PLOTS", "format_table", "search_notes", "write_outputs"]

TABLE_COLUMNS = ("accuracy", "nll", "ece", "brier", "ood_auroc", "shift_accuracy", "fit_seconds")
PLOTS = ("reliability.png", "ood_histograms.png", "shift.png", "metrics.png")
BAR_METRICS = ("accuracy", "nll", "ece", "ood_auroc")


def format_table(results: dict[str, Any]) -> str:
    """The results as a fixed-width text table for the terminal."""
    return text_table(results["methods"], [(c, c, "{:.4f}") for c in TABLE_COLUMNS])


def search_notes(results: dict[str, Any]) -> list[str]:
    """One line per method that searched a hyper-parameter: which searches stopped at an edge."""
    lines = []
    for name, row in results["methods"].items():
        searches = row.get("searches") or {}
        if not searches:
            continue
        edges = {key: edge_messages({key: r}) for key, r in searches.items()}
        if any(edges.values()):
            lines += [f"- {name} ({k}): WARNING {m}." for k, ms in edges.items() for m in ms]
        else:
            lines.append(f"- {name}: {', '.join(searches)} ended inside the search range.")
    return lines


def _report(results: dict[str, Any], settings: dict[str, Any]) -> str:
    methods = results["methods"]
    lines = [
        f"# tacitbayes compare: {results['dataset']} / {results['model']}",
        "",
        f"{results['n_params']:,} parameters, {results['n_train']:,} training and "
        f"{results['n_test']:,} test examples; OOD set: {results['ood_dataset']}; shift: the "
        f"test set rotated by {', '.join(results['shift_angles'])} degrees.",
        "",
        "## Verdicts",
        "",
    ]
    best = best_baseline(methods)
    if best is not None:
        lines += [f"Best baseline (lowest test NLL): **{best}**.", ""]
    lines += [f"- **{name}**: {verdict(name, methods)}" for name in methods]
    lines += ["", "## Results", ""]
    rows = [[name, *(cell(row.get(c)) for c in TABLE_COLUMNS)] for name, row in methods.items()]
    lines += markdown_table(["method", *TABLE_COLUMNS], rows)
    if any("ood_auroc_variance" in r for r in methods.values()):
        keys = ("ood_auroc", "ood_auroc_entropy", "ood_auroc_mi", "ood_auroc_variance")
        lines += ["", "OOD AUROC by score:", ""]
        rows = [[name, *(cell(row.get(k)) for k in keys)] for name, row in methods.items()]
        lines += markdown_table(["method", "max-prob", "entropy", "MI", "variance"], rows)
    if any("sample_effect" in r for r in methods.values()):
        keys = ("sample_effect", "sample_effect_ood")
        lines += [
            "",
            "Sample effect: mean total-variation distance between averaging the samples' "
            "probabilities and the softmax of their mean logits (0: the samples predict alike):",
            "",
        ]
        rows = [
            [name, *(cell(row.get(k), "{:.1e}") for k in keys)] for name, row in methods.items()
        ]
        lines += markdown_table(["method", "test", "OOD"], rows)
    lines += ["", "## Plots", ""]
    lines += [f"![{p[:-4]}]({p})" for p in PLOTS]
    notes = search_notes(results)
    extra = [("Hyper-parameter searches", notes)] if notes else []
    return "\n".join(lines + footer(settings, results["versions"], extra))


def _plots(results: dict[str, Any], arrays: dict[str, dict[str, torch.Tensor]], out: Path) -> None:
    methods = results["methods"]
    title = f"{results['dataset']} / {results['model']}"
    y_test = arrays["labels"]["test"]
    plots_panels.reliability_grid(
        {name: (a["test"], y_test) for name, a in arrays.items() if name != "labels"},
        out / "reliability.png",
        title=f"{title}: reliability on the test set",
    )
    with_ood = {name: a for name, a in arrays.items() if "ood" in a}
    if with_ood:
        plots_panels.histogram_grid(
            {
                name: (a["test"].max(-1).values, a["ood"].max(-1).values)
                for name, a in with_ood.items()
            },
            out / "ood_histograms.png",
            xlabel="confidence (max probability)",
            labels=(f"{results['dataset']} test", f"{results['ood_dataset']} (OOD)"),
            title=f"{title}: confidence in and out of distribution",
            notes={n: f"AUROC {methods[n]['ood_auroc']:.3f}" for n in with_ood},
        )
    shifted = {n: r for n, r in methods.items() if r.get("shift")}
    if shifted:
        panels = {}
        for metric, label in (("accuracy", "accuracy"), ("nll", "NLL")):
            panels[label] = {
                name: (
                    [0.0, *(float(a) for a in row["shift"])],
                    [row[metric], *(s[metric] for s in row["shift"].values())],
                )
                for name, row in shifted.items()
            }
        plots_panels.metric_panels(
            panels, out / "shift.png", "rotation (degrees)", title=f"{title}: rotated test set"
        )
    bars = {
        k: {n: r[k] for n, r in methods.items() if isinstance(r.get(k), float)} for k in BAR_METRICS
    }
    plots_panels.metric_bars(
        {k: v for k, v in bars.items() if v},
        out / "metrics.png",
        title=f"{title}: headline metrics",
        better={k: HEADLINE[k][0] for k in BAR_METRICS},
    )


def write_outputs(
    results: dict[str, Any],
    settings: dict[str, Any],
    arrays: dict[str, dict[str, torch.Tensor]],
    out: Path,
) -> None:
    """The plots, report.md and results.json; ``arrays``: method -> probabilities, and "labels"."""
    report = _report(results, settings)
    write_files(out, results, report, [lambda folder: _plots(results, arrays, folder)])
