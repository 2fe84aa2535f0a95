"""What every sub-command's outputs share: table cells, text and Markdown tables, report sections, writing.

A column is ``(title, key, format)``: the header, the key in a result row, and a
``str.format`` pattern. A missing value (None) prints as "-"; a value the pattern
cannot format prints as ``str(value)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tacitbayes.io import write_json, write_text

__all__ = [
    "Column",
    "cell",
    "fixed_width",
    "footer",
    "markdown_table",
    "text_table",
    "write_outputs",
]

Column = tuple[str, str, str]


def cell(value: Any, fmt: str = "{:.4f}") -> str:
    """``fmt.format(value)``; "-" for None; ``str(value)`` where the pattern does not apply."""
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def text_table(
    rows: Mapping[str, Mapping[str, Any]],
    columns: Sequence[Column],
    first: str = "method",
    first_width: int = 20,
    width: int = 16,
    cell_of: Callable[[Mapping[str, Any], str, str], str] | None = None,
) -> str:
    """One line per named row, right-aligned columns under a header and a rule (for the terminal)."""
    cell_of = cell_of or (lambda row, key, fmt: cell(row.get(key), fmt))
    header = f"{first:<{first_width}}" + "".join(f"{title:>{width}}" for title, _, _ in columns)
    lines = [header, "-" * len(header)]
    for name, row in rows.items():
        cells = "".join(f"{cell_of(row, key, fmt):>{width}}" for _, key, fmt in columns)
        lines.append(f"{name:<{first_width}}{cells}")
    return "\n".join(lines)


def fixed_width(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A header, a rule and the rows, each column right-aligned to its widest entry."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    return [lines[0], "-" * len(lines[0]), *lines[1:]]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table: the header, the separator and one line per row."""
    return [
        "| " + " | ".join(map(str, header)) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(map(str, r)) + " |" for r in rows),
    ]


def footer(
    settings: Mapping[str, Any],
    versions: Mapping[str, Any],
    extra: Sequence[tuple[str, Sequence[str]]] = (),
) -> list[str]:
    """The closing sections of every report: any ``extra`` (title, lines), Settings, Versions."""
    lines: list[str] = []
    for title, body in extra:
        lines += ["", f"## {title}", "", *body]
    lines += ["", "## Settings", "", "```", *(f"{k}: {v}" for k, v in settings.items()), "```"]
    lines += ["", "## Versions", "", *(f"- {k}: {v}" for k, v in versions.items()), ""]
    return lines


def write_outputs(
    out: Path,
    results: dict[str, Any],
    report: str,
    plots: Sequence[Callable[[Path], object]] = (),
) -> None:
    """Each plot (called with ``out``), then report.md, then results.json, each written atomically.

    results.json comes last: its presence marks a finished run.
    """
    for plot in plots:
        plot(out)
    write_text(out / "report.md", report)
    write_json(out / "results.json", results)
