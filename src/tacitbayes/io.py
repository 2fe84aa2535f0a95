"""Atomic file output: results are written to a temporary file and renamed.

A crash, a full disk or an exception while writing never leaves a
half-written file under its final name: the temporary file (``.NAME.XXXX.tacitbayes-tmp``
beside the target) is flushed to disk (fsync) before the rename, and the folder is
synced after it, so after a power cut the name holds the old or the new content.
A run killed mid-write can leave such a temporary file; :func:`check_output_dir`, run by
every sub-command before its work starts, removes them (and refuses an output folder
that cannot be created or written, before any time is spent).

Under a process group (``torchrun``) only rank 0 writes: on the other ranks every
writer here goes to a private temporary file that is then deleted, so the ranks run
the same code and exactly one copy of each result, plot and checkpoint appears.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tacitbayes.distributed import all_ranks_ok, is_main
from tacitbayes.errors import InputError

TMP_SUFFIX = ".tacitbayes-tmp"  # every temporary file of an atomic write ends so
PROBE_PREFIX = ".tacitbayes-probe-"


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s content to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to the disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows: folders cannot be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success (rank 0 only)."""
    path = Path(path)
    if not is_main():  # another rank: the same work, written nowhere
        with tempfile.TemporaryDirectory(prefix="tacitbayes-rank-") as folder:
            yield Path(folder) / path.name
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that a killed run left in ``folder``; return them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file()]
    stale += [p for p in folder.glob(f"{PROBE_PREFIX}*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a dangling link counts as existing)."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _output_dir_problem(path: Path) -> InputError | None:
    """Why ``path`` cannot be the output folder, or None."""
    if os.path.lexists(path) and not path.is_dir():
        return InputError(
            f"output folder {path} is an existing file, not a directory; choose another --out"
        )
    base = _first_existing(path)
    if not base.is_dir():
        return InputError(
            f"output folder {path} cannot be created: {base} is a file, not a directory; "
            "choose another --out"
        )
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=PROBE_PREFIX)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        return InputError(
            f"output folder {path} is not writable ({base}: {why}); choose another --out "
            "or fix its permissions"
        )
    os.close(fd)
    os.unlink(probe)
    return None


def check_output_dir(path: str | Path) -> Path:
    """Check before any work that ``path`` can be created and written; clean a killed run's temporaries.

    Creates nothing: the folder appears with the first file written into it. Raises
    InputError (on every rank of a process group) naming the problem.
    """
    path = Path(path)
    problem = _output_dir_problem(path) if is_main() else None
    if not all_ranks_ok(problem is None):
        raise problem or InputError(f"output folder {path} cannot be used (see rank 0)")
    if is_main():
        remove_stale_temporaries(path)
    return path
