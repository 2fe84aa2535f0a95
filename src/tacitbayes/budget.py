"""The working-memory budget of the matrix-free paths (a documented default, overridable).

Every path that vmaps over columns or examples, or backpropagates several loss-Hessian
columns at once, processes as many items at a time as keep its intermediates under
``WORKING_BYTES`` (256 MiB by default; at least one item). Callers override it per call
(``chunk_size=`` on the operators, ``max_bytes=`` on the column and backward helpers).
"""

from __future__ import annotations

from tacitbayes.errors import InputError

__all__ = ["WORKING_BYTES", "check_count", "items_per_chunk"]

WORKING_BYTES = 2**28


def items_per_chunk(bytes_per_item: int, total: int, max_bytes: int | None = None) -> int:
    """How many of ``total`` items of ``bytes_per_item`` each fit ``max_bytes`` (≥ 1, ≤ total)."""
    budget = WORKING_BYTES if max_bytes is None else int(max_bytes)
    return max(1, min(int(total), budget // max(1, int(bytes_per_item))))


def check_count(name: str, value: int | None) -> int | None:
    """``value`` if it is None or a positive int (a chunk size, a sample count); else InputError."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InputError(f"{name} must be a positive int or None, got {value!r}")
    return value
