"""The conformance suite's summary: one line per cell that raised a documented error or failed."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from .posteriors import RECORDS

    if not RECORDS:
        return
    counts: dict[str, int] = {}
    for r in RECORDS:
        counts[r.status] = counts.get(r.status, 0) + 1
    terminalreporter.section("tacitbayes conformance cells")
    terminalreporter.write_line(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    for r in RECORDS:
        if r.status != "equal":
            terminalreporter.write_line(f"{r.status:16s} {r.cell}: {r.detail}")
