"""Command-line wiring of `tacitbayes continual`."""

from __future__ import annotations

import argparse

from tacitbayes.experiments.cli_types import (
    add_run_options,
    comma_list,
    positive_float,
    positive_floats,
    positive_int,
    report_run,
    settings_from_args,
)


def _groups(text: str) -> tuple[tuple[int, ...], ...]:
    """'0,1;2,3' -> ((0, 1), (2, 3)): tasks separated by ';', classes by ','."""
    groups = []
    for part in text.split(";"):
        try:
            groups.append(tuple(int(c) for c in comma_list(part)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected integer class labels like '0,1;2,3', got {text!r}"
            ) from None
    return tuple(groups)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in comma_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def add_subparser(sub: argparse._SubParsersAction) -> None:
    """Add the `continual` command to the sub-command parsers."""
    p = sub.add_parser(
        "continual",
        help="a task sequence with posterior-as-prior: fine-tuning, diagonal and Kronecker priors",
        description="Train one shared network on a sequence of tasks. After each task the "
        "Laplace posterior (diagonal GGN or KFAC) becomes the prior of the next; compare with "
        "plain fine-tuning. Reports the accuracy matrix, average accuracy, forgetting and "
        "backward transfer.",
    )
    p.add_argument("--dataset", default="digits", help="digits or fashion-mnist")
    p.add_argument("--sequence", default="split", help="split or rotated")
    p.add_argument(
        "--scenario",
        default="task",
        help="task (task-incremental, logits masked to the task's classes) or class "
        "(class-incremental: one softmax over all outputs)",
    )
    p.add_argument("--model", default="mlp", help="mlp (the only model for now)")
    p.add_argument("--width", type=positive_int, help="hidden width (digits 128, fashion 256)")
    p.add_argument("--depth", type=positive_int, default=2, help="hidden layers")
    p.add_argument("--activation", default="relu", help="hidden-layer activation")
    p.add_argument(
        "--methods",
        type=comma_list,
        default=("finetune", "diagonal", "kronecker"),
        help="comma-separated: finetune, diagonal, kronecker",
    )
    p.add_argument("--groups", type=_groups, help="split classes, e.g. '0,1;2,3' (default 5×2)")
    p.add_argument("--angles", type=_floats, help="rotated: angles in degrees (0,30,60,90,120)")
    p.add_argument("--epochs", type=positive_int, help="epochs per task (digits 20, fashion 3)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (digits 32, fashion 128)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    p.add_argument(
        "--strengths",
        type=positive_floats,
        default=(1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6),
        help="grid of prior strengths β, chosen on validation",
    )
    p.add_argument(
        "--delta",
        type=positive_float,
        default=1.0,
        help="isotropic prior precision δ of every method (weight decay δ/N_t)",
    )
    p.add_argument(
        "--diagonal-curvature",
        default="exact",
        help="exact (GGN diagonal) or kfac (diagonal of KFAC) for the diagonal prior",
    )
    p.add_argument("--n-train", type=positive_int, help="training subset before the split")
    add_run_options(p, "continual", quick=False)
    p.set_defaults(run=_run_continual)


def _run_continual(args: argparse.Namespace) -> int:
    from tacitbayes.experiments.continual.report import format_table
    from tacitbayes.experiments.continual.run import ContinualSettings, run_continual

    results = run_continual(
        settings_from_args(ContinualSettings, args, methods=tuple(args.methods))
    )
    scenario = f"{results['scenario']}-incremental"
    if results["sequence"] == "rotated":
        scenario = "domain-incremental (every task has every class)"
    headline = (
        f"{results['sequence']} {results['dataset']}, {scenario}, {len(results['tasks'])} tasks, "
        f"{results['model']} ({results['n_params']:,} parameters)"
    )
    files = ["accuracy_<method>.png", "seen_average.png"]
    return report_run(results, headline, format_table(results), files)
