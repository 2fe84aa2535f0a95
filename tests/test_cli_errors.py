"""Every failure is one line: exit 2 for the user's input or environment, exit 1 for a bug.

Paths are checked before any work starts, by every sub-command; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import pytest
import torch

from tacitbayes.cli import main
from tacitbayes.errors import DataError, TrainingDivergedError

COMMANDS = ("compare", "linsys", "eos", "bound", "continual", "generative")


def _one_line(argv: list[str], capsys, code: int, match: str) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err
    return err


@pytest.mark.parametrize("command", COMMANDS)
def test_out_that_is_a_file_is_refused_before_any_work(
    command: str, tmp_path: Path, capsys
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me\n")
    argv = [command, "--no-progress", "--out"]
    _one_line([*argv, str(a_file)], capsys, 2, "is an existing file, not a directory")
    _one_line([*argv, str(a_file / "sub")], capsys, 2, "a-file is a file, not a directory")
    assert a_file.read_text() == "keep me\n"


def test_unwritable_out_is_refused_before_training(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(out))

    monkeypatch.setattr(tempfile, "mkstemp", denied)  # the probe file cannot be created
    argv = ["compare", "--methods", "map", "--no-progress", "--out", str(out)]
    err = _one_line(argv, capsys, 2, f"output folder {out} is not writable")
    assert "Permission denied" in err and "choose another --out" in err
    assert not any(out.iterdir())


def test_data_dir_that_is_a_file_says_so(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "images.gz"
    a_file.write_bytes(b"\x1f\x8b")
    out = tmp_path / "out"
    argv = ["compare", "--dataset", "fashion-mnist", "--data-dir", str(a_file), "--no-progress"]
    _one_line([*argv, "--out", str(out)], capsys, 2, f"{a_file} is not a directory")
    assert not out.exists()


def test_resume_without_checkpoint_leaves_no_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "never"
    argv = ["compare", "--methods", "map", "--resume", "--no-progress", "--out", str(out)]
    _one_line(argv, capsys, 2, "cannot resume")
    assert not out.exists()


@pytest.mark.parametrize(
    "exc, match",
    [
        (FileExistsError(errno.EEXIST, "File exists", "runs/x"), "runs/x already exists"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "f/g"), "is a file, not a dir"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "d"), "d is a directory, not a file"),
        (PermissionError(errno.EACCES, "Permission denied", "p"), "permission denied: p"),
        (OSError(errno.ENOSPC, "No space left on device", "r.json"), "no space left"),
        (OSError(errno.EIO, "Input/output error", "x.pt"), "Input/output error: x.pt"),
        (MemoryError(), "out of memory"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "out of memory"),
        (TrainingDivergedError("non-finite training loss at epoch 2"), "non-finite"),
        (DataError("mnist: no data\nfound"), "mnist: no data found"),
        (
            RuntimeError("value cannot be converted to type float without overflow"),
            "a setting is too large for the model's number type",
        ),
    ],
)
def test_user_and_environment_failures_exit_2(
    exc: Exception, match: str, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tacitbayes.experiments.compare import run

    def fail(settings):
        raise exc

    monkeypatch.setattr(run, "run_compare", fail)
    err = _one_line(["compare", "--no-progress"], capsys, 2, match)
    assert err.startswith("tacitbayes: error: ")


def test_a_bug_is_one_line_exit_1_and_debug_shows_it(
    capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tacitbayes.experiments.compare import run

    def bug(settings):
        return {}["missing"]

    monkeypatch.setattr(run, "run_compare", bug)
    err = _one_line(["compare", "--no-progress"], capsys, 1, "internal error: KeyError")
    assert err.rstrip().endswith("(run with --debug for the traceback)")
    for argv in (["--debug", "compare"], ["compare", "--debug"]):
        with pytest.raises(KeyError):
            main(argv)
    capsys.readouterr()


def test_warnings_are_one_line_each_and_python_format_under_debug(
    capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    from tacitbayes.experiments.compare import run

    def warn(settings):
        warnings.warn("first\nsecond line", RuntimeWarning, stacklevel=1)
        raise DataError("then it failed")

    monkeypatch.setattr(run, "run_compare", warn)
    assert main(["compare", "--no-progress"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["tacitbayes: warning: first second line", "tacitbayes: error: then it failed"]
    with pytest.raises(DataError), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        main(["compare", "--no-progress", "--debug"])
    assert [str(w.message) for w in seen] == ["first\nsecond line"]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["compare", "--seed", "-1"], "--seed: must lie in 0..4294967295"),
        (["linsys", "--seed", str(2**32)], "--seed: must lie in 0..4294967295"),
        (["eos", "--lr", "1e308"], "--lr: must be at most 1e+38"),
        (["compare", "--weight-decay", "inf"], "--weight-decay: must be a finite number"),
    ],
)
def test_seeds_and_numbers_out_of_range_are_usage_errors(argv, match, capsys) -> None:
    _one_line(argv, capsys, 2, match)
