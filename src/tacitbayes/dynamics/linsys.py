"""Gradient descent on underdetermined linear systems through an overparametrization.

For A ∈ R^{n×d} with n < d and b ∈ R^n, minimise ½‖A y(θ) − b‖² by gradient descent
on θ, where y(θ) is one of the parametrizations of :mod:`tacitbayes.dynamics.overparam`
("linear", "deep-linear", "diagonal"). Which of the infinitely many solutions of
Ay = b is reached depends on the parametrization, its depth and the init scale α
(docs/methods.md §5): depth 1 reaches y₀ + A⁺(b − Ay₀); diagonal networks of depth ≥ 2 go
from the minimum-ℓ₂ solution (large α, kernel regime) to the minimum-ℓ₁ one (small α,
rich regime).

Step size: step t uses η_t = lr / C_t, with C_t the parametrization's upper bound on
the spectral norm of the loss Hessian in θ at the current iterate (‖A‖₂² for the
linear model, so lr < 2 always converges there). A scalar, time-varying step leaves
the gradient-flow path unchanged (it only reparametrizes time); it lets one ``lr``
serve every depth and init scale.

Convergence: the relative residual ‖Ay − b‖/‖b‖ ≤ ``tol`` (‖Ay − b‖ ≤ tol if b = 0),
tested every 10 steps (and at every recorded step), so a converged run's step count is
the first tested step that meets it. Divergence (a non-finite residual, or one above
10¹⁰·(‖Ay₀ − b‖ + ‖b‖)), tested at the same steps, raises
:class:`~tacitbayes.errors.TrainingDivergedError` naming the step size.

Small problems run single-threaded (torch's thread count is restored afterwards): for
tensors this size, intra-op threads cost more than they save.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tacitbayes.dynamics.overparam import (
    DeepLinear,
    Diagonal,
    Linear,
    Parametrization,
    System,
    matvec,
    rmatvec,
)
from tacitbayes.errors import InputError, TrainingDivergedError

__all__ = [
    "MODELS",
    "LinsysResult",
    "min_l1_solution",
    "min_norm_solution",
    "solve_underdetermined",
    "solve_underdetermined_batch",
]

MODELS = ("linear", "deep-linear", "diagonal")
DEFAULT_INIT_SCALE = 1e-3
_EXPLODE = 1e10
_CHECK_EVERY = 10
_TINY = torch.finfo(torch.float64).tiny
_SMALL = 4_000_000  # below this many entries, GD runs single-threaded


@dataclass
class LinsysResult:
    """Outcome of one gradient-descent run on ½‖Ay − b‖²."""

    y: Tensor  # (d,) the reached solution
    losses: Tensor  # ½‖Ay − b‖² at the steps in ``loss_steps``
    loss_steps: Tensor  # recorded step indices (every ``record_every`` and the last)
    steps: int  # gradient steps taken (to the first convergence test passed)
    converged: bool  # ‖Ay − b‖ ≤ tol·‖b‖ reached within max_steps
    residual: float  # final ‖Ay − b‖/‖b‖ (‖Ay − b‖ when b = 0)
    model: str
    depth: int
    init_scale: float
    lr: float


def _as_float64(x: object, what: str) -> Tensor:
    try:
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{what} must be an array of numbers") from exc
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise InputError(f"{what} must hold real numbers, got dtype {t.dtype}")
    t = t.detach().to(dtype=torch.float64, device="cpu")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{what} holds non-finite values (NaN or inf)")
    return t


def _check_system(A: object, b: object, batched: bool = False) -> tuple[Tensor, Tensor]:
    """A as float64 (…, n, d) with n < d, b as (…, n), both finite."""
    A_t, b_t = _as_float64(A, "A"), _as_float64(b, "b")
    lead = 1 if batched else 0
    if A_t.ndim != 2 + lead:
        shape = "(B, n, d)" if batched else "(n, d)"
        raise InputError(f"A must be a {2 + lead}-D matrix {shape}, got shape {tuple(A_t.shape)}")
    n, d = A_t.shape[-2:]
    if n == 0:
        raise InputError("A has no rows")
    if n >= d:
        raise InputError(
            f"the system is not underdetermined: A is {n}×{d}; need fewer equations than "
            f"unknowns (n < d)"
        )
    if tuple(b_t.shape) != tuple(A_t.shape[:-1]):
        raise InputError(
            f"b must have shape {tuple(A_t.shape[:-1])} to match A {tuple(A_t.shape)}, "
            f"got {tuple(b_t.shape)}"
        )
    return A_t, b_t


def _check_settings(
    model: str, depth: int, scales: Tensor, lr: float, max_steps: int, tol: float
) -> None:
    if model not in MODELS:
        raise InputError(f"unknown model {model!r}; available: {', '.join(MODELS)}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise InputError(f"depth must be an integer ≥ 1, got {depth!r}")
    if model == "linear" and depth != 1:
        raise InputError(f"model 'linear' has depth 1, got depth={depth}")
    if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
        raise InputError(f"init_scale must be finite and ≥ 0, got {scales.tolist()}")
    deep = model == "deep-linear" or (model == "diagonal" and depth >= 2)
    if deep and bool((scales == 0).any()):
        raise InputError(
            f"init_scale must be > 0 for model {model!r} with depth {depth}: "
            "zero is a stationary point"
        )
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"lr must be a positive number, got {lr}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise InputError(f"max_steps must be a non-negative integer, got {max_steps!r}")
    if not (math.isfinite(tol) and tol > 0):
        raise InputError(f"tol must be a positive number, got {tol}")


def _check_finite(
    rnorm: Tensor, limit: Tensor, step: int, model: str, depth: int, scales: Tensor, lr: float
) -> None:
    """Raise TrainingDivergedError if a residual is non-finite or above ``limit``."""
    bad = ~(rnorm <= limit)  # also catches NaN
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise TrainingDivergedError(
            f"gradient descent diverged by step {step} on {model!r} (depth {depth}, "
            f"init_scale {float(scales[i]):g}): residual {float(rnorm[i]):.3g}; "
            f"lr={lr:g} is too large, try lr ≤ 1"
        )


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads: tiny tensor operations are faster without thread hand-offs."""
    before = torch.get_num_threads()
    if n < before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _parametrization(model: str, depth: int) -> Parametrization:
    if model == "linear":
        return Linear()
    if model == "diagonal":
        return Diagonal(depth)
    return DeepLinear(depth)


