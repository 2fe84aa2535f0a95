"""The README's Python examples run as written (on a smaller digits run, for speed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# (text in the README, its faster stand-in): each must occur, so an edited example is noticed
SHORTER = [
    ('tb.data.load_dataset("digits")', 'tb.data.load_dataset("digits", n_train=300)'),
    ("tb.TrainConfig(epochs=30)", "tb.TrainConfig(epochs=5, progress=False)"),
    ("post.predict(x, n_samples=32)", "post.predict(x, n_samples=8)"),
    ("IBVIConfig(epochs=30,", "IBVIConfig(epochs=3,"),
    ("for epoch in range(30):", "for epoch in range(2):"),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_readme_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    code = "\n".join(blocks)
    for text, faster in SHORTER:
        assert text in code, f"README example no longer contains {text!r}"
        code = code.replace(text, faster)
    monkeypatch.chdir(tmp_path)  # the quick start writes map.pt
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    assert (tmp_path / "map.pt").is_file()
