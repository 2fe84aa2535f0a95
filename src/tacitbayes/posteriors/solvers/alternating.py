"""``alternating``: the paper's sweeps of per-batch projections (a reference; keeps the batches in memory)."""

from __future__ import annotations

from torch import Tensor

from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.data_pass import DataPass
from tacitbayes.distributed import is_distributed
from tacitbayes.errors import InputError
from tacitbayes.posteriors.null_space import ProjectionInfo, alternating_projection, batch_inverses
from tacitbayes.posteriors.solvers.base import SolverSettings

__all__ = ["AlternatingProjection"]


class AlternatingProjection:
    """Sweeps of 𝒫_b = I − J_b⁺J_b over batches of ``projection_batch_size`` examples."""

    name = "alternating"

    def __init__(self, small: DataJacobian, settings: SolverSettings) -> None:
        self.small, self.settings = small, settings
        self.inverses = batch_inverses(small, settings.cutoff)

    @classmethod
    def build(cls, jac: DataJacobian, settings: SolverSettings) -> AlternatingProjection:
        """Re-batch the training data and eigendecompose every J_b J_bᵀ."""
        if is_distributed():
            raise InputError("solver='alternating' does not run under torch.distributed yet")
        data = DataPass(jac.data.source, batch_size=settings.projection_batch_size)
        small = DataJacobian(
            jac.fmodel.module,
            data,
            outputs=jac.outputs,
            loss=jac.loss_name,
            param_names=list(jac.params),
            chunk_size=jac.chunk_size,
            cache=True,
        )
        return cls(small, settings)

    def project(self, V: Tensor) -> tuple[Tensor, ProjectionInfo]:
        """``n_sweeps`` sweeps at most, stopped once the residual is below ``tol``."""
        s = self.settings
        return alternating_projection(
            self.small, V, self.inverses, s.n_sweeps, tol=s.tol, check_every=10
        )
