"""The ``tacitbayes`` command line: one sub-command per experiment.

Bad input never shows a traceback: a one-line message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tacitbayes.errors import TacitBayesError
from tacitbayes.experiments.cli_types import OneLineErrorParser

# Each module defines add_subparser(sub), which adds its command and sets `run`.
COMMANDS = (
    "tacitbayes.experiments.compare_cli",
    "tacitbayes.experiments.linsys",
    "tacitbayes.experiments.eos_cli",
    "tacitbayes.experiments.bound_cli",
    "tacitbayes.experiments.continual_cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command."""
    parser = OneLineErrorParser(
        prog="tacitbayes",
        description="Bayesian deep learning that keeps what plain training gets right.",
    )
    from tacitbayes import __version__

    parser.add_argument("--version", action="version", version=f"tacitbayes {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="<command>", parser_class=OneLineErrorParser
    )
    for module in COMMANDS:
        importlib.import_module(module).add_subparser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tacitbayes`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors (already printed)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except TacitBayesError as exc:
        print(f"tacitbayes: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tacitbayes: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
