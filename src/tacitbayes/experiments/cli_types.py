"""Argument-parsing pieces shared by the sub-commands.

Nothing here imports torch (nor do the ``*_cli`` modules outside their ``run`` functions),
so ``tacitbayes --help``, every ``tacitbayes <command> --help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Sequence
from typing import Any, NoReturn

from tacitbayes.device_names import check_device_name
from tacitbayes.errors import InputError

MAX_SEED = 2**32 - 1
MAX_FLOAT = 1e38  # below float32's largest number (3.4e38): a larger setting overflows


class OneLineErrorParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line on stderr with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default; indented description/epilog lines stay as written.

    A default of None (the value depends on other settings, which the help text says) or
    False (a flag) is not printed; a tuple is printed as it is typed, ``1,4``. In a
    description or epilog, a paragraph (blank-line separated) with an indented line is kept
    line by line (RawDescriptionHelpFormatter's way, for tables); the others are wrapped.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for block in text.strip("\n").split("\n\n"):
            lines = block.splitlines()
            if any(line.startswith(" ") for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(super()._fill_text(block, width, indent))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)

    def _expand_help(self, action: argparse.Action) -> str:
        if isinstance(action.default, (tuple, list)):
            shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in action.default)
            action = copy.copy(action)
            action.default = shown
        return super()._expand_help(action)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seed(text: str) -> int:
    """argparse type: a random seed, an integer in [0, 2³²)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must lie in 0..{MAX_SEED}, got {value}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_float(text: str) -> float:
    """argparse type: a number in (0, 1e38] (the networks compute in float32, whose largest is 3.4e38)."""
    value = _number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    if value > MAX_FLOAT:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_FLOAT:g} (the networks compute in float32), got {text}"
        )
    return value


def real(text: str) -> float:
    """argparse type: a finite number of magnitude at most 1e38 (float32 arithmetic)."""
    value = _number(text)
    if not abs(value) <= MAX_FLOAT:
        raise argparse.ArgumentTypeError(
            f"must be a finite number of magnitude at most {MAX_FLOAT:g}, got {text}"
        )
    return value


def comma_list(text: str) -> tuple[str, ...]:
    """argparse type: 'a,b, c' -> ('a', 'b', 'c')."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def positive_floats(text: str) -> tuple[float, ...]:
    """argparse type: '0.1,1' -> (0.1, 1.0), at least one value, each finite and > 0."""
    values = tuple(positive_float(v) for v in comma_list(text))
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def non_negative_floats(text: str) -> tuple[float, ...]:
    """argparse type: '0,0.1,1' -> (0.0, 0.1, 1.0), at least one value, each finite and ≥ 0."""
    values = tuple(0.0 if _number(v) == 0 else positive_float(v) for v in comma_list(text))
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def positive_ints(text: str) -> tuple[int, ...]:
    """argparse type: '1,4' -> (1, 4), at least one value, each an integer ≥ 1."""
    values = tuple(positive_int(v) for v in comma_list(text))
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def device_name(text: str) -> str:
    """argparse type: a device name, cpu, cuda, cuda:N or mps (whether it exists is checked later)."""
    try:
        return check_device_name(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_device_option(
    p: argparse.ArgumentParser, what: str = "the model and data are moved there"
) -> None:
    """The --device option (default cpu); a device this machine lacks fails before the run starts."""
    p.add_argument(
        "--device", type=device_name, default="cpu", help=f"cpu, cuda, cuda:N or mps; {what}"
    )


def add_run_options(p: argparse.ArgumentParser, command: str, quick: bool = True) -> None:
    """The options every experiment shares: --seed, --threads, --device, [--quick], --data-dir, --out, --no-progress."""
    p.add_argument(
        "--seed", type=seed, default=0, help="seed of data splits, initialization, samples"
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch CPU threads (1 is fastest for these small models on a busy CPU)",
    )
    add_device_option(p)
    if quick:
        p.add_argument("--quick", action="store_true", help="a tiny run (tests, smoke checks)")
    p.add_argument("--data-dir", help="directory with the data set's IDX files")
    p.add_argument("--out", help=f"output directory (default runs/{command}-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def settings_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """``cls(**values)`` for a settings dataclass: every field that has an option of that name.

    ``progress`` is ``not --no-progress``; ``overrides`` replace or add values (options whose
    names or types differ from the fields').
    """
    names = {f.name for f in dataclasses.fields(cls)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if "progress" in names and hasattr(args, "no_progress"):
        values["progress"] = not args.no_progress
    return cls(**{**values, **overrides})


def report_run(results: dict[str, Any], headline: str, table: str, files: Sequence[str]) -> int:
    """Print a finished run: the headline, the table, any checks, the files written; exit status 0."""
    print(headline)
    print(table)
    if results.get("checks"):
        print("checks: " + ", ".join(f"{k}={v}" for k, v in results["checks"].items()))
    print(f"wrote {results['out']}/results.json, report.md, {', '.join(files)}")
    return 0
