"""Null-space solvers of the projected posterior, one small class each, behind one protocol.

=================  ==================================================================
``gram``           dense K = J Jᵀ, Cholesky + refinement in float64 (N·O rows that fit)
``parameter``      the P×P side: eigenvectors of JᵀJ in float64 (exact where P ≤ N·O)
``gram_float32``   CG on K, preconditioned by the float32 Cholesky factor of scaled K
``nystrom``        CG on the matrix-free K, Nyström-preconditioned (any size)
``block``          block MINRES on the matrix-free K, one Krylov space for all samples
``krylov``         LSQR on J (a reference)
``alternating``    the paper's per-batch sweeps (a reference)
=================  ==================================================================

:func:`auto_chain` is what ``solver="auto"`` tries, in order: ``parameter`` where P < N·O
(K is then singular by construction) and JᵀJ fits the budget, ``gram`` where K fits,
``gram_float32`` where its float32 K fits (one process), ``block`` always last (on the
fashion-mnist MLP it reaches a given residual in far fewer passes than ``nystrom``,
whose Nyström space from a few hundred examples misses the flat spectrum of K; see
``benchmarks/projected_scale.py``). The posterior falls through to the next one when a
solver stops above ``tol``.
"""

from __future__ import annotations

from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.errors import InputError
from tacitbayes.posteriors.kernel_cholesky import float32_gram_bytes
from tacitbayes.posteriors.solvers.alternating import AlternatingProjection
from tacitbayes.posteriors.solvers.base import (
    DEFAULT_MEMORY_BUDGET,
    PRODUCTS,
    NullSpaceSolver,
    SolverSettings,
)
from tacitbayes.posteriors.solvers.block import BlockMinres
from tacitbayes.posteriors.solvers.gram import GramProjection, gram_bytes
from tacitbayes.posteriors.solvers.iterative import CholeskyCG, KrylovProjection, NystromCG
from tacitbayes.posteriors.solvers.parameter import ParameterProjection, parameter_bytes

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "PRODUCTS",
    "SOLVERS",
    "NullSpaceSolver",
    "SolverSettings",
    "auto_chain",
    "build_solver",
]

SOLVERS = {
    cls.name: cls
    for cls in (
        GramProjection,
        ParameterProjection,
        CholeskyCG,
        NystromCG,
        BlockMinres,
        KrylovProjection,
        AlternatingProjection,
    )
}


def auto_chain(jac: DataJacobian, settings: SolverSettings) -> list[str]:
    """The solvers ``auto`` tries for this Jacobian, best first (``block`` always last)."""
    rows, n_p, budget = jac.shape[0], jac.shape[1], settings.memory_budget
    chain = []
    if n_p < rows and parameter_bytes(jac) <= budget:
        chain.append("parameter")
    if gram_bytes(jac) <= budget:
        chain.append("gram")
    elif not jac.distributed and float32_gram_bytes(jac) <= budget:
        chain.append("gram_float32")
    if "parameter" not in chain and parameter_bytes(jac) <= budget:
        chain.append("parameter")
    return [*chain, "block"]


def build_solver(name: str, jac: DataJacobian, settings: SolverSettings) -> NullSpaceSolver:
    """Fit solver ``name`` on ``jac`` (InputError for an unknown name)."""
    if name not in SOLVERS:
        raise InputError(f"unknown solver {name!r}; available: auto, {', '.join(SOLVERS)}")
    return SOLVERS[name].build(jac, settings)
