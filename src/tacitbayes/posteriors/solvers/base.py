"""The contract of a null-space solver: fitted on the training Jacobian, it projects blocks onto null(J).

A solver is a small class with a ``name``, a ``build`` class method that fits it on a
:class:`~tacitbayes.curvature.data_jacobian.DataJacobian` with the posterior's
:class:`SolverSettings`, and ``project(V) -> (𝒫V, ProjectionInfo)``. Adding a solver is
a module here, an entry of :data:`tacitbayes.posteriors.solvers.SOLVERS`, its docs line
and its test.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.errors import InputError
from tacitbayes.posteriors.null_space import ProjectionInfo

__all__ = [
    "DEFAULT_DISK_BUDGET",
    "DEFAULT_MEMORY_BUDGET",
    "PRODUCTS",
    "NullSpaceSolver",
    "SolverSettings",
    "check_budget",
    "float64_twin",
]

DEFAULT_MEMORY_BUDGET = 4 * 2**30  # bytes for a solver's matrices
#: Bytes of held factors that may go to memory-mapped temporary files (at most half the
#: free space of the temporary directory).
DEFAULT_DISK_BUDGET = 32 * 2**30

#: How J V and Jᵀ U are computed: from the per-layer factors held in memory
#: (:meth:`DataJacobian.hold_factors`), by autograd's JVPs and VJPs, or factors where they
#: fit ``memory_budget`` (``auto``).
PRODUCTS = ("auto", "factors", "autograd")


@dataclass(frozen=True)
class SolverSettings:
    """The options every solver may read (each reads its own)."""

    tol: float = 1e-3
    max_iters: int = 300
    n_sweeps: int = 100
    projection_batch_size: int = 16
    nystrom_rank: int = 2000
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    cutoff: float = 1e-6
    krylov: str = "cg"  # nystrom, gram_float32: "cg" or "minres" (minimises ‖J𝒫v‖ itself)
    products: str = "auto"  # J V, Jᵀ U: "factors" (held per-layer factors), "autograd", "auto"
    disk_budget: int = DEFAULT_DISK_BUDGET  # held factors beyond memory_budget: mapped files
    seed: int = 0
    progress: bool = False


@runtime_checkable
class NullSpaceSolver(Protocol):
    """Fitted on J once; ``project(V)`` gives 𝒫V = (I − J⁺J)V for V of shape (P, k) and its info."""

    name: str

    def project(self, V: Tensor) -> tuple[Tensor, ProjectionInfo]:
        """𝒫V and how it was reached (iterations, residuals ‖J𝒫v‖/‖Jv‖, data passes)."""
        ...


def check_budget(solver: str, need: int, budget: int, what: str, instead: str) -> None:
    """InputError when a solver's ``need`` bytes for ``what`` exceed ``budget``, naming ``instead``."""
    if need > budget:
        raise InputError(
            f"solver={solver!r} needs {need / 2**30:.1f} GiB for {what}, over memory_budget "
            f"({budget / 2**30:.1f} GiB); use {instead}"
        )


def float64_twin(jac: DataJacobian) -> DataJacobian:
    """The same Jacobian (same data pass, rows, parameters) of a float64 copy of the model.

    The exact solvers' products JV and JᵀU run in float64: in float32 a residual cannot
    fall below about 1e-7 · cond(K), which is above ``tol`` for a rank-deficient K (dead
    ReLU units, P close to N·O). The copy costs the model's size in float64.
    """
    if jac.dtype == torch.float64:
        return jac
    model = copy.deepcopy(jac.fmodel.module).to(torch.float64)
    return DataJacobian(
        model,
        jac.data,
        outputs=jac.outputs,
        loss=jac.loss_name,
        param_names=list(jac.params),
        chunk_size=jac.chunk_size,
    )
