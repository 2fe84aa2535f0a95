"""Command-line wiring of `tacitbayes linsys` (torch is imported by the run only)."""

from __future__ import annotations

import argparse

from tacitbayes.experiments.cli_types import (
    add_device_option,
    positive_int,
    report_run,
    seed,
    settings_from_args,
)


def add_subparser(sub: argparse._SubParsersAction) -> None:
    """Add the ``linsys`` sub-command to the ``tacitbayes`` parser's subparsers."""
    p = sub.add_parser(
        "linsys",
        help="implicit bias of initialization in underdetermined linear systems",
        description="Gradient descent on underdetermined systems Ay = b through linear, "
        "diagonal and deep linear parametrizations: the depth-1 closed form, distance to the "
        "min-ℓ1/min-ℓ2 solutions across init scale and depth, the sparse-recovery phase "
        "transition, and the first layer of a trained MLP.",
    )
    p.add_argument("--n", type=positive_int, help="equations (default 20; --quick 10)")
    p.add_argument("--d", type=positive_int, help="unknowns (default 60; --quick 30)")
    p.add_argument("--k", type=positive_int, help="nonzeros of the sparse signal (default 4)")
    p.add_argument("--trials", type=positive_int, help="problems per n/d in the phase transition")
    p.add_argument("--seed", type=seed, default=0, help="seed of the problems and initializations")
    p.add_argument("--quick", action="store_true", help="small grids (seconds, for tests)")
    p.add_argument("--out", help="output directory (default runs/linsys-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_option(p, "study 4 trains its MLP there (studies 1-3 run on the CPU)")
    p.set_defaults(run=_run_linsys)


def _run_linsys(args: argparse.Namespace) -> int:
    from tacitbayes.experiments.linsys.run import PLOTS, LinsysSettings, format_table, run_linsys

    results = run_linsys(settings_from_args(LinsysSettings, args))
    headline = "the implicit bias of initialization in underdetermined linear systems"
    return report_run(results, headline, format_table(results), PLOTS)
