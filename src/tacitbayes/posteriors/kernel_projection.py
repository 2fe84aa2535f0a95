"""Projection onto null(J) through the empirical NTK Gram K = J Jᵀ (the kernel view).

𝒫V = V − Jᵀ U with K U = J V. Any solution U gives the same Jᵀ U (null(K) = null(Jᵀ)),
and the residual of the kernel system is the null-space residual itself:
J 𝒫V = J V − K U. Two solvers of K U = J V:

* ``gram``: K is built densely from per-layer Jacobian factors (never J), factorised
  once by a Cholesky decomposition with a jitter μ = 1e-10·mean(diag K) (float64; a larger
  μ from ``linalg.cholesky.JITTERS``, with a RuntimeWarning, where that fails), and
  every solve is improved by iterative refinement against the dense K. For
  rows = N·O up to a memory budget (digits: 12,940 rows, 1.3 GB).
* ``nystrom``: CG on the matrix-free K (one VJP pass and one JVP pass over the loader
  per iteration), preconditioned by a Nyström approximation of K from the kernel
  columns of a random subset of examples (Frangella, Tropp & Udell 2023):
  M⁻¹ = λ_ℓ U Λ⁻¹ Uᵀ + (I − U Uᵀ). Memory: rows × ℓ.

A third, ``gram_float32`` (:mod:`kernel_cholesky`), runs this module's CG with an exact
float32 Cholesky factor of the Jacobi-scaled K as its preconditioner.

Either way the residual ‖J𝒫v‖/‖Jv‖ is measured afresh with the Jacobian at the end.

Under torch.distributed (see :class:`DataJacobian`):

* ``nystrom`` keeps every data-space vector sharded: each rank holds its own rows of the
  residuals, of CG's vectors, of the kernel columns K[:, S] and of the preconditioner's
  eigenvectors (found by a TSQR of the sharded columns). An iteration all-reduces one
  P·k block (the VJP pass), one ℓ×k block (the preconditioner) and k-number sums: the
  communication per pass does not depend on N.
* ``gram`` is for data sets whose dense K fits on one machine: ``jacobian_factors``
  computes the factors of this rank's batches and all-gathers them (every rank then holds
  the factors of all N examples, N·``factor_bytes_per_example`` bytes, and builds the same
  dense K, rows² numbers, redundantly), and its refinement steps use replicated
  data-space vectors (N·O·k numbers gathered per pass).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from tacitbayes.batches import Inputs, map_inputs, slice_inputs
from tacitbayes.budget import items_per_chunk
from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.curvature.ntk import KernelFactors, kernel_factors, ntk_cross, ntk_diagonal
from tacitbayes.distributed import all_gather_cat, all_reduce_
from tacitbayes.errors import InputError
from tacitbayes.linalg import cg, minres
from tacitbayes.linalg.cholesky import JITTERS, jittered_cholesky
from tacitbayes.posteriors.null_space import ProjectionInfo

__all__ = [
    "GramSolver",
    "NystromPreconditioner",
    "gram_projection",
    "iter_factors",
    "jacobi_scale",
    "jacobian_factors",
    "nystrom_preconditioner",
    "nystrom_projection",
]

JITTER = 1e-10

#: The Krylov methods of :func:`nystrom_projection`.
KRYLOV = {"cg": cg, "minres": minres}


def _factors(
    jac: DataJacobian, x: Inputs, y: Tensor, dtype: torch.dtype = torch.float64
) -> KernelFactors:
    return kernel_factors(
        jac.fmodel.module,
        x,
        y,
        outputs=jac.outputs,
        loss=jac.loss_name,
        param_names=list(jac.params),
        dtype=dtype,
        max_explicit_bytes=2**62,  # the pieces are sized by factor_bytes_per_example
    )


def factor_bytes_per_example(jac: DataJacobian) -> int:
    """Bytes of the kernel factors of one training example (measured on the first one)."""
    x, y = jac.first_example
    target = jac.loss.prepare_target(y, 1, jac.network_outputs, jac.dtype)
    return _factors(jac, x, target).nbytes()


def iter_factors(
    jac: DataJacobian,
    indices: Tensor | None = None,
    max_bytes: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> Iterator[KernelFactors]:
    """Kernel factors batch by batch, streamed (or of the examples at sorted ``indices`` only).

    A batch whose factors would exceed ``max_bytes`` (default: the working budget of
    :mod:`tacitbayes.budget`) is split into consecutive pieces; rows keep their order.
    """
    per_example = factor_bytes_per_example(jac)
    for (x, y), start in zip(jac.iter_batches(), jac.example_starts, strict=True):
        n = len(y)
        if indices is not None:  # global example indices (this rank's batches only)
            local = indices[(indices >= start) & (indices < start + n)] - start
            if len(local) == 0:
                continue
            x, y = map_inputs(lambda t, rows=local: t[rows], x), y[local]
        step = items_per_chunk(per_example, len(y), max_bytes)
        for lo in range(0, len(y), step):
            yield _factors(jac, slice_inputs(x, lo, lo + step), y[lo : lo + step], dtype)


def jacobian_factors(jac: DataJacobian, indices: Tensor | None = None) -> list[KernelFactors]:
    """Kernel factors of every batch of ``jac`` (or of the examples at ``indices`` only), held.

    Under torch.distributed: the factors of every rank's batches, all-gathered, in the global
    batch order (the list one process would build on the whole loader).
    """
    if not jac.distributed:
        return list(iter_factors(jac, indices))
    mine = []
    for b, (x, y), start in zip(jac.batch_ids, jac.iter_batches(), jac.example_starts, strict=True):
        one = _OneBatch(jac, x, y, start)
        mine.append((b, [_to(f, torch.device("cpu")) for f in iter_factors(one, indices)]))
    parts: list[list] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, mine)
    ordered = sorted((b, fs) for part in parts for b, fs in part)
    return [_to(f, jac.device) for _, fs in ordered for f in fs]


class _OneBatch:
    """One batch of a DataJacobian, seen by :func:`iter_factors` as a Jacobian of its own."""

    def __init__(self, jac: DataJacobian, x: Inputs, y: Tensor, start: int) -> None:
        self.jac, self.batch, self.example_starts = jac, (x, y), [start]

    def iter_batches(self) -> Iterator[tuple[Inputs, Tensor]]:
        yield self.batch

    def __getattr__(self, name: str):  # everything else: the Jacobian's
        return getattr(self.jac, name)


def _to(f: KernelFactors, device: torch.device) -> KernelFactors:
    """The factors moved to ``device`` (CPU for pickling through the process group)."""
    return KernelFactors(
        f.n,
        f.n_outputs,
        [(None if a is None else a.to(device), g.to(device), bias) for a, g, bias in f.hadamard],
        None if f.explicit is None else f.explicit.to(device),
    )


class GramSolver:
    """K⁺ B for the dense NTK Gram: a jittered Cholesky factor and iterative refinement."""

    def __init__(self, gram: Tensor, jitter: float = JITTER) -> None:
        if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
            raise InputError(f"the Gram matrix must be square, got {tuple(gram.shape)}")
        self.gram = gram.to(torch.float64)
        if not bool(torch.isfinite(self.gram.sum(0)).all()):  # (rows,), no rows × rows mask
            raise InputError(
                "the NTK Gram matrix K = J Jᵀ holds NaN or infinite entries; check the model "
                "and data for non-finite values"
            )
        scale = float(self.gram.diagonal().mean()) if len(self.gram) else 0.0
        self.factor, self.shift = self._factor(jitter, scale if scale > 0 else 1.0)

    def _factor(self, jitter: float, scale: float) -> tuple[Tensor, float]:
        """(L, μ) with L Lᵀ = K + μI, μ = jitter·scale, else the next of JITTERS·scale that works (warned)."""
        diagonal = self.gram.diagonal().clone()
        for rel in (jitter, *(j for j in JITTERS if j > jitter)):
            self.gram.diagonal().add_(rel * scale)  # shifted in place (no second rows × rows copy)
            try:
                factor, status = torch.linalg.cholesky_ex(self.gram)
            finally:
                self.gram.diagonal().copy_(diagonal)
            if int(status) == 0:
                if rel > jitter:
                    warnings.warn(
                        "the NTK Gram matrix K = J Jᵀ is not numerically positive definite; "
                        f"factored with jitter {rel:g} × its mean diagonal added",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                return factor, rel * scale
            del factor  # a failed factor is not kept while the next one is computed
        raise InputError(
            f"the NTK Gram matrix K = J Jᵀ is not positive definite even with jitter "
            f"{JITTERS[-1]:g} × its mean diagonal; use solver='nystrom' or 'krylov'"
        )

    @property
    def rows(self) -> int:
        """Size of the kernel system."""
        return int(self.gram.shape[0])

    def _chol_solve(self, B: Tensor) -> Tensor:
        return torch.cholesky_solve(B, self.factor)

    def solve(self, B: Tensor, tol: float = 1e-8, max_steps: int = 3) -> Tensor:
        """U ≈ K⁺B: the Cholesky solve plus iterative refinement U ← U + (K + μI)⁻¹(B − K U).

        Each step shrinks the error along an eigenvalue λ by μ/(λ + μ); stops once
        ‖B − K U‖ ≤ tol·‖B‖ per column or after ``max_steps`` refinements.
        """
        B64 = B.to(torch.float64)
        U = self._chol_solve(B64)
        b_norm = torch.linalg.vector_norm(B64, dim=0)
        for _ in range(max_steps):
            R = B64 - self.gram @ U
            if bool((torch.linalg.vector_norm(R, dim=0) <= tol * b_norm).all()):
                break
            U = U + self._chol_solve(R)
        return U


def gram_projection(
    jac: DataJacobian,
    V: Tensor,
    solver: GramSolver,
    tol: float = 1e-3,
    max_refinements: int = 3,
) -> tuple[Tensor, ProjectionInfo]:
    """𝒫V = V − Jᵀ K⁺ J V with the dense Gram solver; refined while ‖J𝒫v‖/‖Jv‖ > tol."""
    if solver.rows != jac.shape[0]:
        raise InputError("the Gram solver was built for a different data set")
    start = time.perf_counter()
    info = ProjectionInfo(solver="gram")
    B = jac @ V
    b_norm = torch.linalg.vector_norm(B, dim=0)
    PV, R = V.clone(), B
    passes = 0.5
    for step in range(max_refinements + 1):
        U = solver.solve(R).to(V.dtype)
        PV = PV - jac.T @ U
        R = jac @ PV
        passes += 1.0
        res = torch.linalg.vector_norm(R, dim=0) / b_norm.clamp_min(1e-300)
        info.history.append(float(res.max()))
        info.iterations = step + 1
        if float(res.max()) <= tol:
            break
    info.data_passes = passes
    info.seconds = time.perf_counter() - start
    info.residuals = torch.where(b_norm > 0, res, torch.zeros_like(res)).tolist()
    return PV, info


def _left_singular(B: Tensor, sharded: bool) -> tuple[Tensor, Tensor]:
    """(U, s) of the thin SVD B = U S Vᵀ of a tall matrix whose rows may be split over ranks.

    TSQR: B_r = Q_r R_r on every rank, the small R_r (at most ℓ×ℓ each) all-gathered and
    factored once more, [R_1; …; R_W] = Q' R; then R = U_R S Vᵀ and rank r's rows of U are
    Q_r Q'_r U_R. With one process this is the SVD of B computed through its QR factor.
    """
    Q1, R1 = torch.linalg.qr(B)
    stacked, offset = R1, 0
    if sharded:
        stacked = all_gather_cat(R1)
        counts = all_gather_cat(torch.tensor([R1.shape[0]], dtype=torch.long, device=B.device))
        offset = int(counts[: dist.get_rank()].sum())
    Q2, R2 = torch.linalg.qr(stacked)
    U_R, s, _ = torch.linalg.svd(R2, full_matrices=False)
    return Q1 @ (Q2[offset : offset + R1.shape[0]] @ U_R), s


class NystromPreconditioner:
    """M⁻¹ ≈ K⁻¹ from a rank-ℓ Nyström approximation K ≈ C W⁺ Cᵀ (C = K[:, S], W = K[S, S]).

    With ``scale`` = d^{-1/2} (d = diag K, this rank's rows) and ``core_scale`` = d_S^{-1/2},
    the approximation is of the Jacobi-scaled kernel D^{-1/2} K D^{-1/2} (unit diagonal)
    and M⁻¹ = D^{-1/2} P̂ D^{-1/2}: rows of very different norms (per-example loss gradients
    span orders of magnitude) no longer dominate the spectrum that the Nyström part sees.
    With ``sharded=True`` (under torch.distributed) ``columns`` holds this rank's rows of C,
    the eigenvectors are kept sharded the same way, and every application all-reduces one
    ℓ×k block: nothing of size N is communicated.
    """

    def __init__(
        self,
        columns: Tensor,
        core: Tensor,
        rel_cutoff: float = 1e-8,
        sharded: bool = False,
        scale: Tensor | None = None,
        core_scale: Tensor | None = None,
    ) -> None:
        columns, core = columns.to(torch.float64), core.to(torch.float64)
        self.scale = None if scale is None else scale.to(torch.float64)[:, None]
        if scale is not None and core_scale is not None:
            cs = core_scale.to(torch.float64)
            columns = self.scale * columns * cs[None, :]
            core = cs[:, None] * core * cs[None, :]
        chol = jittered_cholesky(core, "the Nyström core K[S, S]", jitter=JITTER)
        B = torch.linalg.solve_triangular(chol, columns.T, upper=False).T  # C L⁻ᵀ
        U, s = _left_singular(B, sharded)
        values = s.square()
        keep = values > rel_cutoff * values[0]
        self.vectors, self.values, self.sharded = U[:, keep], values[keep], sharded

    @property
    def rank(self) -> int:
        """Number of eigenpairs kept."""
        return int(self.values.numel())

    def __call__(self, R: Tensor) -> Tensor:
        """λ_ℓ U Λ⁻¹ Uᵀ R + (R − U Uᵀ R) (between the two D^{-1/2} when Jacobi-scaled)."""
        R64 = R.to(torch.float64)
        if self.scale is not None:
            R64 = self.scale * R64
        coef = self.vectors.T @ R64
        if self.sharded:
            all_reduce_(coef)
        shrink = (self.values[-1] / self.values)[:, None]
        out = R64 + self.vectors @ ((shrink - 1.0) * coef)
        if self.scale is not None:
            out = self.scale * out
        return out.to(R.dtype)


def nystrom_preconditioner(
    jac: DataJacobian, rank: int, generator: torch.Generator, jacobi: bool = True
) -> NystromPreconditioner:
    """Nyström preconditioner from the kernel columns of ⌈rank/O⌉ random examples (Jacobi-scaled by default)."""
    n_examples = max(1, min(jac.n_data, math.ceil(rank / jac.n_outputs)))
    chosen = torch.randperm(jac.n_data, generator=generator)[:n_examples].sort().values
    subset = jacobian_factors(jac, chosen)
    # stream the loader: only the subset's factors stay in memory; this rank's rows of C
    blocks, diagonals = [], []
    for factors in iter_factors(jac):
        blocks.append(ntk_cross([factors], subset))
        diagonals.append(ntk_diagonal(factors))
    width = sum(f.n * f.n_outputs for f in subset)
    empty = torch.zeros(0, width, dtype=torch.float64, device=jac.device)
    C = torch.cat(blocks) if blocks else empty
    core = ntk_cross(subset, subset)
    if not jacobi:
        return NystromPreconditioner(C, core, sharded=jac.distributed)
    d = torch.cat(diagonals) if diagonals else torch.zeros(0, dtype=torch.float64)
    d_subset = torch.cat([ntk_diagonal(f) for f in subset])
    return NystromPreconditioner(
        C, core, sharded=jac.distributed, scale=jacobi_scale(d), core_scale=jacobi_scale(d_subset)
    )


def jacobi_scale(d: Tensor) -> Tensor:
    """d^{-1/2} for the positive entries of a kernel diagonal, 1 where a row is zero."""
    d = d.to(torch.float64)
    return torch.where(d > 0, d.clamp_min(1e-300).rsqrt(), torch.ones_like(d))


def nystrom_projection(
    jac: DataJacobian,
    V: Tensor,
    preconditioner: Callable[[Tensor], Tensor] | None,
    tol: float = 1e-3,
    max_iters: int = 300,
    progress: bool = False,
    solver: str = "nystrom",
    krylov: str = "cg",
) -> tuple[Tensor, ProjectionInfo]:
    """𝒫V = V − Jᵀ U, K U = J V by CG (or MINRES) on the matrix-free K = J Jᵀ, preconditioned.

    ``solver`` names the preconditioner in the returned info (``nystrom``, ``gram_float32``).
    ``krylov="minres"`` minimises the residual ‖JV − KU‖, which is the null-space residual
    ‖J𝒫V‖ itself (in the preconditioner's norm), over each Krylov space; CG minimises
    the K⁻¹-weighted error instead, which weighs the small eigenvalues of K most.

    Under torch.distributed U, the residuals and CG's vectors stay sharded (this rank's
    rows of the data space); an iteration all-reduces one P·k block and k-number sums.
    """
    start = time.perf_counter()
    bar = tqdm(total=max_iters, desc="null-space CG", disable=not progress or None, leave=False)

    def kernel_product(W: Tensor) -> Tensor:
        bar.update(1)
        return jac.local_matmat(jac.local_rmatmat(W))

    info = ProjectionInfo(solver=solver)
    B = jac.local_matmat(V)
    b_norm = jac.row_norms(B)
    PV, R = V.clone(), B
    passes, iterations, history = 0.5, 0, []
    res = torch.ones_like(b_norm)
    worst = math.inf
    inner_tol = 0.5 * tol
    # CG aims at half the tolerance (its recurrence residual drifts from the true one);
    # the residual is then measured with the Jacobian and CG restarts on it if needed
    while True:
        U, cg_info = KRYLOV[krylov](
            kernel_product,
            R,
            tol=inner_tol,
            max_iters=max(1, max_iters - iterations),
            preconditioner=preconditioner,
            inner=jac.row_inner,
        )
        scale = float(jac.row_norms(R).max() / b_norm.max().clamp_min(1e-300))
        history += [h * scale for h in cg_info.relative_residual_history]
        iterations += cg_info.iterations
        previous = (PV, R, res, worst)
        PV = PV - jac.local_rmatmat(U)
        R = jac.local_matmat(PV)
        passes += cg_info.operator_applications + 1.0
        res = jac.row_norms(R) / b_norm.clamp_min(1e-300)
        res = torch.where(b_norm > 0, res, torch.zeros_like(res))
        worst = float(res.max())
        if worst > previous[3]:  # rounding dominates (a tol below the precision): keep the best
            PV, R, res, worst = previous
            break
        if worst <= tol or iterations >= max_iters or cg_info.iterations == 0:
            break
        inner_tol = 0.5 * tol / worst  # relative to the new right-hand side R
    bar.close()
    info.iterations = iterations
    info.history = history
    info.data_passes = passes
    info.seconds = time.perf_counter() - start
    info.residuals = res.tolist()
    return PV, info
