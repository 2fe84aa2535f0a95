"""Command-line wiring of `tacitbayes eos`."""

from __future__ import annotations

import argparse

from tacitbayes.experiments.cli_types import (
    add_run_options,
    positive_float,
    positive_floats,
    positive_int,
    positive_ints,
    report_run,
    settings_from_args,
)


def _fraction(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def add_subparser(sub: argparse._SubParsersAction) -> None:
    """Add the `eos` command to the sub-command parsers."""
    p = sub.add_parser(
        "eos",
        help="sharpness of full-batch GD, variational GD and IVON at the edge of stability",
        description="Train from one initialization with full-batch GD, variational GD over a "
        "grid of noise levels σ and sample counts N_s, and IVON, on MSE loss; track the top "
        "Hessian eigenvalue and compare it with 2/ρ and the variational threshold h_crit.",
    )
    p.add_argument("--dataset", default="digits", help="digits, fashion-mnist or mnist")
    p.add_argument("--model", default="mlp", help="mlp (tanh), lenet, resnet (GroupNorm) or vit")
    p.add_argument(
        "--width",
        type=positive_int,
        help="mlp width / vit dim (default 128) / resnet first-stage channels (default 8)",
    )
    p.add_argument(
        "--depth",
        type=positive_int,
        help="mlp hidden layers / vit blocks / resnet stages of one block (default 2)",
    )
    p.add_argument("--activation", default="tanh", help="mlp/lenet/resnet activation")
    p.add_argument("--n-train", type=positive_int, help="training subset (fashion-mnist: 2000)")
    p.add_argument("--lr", type=positive_float, help="step size ρ (digits 0.08, else 0.04)")
    p.add_argument("--steps", type=positive_int, help="full-batch steps per run (default 1500)")
    p.add_argument("--record-every", type=positive_int, help="steps between sharpness records")
    p.add_argument("--sigmas", type=positive_floats, help="VGD noise levels, comma-separated")
    p.add_argument(
        "--n-samples",
        type=positive_ints,
        default=(1, 4),
        help="VGD samples per step, comma-separated",
    )
    p.add_argument("--no-ivon", action="store_true", help="skip the IVON run")
    p.add_argument("--ivon-lr", type=positive_float, help="IVON learning rate (default ρ)")
    p.add_argument(
        "--ivon-hess-init", type=positive_float, default=1.0, help="IVON's initial Hessian"
    )
    p.add_argument(
        "--tail", type=_fraction, default=0.4, help="fraction of the steps averaged at the end"
    )
    add_run_options(p, "eos")
    p.set_defaults(run=_run_eos)


def _run_eos(args: argparse.Namespace) -> int:
    from tacitbayes.experiments.eos.report import format_table
    from tacitbayes.experiments.eos.run import EosSettings, run_eos

    results = run_eos(settings_from_args(EosSettings, args, ivon=not args.no_ivon))
    headline = (
        f"{results['dataset']} / {results['model']} ({results['n_params']:,} parameters), "
        f"ρ = {results['lr']:g}, 2/ρ = {results['gd_threshold']:.3g}"
    )
    return report_run(results, headline, format_table(results), ["sharpness.png", "loss.png"])
