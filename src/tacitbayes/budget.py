"""The working-memory budget of the matrix-free paths (a documented default, overridable).

Every path that vmaps over columns or examples, or backpropagates several loss-Hessian
columns at once, processes as many items at a time as keep its intermediates under
``WORKING_BYTES`` (256 MiB by default; at least one item). Callers override it per call
(``chunk_size=`` on the operators, ``max_bytes=`` on the column and backward helpers).
"""

from __future__ import annotations

__all__ = ["WORKING_BYTES", "items_per_chunk"]

WORKING_BYTES = 2**28


def items_per_chunk(bytes_per_item: int, total: int, max_bytes: int | None = None) -> int:
    """How many of ``total`` items of ``bytes_per_item`` each fit ``max_bytes`` (≥ 1, ≤ total)."""
    budget = WORKING_BYTES if max_bytes is None else int(max_bytes)
    return max(1, min(int(total), budget // max(1, int(bytes_per_item))))
