"""A float32 Cholesky factor of the Jacobi-scaled NTK Gram, built in place: CG's preconditioner.

For data sets whose float64 kernel and factor (16·N² bytes, the ``gram`` solver) exceed the
memory budget but whose float32 kernel (4·N² bytes) fits. The scaled kernel

    K̃ = D^{-1/2} K D^{-1/2} + μI,   D = diag K  (so diag K̃ = 1 + μ),

is written once, its upper triangle only, into one float32 matrix from the per-layer
Jacobian factors (never J), and overwritten by its Cholesky factor (LAPACK ``spotrf`` in
place on the CPU). The preconditioner is M⁻¹ = D^{-1/2} K̃⁻¹ D^{-1/2} (two triangular
solves). CG on the exact matrix-free K (:func:`kernel_projection.nystrom_projection`'s
loop: a VJP and a JVP pass per iteration) then removes the float32 rounding and the jitter
μ, so the projection meets the same null-space tolerance as the float64 ``gram`` solver;
eigen-directions with λ ≫ μ converge in the first iteration.

Memory: 4·N² bytes for the kernel (8·N² on a GPU, where the factor is not computed in
place) plus the float32 Jacobian factors of all N examples. Time: the kernel costs
N²·Σ_l (d_in + d_out) multiply-adds, the factorisation N³/3.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits
from torch import Tensor

from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.curvature.ntk import KernelFactors, ntk_cross_block, ntk_diagonal
from tacitbayes.errors import InputError
from tacitbayes.posteriors.kernel_projection import factor_bytes_per_example, iter_factors

__all__ = ["CholeskyPreconditioner", "cholesky_preconditioner", "float32_gram_bytes"]

JITTERS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)  # μ on the unit diagonal of the scaled kernel
CHUNK_ROWS = 2048  # rows of the kernel blocks written at once


def float32_gram_bytes(jac: DataJacobian) -> int:
    """Memory of the float32 path: the kernel (and, off the CPU, its factor) and the factors."""
    rows = jac.shape[0]
    kernel = (4 if jac.device.type == "cpu" else 8) * rows * rows
    return kernel + factor_bytes_per_example(jac) * jac.n_data // 2  # float32 factors


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
        self.scale = torch.where(d > 0, d.clamp_min(1e-300).rsqrt(), torch.ones_like(d))
        self.rows = int(d.numel())
        start = time.perf_counter()
        for i, jitter in enumerate(JITTERS):
            factor = self._scaled_kernel(chunks, jitter)
            self.build_seconds = time.perf_counter() - start
            ok = self._factorize(factor)
            if ok:
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
            self._factor = None
        raise InputError(
            "the Jacobi-scaled NTK Gram matrix is not positive definite in float32 even with "
            f"jitter {JITTERS[-1]:g}; use solver='gram' with a larger memory_budget or 'nystrom'"
        )

    def _scaled_kernel(self, chunks: list[KernelFactors], jitter: float) -> Tensor:
        """The upper triangle (row-major) of D^{-1/2} K D^{-1/2} + μI in one float32 matrix."""
        out = torch.empty(self.rows, self.rows, dtype=torch.float32, device=self.device)
        scale = self.scale.to(device=self.device, dtype=torch.float32)
        cpu = self.device.type == "cpu"
        starts = np.cumsum([0] + [c.n * c.n_outputs for c in chunks])
        for i, ci in enumerate(chunks):
            rows = slice(int(starts[i]), int(starts[i + 1]))
            for j in range(i, len(chunks)):
                cols = slice(int(starts[j]), int(starts[j + 1]))
                block = ntk_cross_block(ci, chunks[j], torch.float32)
                block.mul_(scale[rows, None]).mul_(scale[None, cols])
                out[rows, cols] = block
                if j > i and not cpu:  # the GPU factorisation reads the whole matrix
                    out[cols, rows] = block.T
        out.diagonal().add_(jitter)
        return out

    def _factorize(self, kernel: Tensor) -> bool:
        """Overwrite ``kernel`` by its Cholesky factor (kept as self._factor); False if not PD."""
        if kernel.device.type != "cpu":
            factor, info = torch.linalg.cholesky_ex(kernel, upper=True)
            self._factor = factor
            return int(info) == 0
        # the row-major upper triangle is the lower triangle of the column-major transpose
        lower = kernel.numpy().T
        with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
            c, info = lapack.spotrf(lower, lower=1, overwrite_a=1, clean=0)
        self._factor = c  # the same memory as ``kernel`` (overwrite_a on a column-major array)
        return int(info) == 0

    def __call__(self, R: Tensor) -> Tensor:
        """D^{-1/2} K̃⁻¹ D^{-1/2} R for R of shape (rows, k)."""
        if R.shape[0] != self.rows:
            raise InputError("the preconditioner was built for a different data set")
        scale = self.scale.to(R.device)[:, None]
        S = (scale * R.to(torch.float64)).to(torch.float32)
        if isinstance(self._factor, Tensor):  # on the GPU: upper factor, Kᵀ = UᵀU
            X = torch.cholesky_solve(S.to(self._factor.device), self._factor, upper=True)
        else:
            with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
                x, info = lapack.spotrs(self._factor, np.asfortranarray(S.cpu().numpy()), lower=1)
            if int(info) != 0:
                raise RuntimeError(f"LAPACK spotrs failed with info {int(info)}")
            X = torch.from_numpy(np.ascontiguousarray(x))
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
