"""The command line answers --help, --version and usage errors without importing torch.

The torch checks run in a fresh interpreter (this test process has torch loaded already).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tacitbayes.cli import COMMANDS, build_parser
from tacitbayes.experiments.compare.catalog import METHODS

COMMAND_NAMES = ("compare", "linsys", "eos", "bound", "continual", "generative")
HEAVY = ("torch", "sklearn", "matplotlib", "scipy")

# Runs main() on each argv of argv.json and writes the exit codes and the heavy modules
# that got imported to result.json.
CHILD = """
import json, sys
from pathlib import Path
from tacitbayes.cli import main
here = Path(sys.argv[1])
codes = [main(argv) for argv in json.loads((here / "argv.json").read_text())]
heavy = [m for m in json.loads(sys.argv[2]) if m in sys.modules]
(here / "result.json").write_text(json.dumps({"codes": codes, "heavy": heavy}))
"""


def _run_child(tmp_path: Path, argvs: list[list[str]]) -> tuple[dict, subprocess.CompletedProcess]:
    (tmp_path / "argv.json").write_text(json.dumps(argvs))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads((tmp_path / "result.json").read_text()), proc


def test_help_version_and_usage_errors_import_no_torch(tmp_path: Path) -> None:
    argvs = [
        ["--help"],
        ["--version"],
        *([name, "--help"] for name in COMMAND_NAMES),
        ["compare", "--epochs", "-1"],
        ["compare", "--bogus"],
        ["linsys", "--device", "bogus"],
        ["eos", "--n-samples", "0"],
        ["nonsense"],
        [],
    ]
    result, proc = _run_child(tmp_path, argvs)
    assert result["heavy"] == []
    assert result["codes"] == [0] * (2 + len(COMMAND_NAMES)) + [2] * 6
    assert "tacitbayes 0.1.0" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_usage_error_is_one_line_exit_2_without_torch() -> None:
    script = (
        "import sys\n"
        "from tacitbayes.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "compare", "--epochs", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "tacitbayes compare: error: argument --epochs: must be at least 1, got 0"
    ]
    assert proc.stdout == ""


def test_import_tacitbayes_is_lazy(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "import tacitbayes as tb\n"
        "assert 'torch' not in sys.modules\n"
        "assert set(tb.__all__) <= set(dir(tb))\n"
        "assert tb.__version__ == '0.1.0' and issubclass(tb.InputError, ValueError)\n"
        "assert 'torch' not in sys.modules\n"
        "from tacitbayes import Laplace\n"
        "assert tb.Laplace is Laplace and Laplace.__module__ == 'tacitbayes.posteriors.laplace'\n"
        "assert tb.linalg.KroneckerProduct.__name__ == 'KroneckerProduct'\n"
        "assert tb.posteriors.ProjectedPosterior is tb.ProjectedPosterior\n"
        "for name in tb.__all__:\n"
        "    getattr(tb, name)\n"
        "try:\n"
        "    tb.no_such_name\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('tb.no_such_name')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_command_is_wired() -> None:
    assert len(COMMANDS) == len(COMMAND_NAMES)
    assert sorted(_subparsers()) == sorted(COMMAND_NAMES)


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_help_shows_each_default_once(name: str) -> None:
    p = _subparsers()[name]
    text = " ".join(p.format_help().split())  # undo the line wrapping
    for action in p._actions:
        default = action.default
        if not action.option_strings or default in (None, False, argparse.SUPPRESS):
            continue
        if isinstance(default, tuple):
            default = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
        assert f"(default: {default})" in text, (action.option_strings, default)
        help_text = action.help or ""
        assert "(default" not in help_text and f"default {default}" not in help_text, help_text


def test_compare_help_lists_every_method() -> None:
    text = _subparsers()["compare"].format_help()
    for name, description in METHODS.items():
        assert any(line.split() == [name, *description.split()] for line in text.splitlines()), name
    assert "(default: all)" in " ".join(text.split())


def test_catalog_matches_the_registry() -> None:
    from tacitbayes.experiments.compare.registry import available_methods

    assert sorted(available_methods()) == sorted(METHODS)
