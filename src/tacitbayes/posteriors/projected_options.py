"""The projected posterior's options, checked (one clear InputError each), and its products.

:func:`check_options` validates what :class:`~tacitbayes.posteriors.projected.ProjectedPosterior`
is given and returns the solvers' options with their defaults (the fields of
:class:`~tacitbayes.posteriors.solvers.SolverSettings`); :func:`hold_products` holds the
Jacobian's per-layer factors as ``products`` asks.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from typing import Any

from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.errors import InputError
from tacitbayes.posteriors.contract import check_likelihood
from tacitbayes.posteriors.kernel_projection import KRYLOV
from tacitbayes.posteriors.solvers import PRODUCTS, SolverSettings
from tacitbayes.posteriors.solvers import SOLVERS as SOLVER_CLASSES

__all__ = ["SOLVERS", "SOLVER_OPTIONS", "check_options", "hold_products"]

SOLVERS = ("auto", *SOLVER_CLASSES)

#: The solvers' own options and their defaults (the fields of SolverSettings but tol, seed, progress).
SOLVER_OPTIONS = {
    f.name: f.default
    for f in dataclasses.fields(SolverSettings)
    if f.name not in ("tol", "seed", "progress")
}

_POSITIVE = ("max_iters", "n_sweeps", "projection_batch_size", "nystrom_rank", "memory_budget")


def check_options(
    likelihood: str,
    solver: str,
    rows: str,
    loss_projected: bool,
    tol: float,
    nll_tol: float | None,
    solver_options: dict[str, Any],
) -> dict[str, Any]:
    """The solvers' options with their defaults, every one checked (InputError otherwise)."""
    check_likelihood(likelihood)
    if rows not in ("logits", "ggn"):
        raise InputError(f"rows must be 'logits' or 'ggn', got {rows!r}")
    if loss_projected and rows != "logits":
        raise InputError("loss_projected=True projects the loss gradients; leave rows='logits'")
    if solver not in SOLVERS:
        raise InputError(f"unknown solver {solver!r}; available: {', '.join(SOLVERS)}")
    unknown = sorted(set(solver_options) - set(SOLVER_OPTIONS))
    if unknown:
        raise InputError(
            f"unknown option(s) {unknown}; the solvers' options are {sorted(SOLVER_OPTIONS)}"
        )
    options = {**SOLVER_OPTIONS, **solver_options}
    for name in _POSITIVE:
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if not tol > 0:
        raise InputError(f"tol must be positive, got {tol}")
    if nll_tol is not None:
        if not (0 < float(nll_tol) < math.inf):
            raise InputError(f"nll_tol must be a positive number, got {nll_tol!r}")
        if rows != "ggn" or likelihood == "regression":
            raise InputError(
                "nll_tol needs rows='ggn' with a classification or binary likelihood "
                "(the residual is then measured in the norm the training NLL moves in)"
            )
    if options["krylov"] not in KRYLOV:
        raise InputError(f"krylov must be one of {', '.join(KRYLOV)}, got {options['krylov']!r}")
    if options["products"] not in PRODUCTS:
        raise InputError(
            f"products must be one of {', '.join(PRODUCTS)}, got {options['products']!r}"
        )
    disk = options["disk_budget"]
    if isinstance(disk, bool) or not isinstance(disk, int) or disk < 0:
        raise InputError(f"disk_budget must be a non-negative integer, got {disk!r}")
    return options


def hold_products(jac: DataJacobian, products: str, memory_budget: int, disk_budget: int) -> None:
    """Hold ``jac``'s factors in memory, else memory-mapped (at most half the free disk); ``factors`` insists."""
    if products == "autograd":
        return
    disk = min(disk_budget, shutil.disk_usage(tempfile.gettempdir()).free // 2)
    if not jac.hold_factors(memory_budget, disk) and products == "factors":
        raise InputError(
            f"products='factors': the per-layer factors need "
            f"{jac.factor_bytes() / 2**30:.1f} GiB, over memory_budget "
            f"({memory_budget / 2**30:.1f} GiB) and the disk budget "
            f"({disk / 2**30:.1f} GiB), or do not describe this model; "
            "use products='autograd'"
        )
