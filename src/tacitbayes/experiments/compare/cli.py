"""Command-line wiring of `tacitbayes compare` (torch is imported by the run only)."""

from __future__ import annotations

import argparse

from tacitbayes.experiments.cli_types import (
    add_device_option,
    positive_float,
    positive_int,
    real,
    report_run,
    seed,
    settings_from_args,
)
from tacitbayes.experiments.compare.catalog import methods_epilog


def add_subparser(sub: argparse._SubParsersAction) -> None:
    """Add the `compare` command to the sub-command parsers."""
    p = sub.add_parser(
        "compare",
        help="train MAP, fit each method, evaluate in distribution, under shift and OOD",
        description="Train a MAP network (or load --checkpoint), fit each method on it, and "
        "evaluate accuracy, NLL, ECE, Brier, rotation shift and OOD AUROC.",
        epilog=methods_epilog(),
    )
    p.add_argument("--dataset", default="digits", help="digits, fashion-mnist or mnist")
    p.add_argument("--model", default="mlp", help="mlp, lenet, resnet or vit")
    p.add_argument(
        "--methods",
        default="all",
        help="comma-separated method names (listed below), or all: every method",
    )
    p.add_argument("--epochs", type=positive_int, help="MAP training epochs (digits: 30, else 10)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="MAP training batch size")
    p.add_argument("--optimizer", default="adam", help="adam or sgd")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="MAP learning rate")
    p.add_argument("--weight-decay", type=real, default=1e-4, help="MAP weight decay")
    p.add_argument(
        "--seed", type=seed, default=0, help="seed of data splits, initialization, samples"
    )
    p.add_argument(
        "--n-samples", type=positive_int, default=32, help="posterior samples per prediction"
    )
    p.add_argument("--n-train", type=positive_int, help="train on a seeded subset of this size")
    p.add_argument("--width", type=positive_int, help="mlp hidden width")
    p.add_argument("--depth", type=positive_int, help="mlp hidden layers / vit blocks")
    p.add_argument("--activation", help="relu, tanh, gelu or silu")
    p.add_argument("--data-dir", help="directory with the data set's IDX files")
    p.add_argument("--ood-data-dir", help="directory with the OOD data set's files")
    p.add_argument("--checkpoint", help="load trained MAP weights instead of training")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: MAP training from OUT/map.pt, IBVI and IVON "
        "training from OUT/ibvi.pt and OUT/ivon.pt where present",
    )
    p.add_argument("--out", help="output directory (default runs/compare-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--threads", type=positive_int, help="torch CPU threads (default: torch's own setting)"
    )
    add_device_option(p)
    p.set_defaults(run=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from tacitbayes.experiments.compare.report import PLOTS, format_table, search_notes
    from tacitbayes.experiments.compare.run import CompareSettings, run_compare

    options = {k: getattr(args, k) for k in ("width", "depth", "activation")}
    settings = settings_from_args(
        CompareSettings,
        args,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        model_options={k: v for k, v in options.items() if v is not None},
    )
    results = run_compare(settings)
    headline = f"{results['dataset']} / {results['model']} ({results['n_params']:,} parameters)"
    table = "\n".join([format_table(results), *search_notes(results)])
    return report_run(results, headline, table, PLOTS)
