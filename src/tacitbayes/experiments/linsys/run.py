"""``tacitbayes linsys``: the implicit bias of initialization in underdetermined linear systems.

Four studies (docs/methods.md §5; see :mod:`tacitbayes.experiments.linsys.studies`):
(1) depth-1 GD against its closed form y₀ + A⁺(b − Ay₀); (2) distance of the reached
solution to the min-ℓ₁ and min-ℓ₂ solutions across init scale and depth; (3) the
sparse-recovery phase transition; (4) whether a trained MLP's first layer ends at the
minimum-distance-to-init solution of its linearized problem. Writes results.json,
report.md and PNG plots into ``--out``. The studies run single-threaded: their tensors
are small, and thread hand-offs cost more than they save. The command line is wired in
:mod:`tacitbayes.experiments.linsys.cli`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from tacitbayes.devices import check_device
from tacitbayes.errors import InputError
from tacitbayes.experiments.linsys import studies
from tacitbayes.experiments.runtime import torch_threads, versions
from tacitbayes.io import check_output_dir, write_json, write_text

PLOTS = (
    "closed_form.png",
    "init_scale_diagonal_l1.png",
    "init_scale_diagonal_l2.png",
    "init_scale_deep_linear.png",
    "phase_transition.png",
    "first_layer.png",
)
_FULL = {"n": 20, "d": 60, "k": 4}
_QUICK = {"n": 10, "d": 30, "k": 2}


@dataclass
class LinsysSettings:
    """Everything that defines one ``linsys`` run; ``quick`` shrinks every grid (for tests)."""

    n: int | None = None  # equations (studies 1-2); default 20, quick 10
    d: int | None = None  # unknowns (studies 1-3); default 60, quick 30
    k: int | None = None  # nonzeros of the sparse signal (studies 2-3); default 4, quick 2
    trials: int | None = None  # problems per n/d in study 3; default 20, quick 4
    seed: int = 0
    quick: bool = False
    out: str | None = None
    progress: bool = True
    device: str = "cpu"  # study 4 trains its MLP there; studies 1-3 (small float64) use the CPU

    def sizes(self) -> dict[str, int]:
        """n, d, k and trials after defaults, checked."""
        base = _QUICK if self.quick else _FULL
        n, d, k = (getattr(self, key) or base[key] for key in ("n", "d", "k"))
        trials = self.trials or (4 if self.quick else 20)
        for name, value in (("n", n), ("d", d), ("k", k), ("trials", trials)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if n >= d:
            raise InputError(f"n must be smaller than d (an underdetermined system), got {n} ≥ {d}")
        if k > n:
            raise InputError(f"k (nonzeros) must be at most n = {n}, got {k}")
        return {"n": n, "d": d, "k": k, "trials": trials}

    def grids(self) -> dict[str, Any]:
        """The grids and budgets of the four studies (small ones with ``quick``)."""
        if self.quick:
            return {
                "n_inits": 2,
                "scales": [1e-2, 1e-1, 1.0, 10.0],
                "depths": [1, 2],
                "max_steps": 5_000,
                "ratios": [0.2, 0.4, 0.6],
                "pt_max_steps": 2_000,
                "widths": [32],
                "n_train": 32,
                "mlp_steps": 30,
            }
        return {
            "n_inits": 5,
            "scales": [10 ** (e / 2) for e in range(-8, 3)],
            "depths": [1, 2, 3, 4],
            "max_steps": 50_000,
            "ratios": [r / 20 for r in range(2, 13)],
            "pt_max_steps": 8_000,
            "widths": [64, 256, 1024],
            "n_train": 128,
            "mlp_steps": 300,
        }


FIXED = {
    "tol": 1e-6,  # relative residual at which GD stops (studies 2-3)
    "pt_depth": 2,
    "small_init": 1e-8,
    "large_init": 1.0,
    "mlp_depth": 1,
    "mlp_lr": 0.1,  # at width 64; the step is mlp_lr·64/width
}


def run_linsys(settings: LinsysSettings) -> dict[str, Any]:
    """Run the four studies, write results.json, report.md and the plots into ``out``."""
    size, grid = settings.sizes(), settings.grids()
    device = check_device(settings.device)
    out = check_output_dir(settings.out or f"runs/linsys-{time.strftime('%Y%m%d-%H%M%S')}")
    seed, progress = settings.seed, settings.progress
    n, d, k = size["n"], size["d"], size["k"]
    seconds: dict[str, float] = {}
    results: dict[str, Any] = {}
    with torch_threads(1):
        start = time.perf_counter()
        results["closed_form"] = studies.closed_form_study(n, d, grid["n_inits"], seed, out)
        seconds["closed_form"] = time.perf_counter() - start
        start = time.perf_counter()
        results["init_scale"] = studies.init_scale_study(
            n, d, k, grid["scales"], grid["depths"], grid["max_steps"], FIXED["tol"], seed, out, progress
        )  # fmt: skip
        seconds["init_scale"] = time.perf_counter() - start
        start = time.perf_counter()
        results["phase_transition"] = studies.phase_transition_study(
            d, k, grid["ratios"], size["trials"], FIXED["small_init"], FIXED["large_init"],
            FIXED["pt_depth"], grid["pt_max_steps"], FIXED["tol"], seed, out, progress,
        )  # fmt: skip
        seconds["phase_transition"] = time.perf_counter() - start
        start = time.perf_counter()
        results["first_layer"] = studies.first_layer_study(
            grid["widths"], grid["n_train"], grid["mlp_steps"], FIXED["mlp_lr"],
            FIXED["mlp_depth"], seed, out, progress, device,
        )  # fmt: skip
        seconds["first_layer"] = time.perf_counter() - start
    results["seconds"] = seconds
    results["device"] = str(device)
    results["settings"] = {**asdict(settings), **size, **grid, **FIXED}
    results["versions"] = versions()
    results["plots"] = list(PLOTS)
    write_text(out / "report.md", _report(results))
    write_json(out / "results.json", results)
    results["out"] = str(out)
    return results


def _sci(x: float) -> str:
    return f"{x:.1e}"


def table_blocks(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The results as (title, header, rows) blocks, shared by the terminal and report.md."""
    cf = results["closed_form"]
    blocks = [
        (
            f"(1) depth 1 vs y0 + A⁺(b − Ay0), A {cf['n']}×{cf['d']}: relative error",
            ["y0", "rel. error", "steps"],
            [
                ["0" if i == 0 else f"random #{i}", _sci(e), str(s)]
                for i, (e, s) in enumerate(zip(cf["rel_errors"], cf["steps"], strict=True))
            ]
            + [["0 vs Aᵀ(AAᵀ)⁻¹b", _sci(cf["zero_init_vs_explicit"]), "-"]],
        )
    ]
    st = results["init_scale"]
    scales = st["scales"]
    header = ["model", "depth", "to"] + [f"α={a:.0e}" for a in scales]
    rows = []
    for model, by_depth in st["models"].items():
        for depth, row in by_depth.items():
            for key, name in (("to_min_l1", "min-ℓ1"), ("to_min_l2", "min-ℓ2")):
                cells = [
                    _sci(v) + ("" if c else "*")
                    for v, c in zip(row[key], row["converged"], strict=True)
                ]
                rows.append([model, depth, name, *cells])
    blocks.append(
        (
            f"(2) relative distance of the GD solution, A {st['n']}×{st['d']}, {st['k']}-sparse "
            f"signal (* = not converged in {st['max_steps']} steps)",
            header,
            rows,
        )
    )
    pt = results["phase_transition"]
    names = list(pt["success"])
    blocks.append(
        (
            f"(3) success rate (rel. error < {pt['threshold']:g}), d = {pt['d']}, k = {pt['k']}, "
            f"{pt['trials']} trials; diagonal depth {pt['depth']}, α = {pt['small_init']:g} / "
            f"{pt['large_init']:g}",
            ["n/d", *names],
            [
                [f"{r:.2f}", *(f"{pt['success'][m][i]:.2f}" for m in names)]
                for i, r in enumerate(pt["ratios"])
            ],
        )
    )
    fl = results["first_layer"]
    cols = ["width", "dw_norm", "dw_star_norm", "ratio", "cosine", "chance_cosine", "relative_change", "train_loss_final"]  # fmt: skip
    blocks.append(
        (
            f"(4) MLP first layer, {fl['n_train']} digits, {fl['steps']} full-batch GD steps: "
            "ΔW vs ΔW* = J⁺JΔW",
            cols,
            [[str(r["width"]), *(f"{r[c]:.4f}" for c in cols[1:])] for r in fl["rows"]],
        )
    )
    return blocks


