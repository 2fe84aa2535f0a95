"""Command-line wiring of `tacitbayes bound`."""

from __future__ import annotations

import argparse

from tacitbayes.experiments.cli_types import (
    add_run_options,
    comma_list,
    non_negative_floats,
    positive_float,
    positive_floats,
    positive_int,
    report_run,
    settings_from_args,
)


def _classes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in comma_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected class numbers like 0,1,2, got {text!r}"
        ) from None
    if not values or len(set(values)) != len(values) or not all(0 <= v <= 9 for v in values):
        raise argparse.ArgumentTypeError(f"expected distinct classes in 0..9, got {text!r}")
    return values


def _probability(text: str) -> float:
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {text}")
    return value


def add_subparser(sub: argparse._SubParsersAction) -> None:
    """Add the `bound` command to the sub-command parsers."""
    p = sub.add_parser(
        "bound",
        help="PAC-Bayes bounds on a target task: learned Kronecker prior vs isotropic priors",
        description="Train on the source classes, turn the Laplace posterior into a prior "
        "N(w_src, (β F_src + α δ I)⁻¹), train on the target classes and bound the 0-1 risk of "
        "the target Laplace posterior (McAllester, Catoni, kl-inverse), against the isotropic "
        "priors N(0, λ⁻¹I) and N(w_src, λ⁻¹I).",
    )
    p.add_argument("--dataset", default="digits", help="digits, fashion-mnist or mnist")
    p.add_argument("--model", default="mlp", help="mlp or lenet")
    p.add_argument("--width", type=positive_int, help="mlp width (digits 64, else 256)")
    p.add_argument("--depth", type=positive_int, default=2, help="mlp hidden layers")
    p.add_argument("--activation", default="relu", help="hidden-layer activation")
    p.add_argument(
        "--source-classes",
        type=_classes,
        default=(0, 1, 2, 3, 4),
        help="classes of the source task",
    )
    p.add_argument(
        "--target-classes",
        type=_classes,
        default=(5, 6, 7, 8, 9),
        help="classes of the target task",
    )
    p.add_argument(
        "--epochs", type=positive_int, help="epochs per MAP training (digits 40, else 6)"
    )
    p.add_argument("--batch-size", type=positive_int, default=128, help="training batch size")
    p.add_argument("--lr", type=positive_float, help="Adam learning rate (digits 3e-3, else 1e-3)")
    p.add_argument("--weight-decay", type=positive_float, default=1e-4, help="MAP weight decay")
    p.add_argument(
        "--delta", type=_probability, default=0.05, help="the bounds hold with probability 1 − δ"
    )
    p.add_argument(
        "--kind",
        default="kl_inverse",
        choices=("kl_inverse", "mcallester", "catoni"),
        help="bound that picks the hyper-parameters",
    )
    p.add_argument(
        "--mc-samples",
        type=positive_int,
        help="Monte Carlo draws per target example (mlp) or whole-network samples (lenet); 10",
    )
    p.add_argument("--selection-size", type=positive_int, help="examples for selection (4000)")
    p.add_argument(
        "--rounds",
        type=positive_int,
        help="rounds of (train the target MAP under the last choice, select) per prior family (3)",
    )
    p.add_argument("--alphas", type=positive_floats, help="grid of α (default: α δ on the λ grid)")
    p.add_argument(
        "--betas",
        type=non_negative_floats,
        help="grid of β (0,0.01,0.1,1,10); each β > 0 is tried on every layer and on the "
        "hidden layers alone",
    )
    p.add_argument(
        "--taus", type=positive_floats, help="grid of posterior temperatures τ (2 … 0.1)"
    )
    p.add_argument(
        "--lambdas", type=positive_floats, help="grid of isotropic precisions λ (10^-0.5 … 10^3.5)"
    )
    p.add_argument("--n-train", type=positive_int, help="training subset before the class split")
    add_run_options(p, "bound")
    p.set_defaults(run=_run_bound)


def _run_bound(args: argparse.Namespace) -> int:
    from tacitbayes.experiments.bound.report import format_table
    from tacitbayes.experiments.bound.run import BoundSettings, run_bound

    results = run_bound(settings_from_args(BoundSettings, args))
    headline = (
        f"{results['dataset']} / {results['model']} ({results['n_params']:,} parameters): "
        f"classes {results['source_classes']} → {results['target_classes']}, "
        f"{results['n_target']} target examples, δ = {results['delta']}"
    )
    return report_run(results, headline, format_table(results), ["bounds.png"])
