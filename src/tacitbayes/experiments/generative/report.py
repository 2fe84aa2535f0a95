"""What ``tacitbayes generative`` writes: report.md (verdicts, table, images), results.json and two image grids.

* ``reconstructions.png``: 8 test and 8 OOD inputs; the projected posterior's mean
  reconstruction; the pixel-wise standard deviation of the projected and of the diagonal
  Laplace reconstructions (both on one grey scale);
* ``generated.png``: for 8 codes z ~ N(0, I), the MAP decoder's image and 4 projected
  posterior samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tacitbayes.experiments.generative.grids import image_grid
from tacitbayes.experiments.reporting import cell, footer, markdown_table, text_table
from tacitbayes.experiments.reporting import write_outputs as write_files

__all__ = ["PLOTS", "STD_NEAR_ZERO", "format_table", "verdict", "write_outputs"]

PLOTS = ("reconstructions.png", "generated.png")
STD_NEAR_ZERO = 1e-3  # mean pixel std (pixels in [0, 1]) below which samples are MAP's
GOOD_AUROC = 0.9
POSTERIORS = {
    "laplace_diag": "diagonal Laplace, N(θ*, diag(h + δ)⁻¹)",
    "projected": "loss-projected posterior, N(θ*, α⁻¹(I − G⁺G))",
}
COLUMNS = (
    ("OOD AUROC", "ood_auroc", "{:.4f}"),
    ("Spearman", "spearman", "{:.4f}"),
    ("Spearman (MAP)", "spearman_map_error", "{:.4f}"),
    ("recon. err.", "reconstruction_error", "{:.3f}"),
    ("OOD recon. err.", "ood_reconstruction_error", "{:.3f}"),
    ("pixel std", "mean_pixel_std", "{:.2e}"),
    ("OOD pixel std", "ood_mean_pixel_std", "{:.2e}"),
    ("NLL bound", "nll_bound", "{:.3f}"),
    ("prior prec.", "prior_precision", "{:.4g}"),
    ("fit s", "fit_seconds", "{:.1f}"),
    ("predict s", "predict_seconds", "{:.2f}"),
)


TERMINAL = ("ood_auroc", "spearman", "spearman_map_error", "reconstruction_error", "mean_pixel_std",
            "ood_mean_pixel_std", "prior_precision", "fit_seconds")  # fmt: skip


def format_table(results: dict[str, Any]) -> str:
    """The per-method results (the main columns) as a fixed-width text table for the terminal."""
    columns = [c for c in COLUMNS if c[1] in TERMINAL]
    return text_table(results["methods"], columns, first_width=14, width=16)


def _rho(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def verdict(name: str, row: dict[str, Any], elbo: dict[str, Any]) -> str:
    """One paragraph: does the method's score beat the ELBO's AUROC, reach 0.9, and vary at all."""
    auroc, std, elbo_auroc = row["ood_auroc"], row["mean_pixel_std"], elbo["ood_auroc"]
    beats = "beats" if auroc > elbo_auroc else "does not beat"
    good = "reaches" if auroc >= GOOD_AUROC else "stays below"
    text = (
        f"**{name}** ({POSTERIORS.get(name, name)}, prior precision "
        f"{cell(row.get('prior_precision'), '{:.4g}')} by the evidence, "
        f"{row['n_params']:,} parameters, fitted in {row['fit_seconds']:.1f} s): OOD AUROC "
        f"{auroc:.4f}, which {beats} the ELBO's {elbo_auroc:.4f} and {good} {GOOD_AUROC}. "
    )
    if std < STD_NEAR_ZERO:
        text += (
            f"Its reconstructions barely vary (mean pixel std {std:.2e} on the test images, "
            f"below {STD_NEAR_ZERO:g}): it predicts like MAP, and its score carries almost no "
            "uncertainty. "
        )
    else:
        text += (
            f"Its reconstructions vary (mean pixel std {std:.2e} on the test images, "
            f"{row['ood_mean_pixel_std']:.2e} on the OOD images): it does not predict like MAP; "
            f"its mean reconstruction's error is {row['reconstruction_error']:.3f} against the "
            f"MAP's {elbo['reconstruction_error']:.3f}. "
        )
    own, on_map = (_rho(row.get(k)) for k in ("spearman", "spearman_map_error"))
    return text + (
        f"Spearman correlation of its score with its own reconstruction error: {own}; "
        f"with the MAP's: {on_map}."
    )


def _report(results: dict[str, Any]) -> str:
    methods, s = results["methods"], results["settings"]
    elbo = methods["elbo"]
    info = methods["projected"].get("solver_info", {})
    trained = (
        f"loaded from {s['checkpoint']}"
        if s["checkpoint"]
        else f"trained for {s['epochs']} epochs (Adam, lr {s['lr']:g}, batch {s['batch_size']})"
    )
    lines = [
        f"# tacitbayes generative: {results['dataset']} / {results['model']}",
        "",
        f"A {results['model']} ({results['n_params']:,} parameters, "
        f"{', '.join(f'{k} {v}' for k, v in results['model_options'].items())}) {trained} on "
        f"{results['n_train']:,} training images by the mean negative ELBO. Posteriors over "
        f"{'all its parameters' if results['params'] == 'all' else 'its decoder'}, fitted on "
        f"every training image; evaluated on {results['n_test']:,} test and "
        f"{results['n_ood']:,} OOD ({results['ood_dataset']}) images with "
        f"{results['n_samples']} samples of the {results['predictive']} predictive. "
        f"Projected solver: {info.get('solver')}, null-space residual "
        f"{cell(info.get('max_residual'), '{:.2e}')}, {info.get('iterations')} iteration{'' if info.get('iterations') == 1 else 's'}.",
        "",
        f"Scores (higher = more OOD): `elbo`, the MAP VAE's negative ELBO at z = μ; "
        "`laplace_diag` and `projected`, Σ over pixels of the variance of the posterior's "
        "reconstructions. Spearman: the score against the per-image reconstruction error "
        "Σ_pixels (mean reconstruction − x)² on the test images, the method's own and the "
        "MAP VAE's (column 'Spearman (MAP)'). The NLL bound (mean test "
        f"negative ELBO at z = μ, {results['nll_bound']:.3f} nats) is the MAP VAE's for every "
        "row: the posteriors change the predictive, not the model's bound.",
        "",
        "## Verdicts",
        "",
        f"**elbo** (the baseline): OOD AUROC {elbo['ood_auroc']:.4f}; Spearman correlation "
        f"with the MAP's reconstruction error {_rho(elbo['spearman'])}.",
    ]
    for name in POSTERIORS:
        lines += ["", verdict(name, methods[name], elbo)]
    rows = [[name, *(cell(row.get(k), f) for _, k, f in COLUMNS)] for name, row in methods.items()]
    lines += ["", "## Results", "", *markdown_table(["method", *(t for t, _, _ in COLUMNS)], rows)]
    lines += [
        "",
        "## Images",
        "",
        "![reconstructions](reconstructions.png)",
        "",
        "Inputs (test | OOD), the projected posterior's mean reconstruction, and the pixel-wise "
        "standard deviation of the projected and diagonal Laplace reconstructions (one grey "
        "scale for both).",
        "",
        "![generated](generated.png)",
        "",
        "Images of 8 codes z ~ N(0, I): the MAP decoder, then 4 projected posterior samples.",
    ]
    return "\n".join(lines + footer(s, results["versions"]))


def _plots(results: dict[str, Any], images: dict[str, Any]) -> list[Any]:
    """The two grids as functions of the output folder."""
    n_test = images["n_test"]
    top = max(float(images["std_projected"].max()), float(images["std_laplace"].max()), 1e-12)
    unit = (0.0, 1.0)
    ood = results["ood_dataset"]
    recon_rows = [
        ("inputs", images["inputs"], unit),
        ("mean (projected)", images["mean"], unit),
        ("std (projected)", images["std_projected"], (0.0, top)),
        ("std (diag. Laplace)", images["std_laplace"], (0.0, top)),
    ]
    gen_rows = [("MAP decoder", images["generated_map"], unit)]
    gen_rows += [(f"sample {i + 1}", x, unit) for i, x in enumerate(images["generated_samples"])]
    title = f"{results['dataset']}: test | OOD ({ood}); std maps on 0 … {top:.3g}"
    return [
        lambda out: image_grid(recon_rows, out / PLOTS[0], title, split=n_test),
        lambda out: image_grid(
            gen_rows, out / PLOTS[1], f"{results['dataset']}: generated, z ~ N(0, I)"
        ),
    ]


def write_outputs(results: dict[str, Any], images: dict[str, Any], out: Path) -> None:
    """reconstructions.png, generated.png, report.md, then results.json (its presence marks a finished run)."""
    write_files(out, results, _report(results), _plots(results, images))
