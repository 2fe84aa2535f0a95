"""The ``tacitbayes`` command line: one sub-command per experiment.

Bad input never shows a traceback: a one-line message on stderr and exit status 2 (a
failure of the user's input or environment: bad values, unusable paths or data, out of
memory, a NaN loss); a bug in tacitbayes prints one line "internal error" and exits 1.
``--debug`` (before or after the sub-command) shows the traceback instead. Warnings
print as one line each, "tacitbayes: warning: ..." (with ``--debug``: Python's format,
with the file and line).

Parsing imports no torch: ``--help``, ``--version`` and usage errors answer at once; each
sub-command's ``run`` imports what it needs. Every option's help shows its default.

Under ``torchrun`` (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set) every rank runs the
same command: the process group is joined after parsing (gloo; nccl for a CUDA device) and
destroyed at exit; rank 0 alone prints, shows progress bars and writes files (the
writers in :mod:`tacitbayes.io` are gated), and the default output folder is rank 0's.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence

from tacitbayes import __version__
from tacitbayes.cli_errors import describe, one_line
from tacitbayes.experiments.cli_types import HelpFormatter, OneLineErrorParser

# Each module defines add_subparser(sub), which adds its command and sets `run`; none of
# them imports torch outside `run`.
COMMANDS = (
    "tacitbayes.experiments.compare.cli",
    "tacitbayes.experiments.linsys.cli",
    "tacitbayes.experiments.eos.cli",
    "tacitbayes.experiments.bound.cli",
    "tacitbayes.experiments.continual.cli",
    "tacitbayes.experiments.generative.cli",
)
DEBUG_HELP = "show the traceback of a failure instead of a one-line message"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command (one formatter for all: defaults shown)."""
    parser = OneLineErrorParser(
        prog="tacitbayes",
        description="Bayesian deep learning that keeps what plain training gets right.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tacitbayes {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(
        dest="command",
        metavar="<command>",
        parser_class=functools.partial(OneLineErrorParser, formatter_class=HelpFormatter),
    )
    for module in COMMANDS:
        importlib.import_module(module).add_subparser(sub)
    for command in sub.choices.values():  # also after the sub-command; never resets it
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
    return parser


@contextlib.contextmanager
def _one_writer(args: argparse.Namespace) -> Iterator[None]:
    """Under a process group: rank 0's output folder everywhere; other ranks silent (no output,
    warnings or bars)."""
    from tacitbayes import distributed as D

    if not D.is_distributed():
        yield
        return
    if hasattr(args, "out"):
        default = f"runs/{args.command}-{time.strftime('%Y%m%d-%H%M%S')}"
        args.out = D.broadcast_object(args.out or default)
    if D.is_main():
        yield
        return
    if hasattr(args, "no_progress"):
        args.no_progress = True
    with (
        open(os.devnull, "w") as null,
        contextlib.redirect_stdout(null),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # rank 0 warns once for all (errors still print)
        yield


def _print_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` of the command line: one line, no source location."""
    print(f"tacitbayes: warning: {one_line(message)}", file=sys.stderr)


@contextlib.contextmanager
def _one_line_warnings(debug: bool) -> Iterator[None]:
    """Every warning of the command as one line on stderr (Python's format under --debug)."""
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _print_warning
        yield


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
    from tacitbayes import distributed as D  # torch: only once a command runs

    try:
        with (
            _one_line_warnings(args.debug),
            D.process_group_from_env(getattr(args, "device", "cpu")) as device,
        ):
            if hasattr(args, "device"):
                args.device = device
            with _one_writer(args):
                return int(args.run(args))
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("tacitbayes: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        code, message = describe(exc)
        several = D.launched() and os.environ["WORLD_SIZE"] != "1"
        where = f"rank {os.environ['RANK']}: " if several else ""
        kind, _, text = message.partition(": ")
        print(f"tacitbayes: {kind}: {where}{text}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
