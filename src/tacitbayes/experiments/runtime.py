"""Run-time settings shared by the experiments."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from contextlib import contextmanager

import torch

import tacitbayes

__all__ = ["torch_threads", "versions"]


def versions() -> dict[str, str]:
    """The versions a result was produced with: tacitbayes, torch and Python."""
    return {
        "tacitbayes": tacitbayes.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (None: leave as is); restore the count after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
