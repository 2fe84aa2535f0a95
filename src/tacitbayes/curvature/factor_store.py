"""Kernel factors moved into memory-mapped files: held factors beyond the memory budget.

Each tensor is copied into its own file of a private temporary directory and replaced
by a tensor mapped from that file (``torch.from_file``, shared mapping), so the factor
products read them through the page cache: resident while memory allows, read back
from disk otherwise, never counted as the process' own memory. The directory is
removed when the store is garbage-collected or the interpreter exits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref

import torch
from torch import Tensor

from tacitbayes.curvature.ntk import KernelFactors

__all__ = ["FactorFileStore"]


class FactorFileStore:
    """A temporary directory of memory-mapped tensors (removed with the store)."""

    def __init__(self, directory: str | None = None) -> None:
        self.path = tempfile.mkdtemp(prefix="tacitbayes-factors-", dir=directory)
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.path, True)
        self.count = 0
        self.nbytes = 0

    def put(self, t: Tensor) -> Tensor:
        """A copy of CPU tensor ``t`` mapped from a new file of the store."""
        path = os.path.join(self.path, f"{self.count}.bin")
        self.count += 1
        out = torch.from_file(path, shared=True, size=t.numel(), dtype=t.dtype).view(t.shape)
        out.copy_(t)
        self.nbytes += t.numel() * t.element_size()
        return out

    def spill(self, f: KernelFactors) -> KernelFactors:
        """The same factors, every tensor moved into the store."""
        hadamard = [
            (None if a is None else self.put(a), self.put(g), bias) for a, g, bias in f.hadamard
        ]
        return KernelFactors(
            f.n,
            f.n_outputs,
            hadamard,
            None if f.explicit is None else self.put(f.explicit),
            f.hadamard_names,
            f.explicit_names,
        )

    def close(self) -> None:
        """Remove the directory now (the mapped tensors must no longer be used)."""
        self._cleanup()
