"""How the command line reports a failure: one line on stderr and an exit status.

Two categories:

* the user's input or environment (exit 2): a :class:`~tacitbayes.errors.TacitBayesError`
  (bad values, missing or malformed data, an unusable checkpoint, a NaN loss), a file
  system error (an existing file where a folder should be, no permission, no space), or
  running out of memory, a setting too large for the model's number type;
* anything else is a bug in tacitbayes (exit 1): "internal error", with a pointer to
  ``--debug``, which shows the traceback instead.

Torch-free at import (the CLI answers ``--help`` without torch); out-of-memory errors
of torch are recognised through ``sys.modules``.
"""

from __future__ import annotations

import errno
import sys

from tacitbayes.errors import TacitBayesError

__all__ = ["USER_ERROR", "BUG", "describe", "one_line"]

USER_ERROR = 2
BUG = 1
MAX_DETAIL = 300  # characters of a library error's message kept in the one line


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    if limit is not None and len(line) > limit:
        line = line[: limit - 3].rstrip() + "..."
    return line


def _is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or torch's OutOfMemoryError (CUDA, MPS or CPU allocator)."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return oom is not None and isinstance(exc, oom)


def _describe_os_error(exc: OSError) -> str:
    """One line naming the path and what is wrong with it (and the fix, where obvious)."""
    name = exc.filename if exc.filename is not None else "a file"
    if isinstance(exc, FileExistsError):
        return f"{name} already exists and is not a directory; choose another path"
    if isinstance(exc, NotADirectoryError):
        return f"{name}: a part of this path is a file, not a directory; choose another path"
    if isinstance(exc, IsADirectoryError):
        return f"{name} is a directory, not a file"
    if isinstance(exc, PermissionError):
        return f"permission denied: {name}; choose another path or fix its permissions"
    if isinstance(exc, FileNotFoundError):
        return f"{name} does not exist"
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device writing {name}; free space or choose another --out"
    why = exc.strerror or one_line(exc, MAX_DETAIL) or type(exc).__name__
    return f"{why}: {name}" if exc.filename is not None else why


def describe(exc: Exception) -> tuple[int, str]:
    """(exit status, message) of a failed command; the message has no "tacitbayes:" prefix."""
    if isinstance(exc, TacitBayesError):
        return USER_ERROR, f"error: {one_line(exc)}"
    if _is_out_of_memory(exc):
        return USER_ERROR, (
            "error: out of memory; try a smaller --batch-size, --n-train or model "
            "(--width, --depth), or another --device"
        )
    if isinstance(exc, OSError):
        return USER_ERROR, f"error: {_describe_os_error(exc)}"
    if isinstance(exc, RuntimeError) and "without overflow" in str(exc):  # torch's scalar check
        return USER_ERROR, (
            "error: a setting is too large for the model's number type "
            f"({one_line(exc, MAX_DETAIL)}); use a smaller value"
        )
    detail = one_line(exc, MAX_DETAIL)
    what = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return BUG, f"internal error: {what} (run with --debug for the traceback)"