def _fixed_width(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    return [lines[0], "-" * len(lines[0]), *lines[1:]]


def format_table(results: dict[str, Any]) -> str:
    """The results as fixed-width text tables for the terminal."""
    parts = []
    for title, header, rows in table_blocks(results):
        parts += [title, *_fixed_width(header, rows), ""]
    return "\n".join(parts).rstrip()


def _report(results: dict[str, Any]) -> str:
    lines = ["# tacitbayes linsys: the implicit bias of initialization", ""]
    for title, header, rows in table_blocks(results):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows] + [""]
    lines += [
        "## Definitions",
        "",
        "- GD on ½‖Ay − b‖² with step lr/C_t, C_t a bound on the Hessian norm; stops at "
        "‖Ay − b‖ ≤ tol·‖b‖. Diagonal: y = u^L − v^L, u = v = α at init. Deep linear: "
        "y = W_L⋯W_2 w_1, d×d factors, w_1 = αξ/√d, W_k = α·(Haar orthogonal).",
        "- Study 2 plots a point when the final relative residual is ≤ 1e-3 (the table marks "
        "with * every run that did not reach tol).",
        "- Study 3 counts a trial as a success when ‖ŷ − y*‖/‖y*‖ < 10⁻² (GD stopped at "
        "pt_max_steps or tol); where the large-init and min-norm curves are both 0, the plot "
        "draws one over the other.",
        "- Study 4: ΔW = W₁(T) − W₁(0) of the first Linear layer after full-batch GD on the "
        "MSE to one-hot labels (all layers trained, step mlp_lr·64/width). J is the Jacobian "
        "of the N·C training outputs w.r.t. W₁ at init (other layers frozen at init); "
        "ΔW* = J⁺JΔW is the minimum-Frobenius-norm first-layer change with the same first-order "
        "change of the training outputs (the projection of ΔW on the row space of J, so "
        "cos(ΔW, ΔW*) = ‖ΔW*‖/‖ΔW‖). chance_cosine = √(rank J / #weights) is that cosine for "
        "a random direction.",
        "",
        "## Plots",
        "",
        *(f"![{p}]({p})" for p in PLOTS),
        "",
        "## Settings",
        "",
        "```",
        *(f"{key}: {value}" for key, value in results["settings"].items()),
        "```",
        "",
        "## Seconds",
        "",
        *(f"- {key}: {value:.1f}" for key, value in results["seconds"].items()),
        "",
        "## Versions",
        "",
        *(f"- {key}: {value}" for key, value in results["versions"].items()),
        "",
    ]
    return "\n".join(lines)
