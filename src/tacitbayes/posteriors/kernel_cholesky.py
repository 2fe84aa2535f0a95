"""A float32 Cholesky factor of the Jacobi-scaled NTK Gram, built in place: CG's preconditioner.

For data sets whose float64 kernel and factor (16·N² bytes, the ``gram`` solver) exceed the
memory budget but whose float32 kernel (4·N² bytes) fits. The scaled kernel

    K̃ = D^{-1/2} K D^{-1/2} + μI,   D = diag K  (so diag K̃ = 1 + μ),

is written once, its lower triangle only, into one float32 matrix from the per-layer
Jacobian factors (never J), and overwritten by its Cholesky factor in place
(:mod:`tacitbayes.linalg.blocked_cholesky`). The preconditioner is M⁻¹ = D^{-1/2} K̃⁻¹ D^{-1/2} (two triangular
solves). CG on the exact matrix-free K (:func:`kernel_projection.nystrom_projection`'s
loop: a VJP and a JVP pass per iteration) then removes the float32 rounding and the jitter
μ, so the projection meets the same null-space tolerance as the float64 ``gram`` solver;
eigen-directions with λ ≫ μ converge in the first iteration.

Memory: 4·N² bytes for the kernel and its factor, plus the float32 Jacobian factors of
all N examples and one N × 2,048 panel. Time: the kernel costs
N²·Σ_l (d_in + d_out) multiply-adds, the factorisation N³/3.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor

from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.curvature.ntk import KernelFactors, ntk_cross_block, ntk_diagonal
from tacitbayes.errors import InputError
from tacitbayes.linalg.blocked_cholesky import cholesky_in_place_, cholesky_solve_blocked
from tacitbayes.posteriors.kernel_projection import (
    factor_bytes_per_example,
    iter_factors,
    jacobi_scale,
)

__all__ = ["CholeskyPreconditioner", "cholesky_preconditioner", "float32_gram_bytes"]

JITTERS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)  # μ on the unit diagonal of the scaled kernel
CHUNK_ROWS = 2048  # rows of the kernel blocks written at once


def float32_gram_bytes(jac: DataJacobian) -> int:
    """Memory of the float32 path: the kernel (overwritten by its factor) and the factors."""
    rows = jac.shape[0]
    return 4 * rows * rows + factor_bytes_per_example(jac) * jac.n_data // 2  # float32


def _merge(parts: list[KernelFactors]) -> KernelFactors:
    """The factors of consecutive batches as one batch (rows in order)."""
    if len(parts) == 1:
        return parts[0]
    hadamard = []
    for layer in zip(*(p.hadamard for p in parts), strict=True):
        a = None if layer[0][0] is None else torch.cat([a for a, _, _ in layer])
        hadamard.append((a, torch.cat([g for _, g, _ in layer]), layer[0][2]))
    explicit = None if parts[0].explicit is None else torch.cat([p.explicit for p in parts])
    return KernelFactors(sum(p.n for p in parts), parts[0].n_outputs, hadamard, explicit)


def _chunks(factors: Iterable[KernelFactors], rows: int) -> list[KernelFactors]:
    """Consecutive batches merged into chunks of about ``rows`` kernel rows each."""
    chunks: list[KernelFactors] = []
    pending: list[KernelFactors] = []
    size = 0
    for f in factors:
        pending.append(f)
        size += f.n * f.n_outputs
        if size >= rows:
            chunks.append(_merge(pending))
            pending, size = [], 0
    if pending:
        chunks.append(_merge(pending))
    return chunks


class CholeskyPreconditioner:
    """M⁻¹ R = D^{-1/2} (D^{-1/2} K D^{-1/2} + μI)⁻¹ D^{-1/2} R from an in-place float32 factor."""

    def __init__(self, chunks: list[KernelFactors], device: torch.device) -> None:
        if not chunks:
            raise InputError("no batch to build a kernel from")
        self.device = device
        d = torch.cat([ntk_diagonal(c) for c in chunks])
        if not bool(torch.isfinite(d).all()):
            raise InputError(
                "the NTK Gram matrix K = J Jᵀ holds NaN or infinite entries; check the model "
                "and data for non-finite values"
            )
        self.scale = jacobi_scale(d)
        self.rows = int(d.numel())
        start = time.perf_counter()
        for i, jitter in enumerate(JITTERS):
            factor = self._scaled_kernel(chunks, jitter)
            self.build_seconds = time.perf_counter() - start
            if cholesky_in_place_(factor):
                self._factor = factor
                if i > 0:
                    warnings.warn(
                        "the Jacobi-scaled NTK Gram matrix is not numerically positive definite "
                        f"in float32; factored with jitter {jitter:g} added (CG corrects it)",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                self.jitter = jitter
                self.factor_seconds = time.perf_counter() - start - self.build_seconds
                return
            del factor
        raise InputError(
            "the Jacobi-scaled NTK Gram matrix is not positive definite in float32 even with "
            f"jitter {JITTERS[-1]:g}; use solver='gram' with a larger memory_budget or 'nystrom'"
        )

    def _scaled_kernel(self, chunks: list[KernelFactors], jitter: float) -> Tensor:
        """The lower triangle (row-major) of D^{-1/2} K D^{-1/2} + μI in one float32 matrix."""
        out = torch.empty(self.rows, self.rows, dtype=torch.float32, device=self.device)
        scale = self.scale.to(device=self.device, dtype=torch.float32)
        starts = [0]
        for c in chunks:
            starts.append(starts[-1] + c.n * c.n_outputs)
        for i, ci in enumerate(chunks):
            rows = slice(starts[i], starts[i + 1])
            for j in range(i + 1):
                cols = slice(starts[j], starts[j + 1])
                block = ntk_cross_block(ci, chunks[j], torch.float32)
                out[rows, cols] = block.mul_(scale[rows, None]).mul_(scale[None, cols])
        out.diagonal().add_(jitter)
        return out

    def __call__(self, R: Tensor) -> Tensor:
        """D^{-1/2} K̃⁻¹ D^{-1/2} R for R of shape (rows, k)."""
        if R.shape[0] != self.rows:
            raise InputError("the preconditioner was built for a different data set")
        scale = self.scale.to(R.device)[:, None]
        S = (scale * R.to(torch.float64)).to(device=self.device, dtype=torch.float32)
        X = cholesky_solve_blocked(self._factor, S)
        return (scale * X.to(device=R.device, dtype=torch.float64)).to(R.dtype)


def cholesky_preconditioner(jac: DataJacobian, memory_budget: int) -> CholeskyPreconditioner:
    """The float32 scaled-kernel Cholesky preconditioner of every example of ``jac``."""
    if jac.distributed:
        raise InputError("solver='gram_float32' does not run under torch.distributed yet")
    need, rows = float32_gram_bytes(jac), jac.shape[0]
    if need > memory_budget:
        raise InputError(
            f"solver='gram_float32' needs {need / 2**30:.1f} GiB for the {rows}x{rows} float32 "
            f"kernel and the Jacobian factors, over memory_budget "
            f"({memory_budget / 2**30:.1f} GiB); use solver='nystrom'"
        )
    chunks = _chunks(iter_factors(jac, dtype=torch.float32), CHUNK_ROWS)
    return CholeskyPreconditioner(chunks, jac.device)