def solve_underdetermined_batch(
    A: Tensor,
    b: Tensor,
    model: str = "linear",
    depth: int = 1,
    init_scale: float | Sequence[float] | None = None,
    lr: float = 1.0,
    max_steps: int = 100_000,
    tol: float = 1e-10,
    seed: int = 0,
    y0: Tensor | None = None,
    record_every: int = 10,
) -> list[LinsysResult]:
    """GD on ½‖A_i y(θ_i) − b_i‖² for B problems at once (A: (B, n, d), b: (B, n)).

    ``init_scale`` is one α for all problems or one per problem; the rest as
    :func:`solve_underdetermined`. Problems stop individually when they converge;
    random initial parameters are drawn for all B problems from one generator seeded
    with ``seed``.
    """
    A, b = _check_system(A, b, batched=True)
    B, n, d = A.shape
    if init_scale is None:
        init_scale = 0.0 if model == "linear" else DEFAULT_INIT_SCALE
    scales = _as_float64(init_scale, "init_scale").reshape(-1)
    if scales.numel() == 1:
        scales = scales.expand(B).clone()
    if scales.numel() != B:
        raise InputError(f"init_scale must be one number or {B} numbers, got {scales.numel()}")
    _check_settings(model, depth, scales, float(lr), max_steps, float(tol))
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
        raise InputError(f"record_every must be a positive integer, got {record_every!r}")
    if y0 is not None:
        if model != "linear":
            raise InputError(f"y0 applies only to model 'linear', not {model!r}")
        y0 = _as_float64(y0, "y0")
        if tuple(y0.shape) != (B, d):
            raise InputError(f"y0 must have shape {(B, d)}, got {tuple(y0.shape)}")

    small = B * (n + depth) * d * (d if model == "deep-linear" and depth > 1 else 1) < _SMALL
    with _threads(1 if small else torch.get_num_threads()):
        return _descend(
            A, b, model, depth, scales, float(lr), max_steps, float(tol), seed, y0, record_every
        )


