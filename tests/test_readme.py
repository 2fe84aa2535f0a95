"""The README's Python quick start runs as written, and prints the numbers its comments show."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TOLERANCE = 0.01  # other CPUs may round differently over 30 epochs; here they agree exactly


def _shown(code: str) -> list[str]:
    """The comment lines that follow a print: what the README says the line before prints."""
    lines = code.splitlines()
    return [
        line[2:]
        for prev, line in zip(lines, lines[1:], strict=False)
        if line.startswith("# ") and (prev.startswith("print(") or prev.startswith("show("))
    ]


def _numbers(line: str) -> tuple[str, list[float]]:
    """(label, values) of a printed line: ``name {dict}``, ``{dict}`` or a number."""
    label, _, rest = line.rpartition("{") if "{" in line else ("", "", line)
    if "{" in line:
        values = ast.literal_eval("{" + rest)
        return label.strip() + " " + ",".join(values), [float(v) for v in values.values()]
    return "", [float(line)]


def test_readme_quick_start_prints_what_it_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    code = "\n".join(blocks[:2])
    shown = _shown(code)
    assert len(shown) == 7
    monkeypatch.chdir(tmp_path)  # the quick start writes map.pt
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the README's numbers are from two threads
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    finally:
        torch.set_num_threads(threads)
    printed = [line for line in out.getvalue().splitlines() if line.strip()]
    assert (tmp_path / "map.pt").is_file()
    assert len(printed) == len(shown)
    for want, got in zip(shown, printed, strict=True):
        (label_w, values_w), (label_g, values_g) = _numbers(want), _numbers(got)
        assert label_w == label_g, (want, got)
        assert values_g == pytest.approx(values_w, abs=TOLERANCE), (want, got)


def test_readme_links_point_into_the_repository() -> None:
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    assert "docs/methods.md" in targets
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
    assert "METHODS.md" not in text.replace("docs/methods.md", "")