def _descend(
    A: Tensor,
    b: Tensor,
    model: str,
    depth: int,
    scales: Tensor,
    lr: float,
    max_steps: int,
    tol: float,
    seed: int,
    y0: Tensor | None,
    record_every: int,
) -> list[LinsysResult]:
    """The gradient-descent loop of :func:`solve_underdetermined_batch` on checked inputs."""
    B, n, d = A.shape
    param = _parametrization(model, depth)
    params = param.init(scales, d, torch.Generator().manual_seed(seed), y0)
    system = System(A, torch.linalg.matrix_norm(A, ord=2).pow(2))
    scale = torch.linalg.vector_norm(b, dim=-1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    active = torch.ones(B, dtype=torch.bool)
    weight = torch.full((B,), float(lr), dtype=torch.float64)  # lr, or 0 once converged
    steps = torch.full((B,), max_steps, dtype=torch.int64)
    history: list[Tensor] = []
    recorded: list[int] = []
    check = min(_CHECK_EVERY, record_every)
    y = param.forward(params)
    r = matvec(A, y) - b
    limit = _EXPLODE * (r.norm(dim=-1) + scale)
    step = 0
    while True:
        if step % check == 0 or step % record_every == 0 or step >= max_steps:
            rnorm = r.norm(dim=-1)
            _check_finite(rnorm, limit, step, model, depth, scales, lr)
            done = active & (rnorm <= tol * scale)
            if bool(done.any()):
                steps = torch.where(done, torch.full_like(steps, step), steps)
                active = active & ~done
                weight = torch.where(active, weight, 0.0)
            last = not bool(active.any()) or step >= max_steps
            if step % record_every == 0 or last:
                history.append(0.5 * rnorm.pow(2))
                recorded.append(step)
            if last:
                break
        g = rmatvec(A, r)
        bound = param.curvature(params, g, system).clamp_min(_TINY)
        params = param.step(params, g, weight / bound)
        y = param.forward(params)
        r = matvec(A, y) - b
        step += 1

    losses = torch.stack(history, dim=1)
    loss_steps = torch.tensor(recorded, dtype=torch.int64)
    residual = rnorm / scale
    out = []
    for i in range(B):
        keep = loss_steps <= steps[i]
        out.append(
            LinsysResult(
                y=y[i].clone(),
                losses=losses[i][keep].clone(),
                loss_steps=loss_steps[keep],
                steps=int(steps[i]),
                converged=bool(int(steps[i]) < max_steps or residual[i] <= tol),
                residual=float(residual[i]),
                model=model,
                depth=depth,
                init_scale=float(scales[i]),
                lr=float(lr),
            )
        )
    return out


def solve_underdetermined(
    A: Tensor,
    b: Tensor,
    model: str = "linear",
    depth: int = 1,
    init_scale: float | None = None,
    lr: float = 1.0,
    max_steps: int = 100_000,
    tol: float = 1e-10,
    seed: int = 0,
    y0: Tensor | None = None,
    record_every: int = 10,
) -> LinsysResult:
    """GD on ½‖A y(θ) − b‖², y(θ) = θ | W_L⋯W_2w_1 | u^{⊙L} − v^{⊙L}, step η_t = lr / ‖∇²_θ‖-bound.

    ``init_scale`` α defaults to 0 for "linear" (y₀ = 0, so the limit is A⁺b) and to
    1e-3 otherwise; ``y0`` (linear model only) overrides α. Stops when
    ‖Ay − b‖ ≤ tol·‖b‖ or after ``max_steps``; the loss is recorded every
    ``record_every`` steps. See the module docstring for the exact models.
    """
    A_t, b_t = _check_system(A, b)
    y0_b = None
    if y0 is not None:
        y0_t = _as_float64(y0, "y0")
        if tuple(y0_t.shape) != (A_t.shape[1],):
            raise InputError(f"y0 must have shape ({A_t.shape[1]},), got {tuple(y0_t.shape)}")
        y0_b = y0_t[None]
    if init_scale is not None and not isinstance(init_scale, (int, float)):
        raise InputError(f"init_scale must be a number, got {type(init_scale).__name__}")
    return solve_underdetermined_batch(
        A_t[None],
        b_t[None],
        model=model,
        depth=depth,
        init_scale=init_scale,
        lr=lr,
        max_steps=max_steps,
        tol=tol,
        seed=seed,
        y0=y0_b,
        record_every=record_every,
    )[0]


def min_norm_solution(A: Tensor, b: Tensor, y0: Tensor | None = None) -> Tensor:
    """The solution of Ay = b nearest to y₀: y₀ + A⁺(b − Ay₀) (A⁺b = Aᵀ(AAᵀ)⁻¹b for y₀ = 0)."""
    A_t, b_t = _check_system(A, b)
    if y0 is None:
        y0_t = torch.zeros(A_t.shape[1], dtype=torch.float64)
    else:
        y0_t = _as_float64(y0, "y0")
        if tuple(y0_t.shape) != (A_t.shape[1],):
            raise InputError(f"y0 must have shape ({A_t.shape[1]},), got {tuple(y0_t.shape)}")
    return y0_t + torch.linalg.pinv(A_t) @ (b_t - A_t @ y0_t)


def min_l1_solution(A: Tensor, b: Tensor) -> Tensor:
    """Basis pursuit: argmin ‖y‖₁ s.t. Ay = b, as the LP min 1ᵀ(p + q), A(p − q) = b, p, q ≥ 0 (HiGHS)."""
    from scipy.optimize import linprog  # imported here: scipy.optimize is slow to import

    A_t, b_t = _check_system(A, b)
    A_np, b_np = A_t.numpy(), b_t.numpy()
    d = A_np.shape[1]
    res = linprog(
        np.ones(2 * d),
        A_eq=np.hstack([A_np, -A_np]),
        b_eq=b_np,
        bounds=(0, None),
        method="highs-ds",
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    if res.status == 2:
        raise InputError("Ay = b has no solution: b is not in the range of A")
    if res.status != 0 or res.x is None:
        raise InputError(f"the basis-pursuit linear program failed: {res.message}")
    return torch.as_tensor(res.x[:d] - res.x[d:], dtype=torch.float64)
