"""IVON's update of one parameter as a single fused kernel (torch.compile), with an eager twin.

The update (:mod:`tacitbayes.optim.ivon`), for ĝ the averaged sampled gradient, Σĝε the
noise product and r = 1/√(h + δ) of the samples:

    g ← β₁ g + (1 − β₁) ĝ
    ĥ = c · Σĝε / r,   c = √λ / n
    h ← β₂ h + (1 − β₂) ĥ + ½ (1 − β₂)² (h − ĥ)² / (h + δ)        (skipped when β₂ = 1)
    d = clip((g + b δ μ) / (h + δ), ±κ b),   b = 1 − β₁ᵗ
    μ ← μ − (α / b) d,   r ← 1/√(h + δ)

Eagerly this is about fifteen passes over every parameter-sized tensor, a large share of a
CPU step of a small network; compiled (inductor) it is one pass. The parameters of a group
that share the step's scalars go through one compiled call (:func:`ivon_update_many_`). The
scalars are passed as 0-d tensors, so that the changing b = 1 − β₁ᵗ does not recompile
(as Python floats, traced symbolically, torch 2.13 reused a graph for new values of them
and returned wrong updates: never pass floats). If compiling fails
(no C++ compiler, an unsupported platform), :func:`ivon_update_` warns once and stays eager:
both compute the same expressions, so they agree to rounding.

The compiled path is opt-in (``IVON(..., fused=True)``; the default is the eager
update): compiling is paid on the first steps of every process, one graph per list
length (up to ``CHUNK``) and step variant. On a 2-core CPU that was 8–11 s with a warm
inductor cache (7.8 s for a 2-layer BERT of width 32, 2.9 s for a 2-layer MLP) and
17–114 s with a cold one, against a whole AdamW training of a small model in 3 s; it pays
off only on long runs whose step is bound by the update's memory traffic.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from tacitbayes.errors import InputError

__all__ = [
    "ivon_update_",
    "ivon_update_eager_",
    "ivon_update_many_",
    "ivon_update_many_eager_",
]


def ivon_update_eager_(
    p: Tensor,
    m: Tensor,
    h: Tensor,
    grad: Tensor,
    geps: Tensor | None,
    r: Tensor,
    beta1: Tensor,
    w: Tensor,
    delta: Tensor,
    step: Tensor,
    bc: Tensor,
    hess_scale: Tensor,
    clip: Tensor,
    noise: Tensor | None = None,
) -> None:
    """One IVON step of (μ, g, h, r) in place; ``geps`` None means β₂ = 1 (h fixed); ``step`` = α/b.

    With ``noise`` (one sample, its product not formed yet), Σĝε = ``geps`` ⊙ ``noise``.
    """
    m.lerp_(grad, 1.0 - beta1)
    if geps is not None:
        if noise is not None:
            geps = geps * noise
        hhat = geps / r * hess_scale
        diff = (h - hhat) * r
        h.lerp_(hhat, w)
        h.add_(diff * diff * (0.5 * w * w))
    s = h + delta
    d = ((m + bc * delta * p) / s).clamp(-clip * bc, clip * bc)
    p.sub_(step * d)
    r.copy_(torch.rsqrt(s))


def ivon_update_many_eager_(
    params: Sequence[Tensor],
    moms: Sequence[Tensor],
    hess: Sequence[Tensor],
    grads: Sequence[Tensor],
    gepss: Sequence[Tensor] | None,
    rs: Sequence[Tensor],
    *scalars: Tensor | float,
    noises: Sequence[Tensor] | None = None,
) -> None:
    """:func:`ivon_update_eager_` for several parameters that share the step's scalars."""
    for i in range(len(params)):
        geps = None if gepss is None else gepss[i]
        noise = None if noises is None else noises[i]
        ivon_update_eager_(
            params[i], moms[i], hess[i], grads[i], geps, rs[i], *scalars, noise=noise
        )


CHUNK = 8  # parameters per compiled call: few distinct list lengths, so few graphs
_COMPILED: Callable[..., None] | None = None
_FAILED = False


def _compiled() -> Callable[..., None]:
    """The compiled twin of :func:`ivon_update_many_eager_`, made on first use."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(ivon_update_many_eager_, dynamic=True, fullgraph=True)
    return _COMPILED


def _fail(exc: Exception) -> None:
    global _FAILED
    _FAILED = True
    warnings.warn(
        f"IVON's fused update could not be compiled ({type(exc).__name__}: {exc}); "
        "using the eager update (same results, slower)",
        RuntimeWarning,
        stacklevel=3,
    )


def ivon_update_many_(
    params: Sequence[Tensor],
    moms: Sequence[Tensor],
    hess: Sequence[Tensor],
    grads: Sequence[Tensor],
    gepss: Sequence[Tensor] | None,
    rs: Sequence[Tensor],
    *scalars: Tensor,
    noises: Sequence[Tensor] | None = None,
) -> None:
    """:func:`ivon_update_many_eager_` as compiled kernels, ``CHUNK`` parameters per call.

    One call replaces a Python dispatch, a guard check and a kernel launch per parameter.
    The scalars must be 0-d tensors (see the module docstring). Eager if compiling is not
    possible (warned once).
    """
    if not all(isinstance(v, Tensor) and v.ndim == 0 for v in scalars):
        raise InputError("the scalars of the compiled IVON update must be 0-d tensors")
    for lo in range(0, len(params), CHUNK):
        part = slice(lo, lo + CHUNK)
        args = (
            params[part],
            moms[part],
            hess[part],
            grads[part],
            None if gepss is None else gepss[part],
            rs[part],
        )
        noise = None if noises is None else noises[part]
        if not _FAILED:
            try:
                _compiled()(*args, *scalars, noises=noise)
                continue
            except Exception as exc:  # noqa: BLE001  (any compiler failure: fall back, once)
                _fail(exc)
        ivon_update_many_eager_(*args, *scalars, noises=noise)


def ivon_update_(*args: Tensor | None) -> None:
    """:func:`ivon_update_eager_` of one parameter as one compiled kernel (eager if compiling fails)."""
    p, m, h, grad, geps, r, *scalars = args
    assert isinstance(p, Tensor) and isinstance(m, Tensor) and isinstance(h, Tensor)
    assert isinstance(grad, Tensor) and isinstance(r, Tensor)
    gepss = None if geps is None else [geps]
    ivon_update_many_([p], [m], [h], [grad], gepss, [r], *scalars)  # type: ignore[arg-type]
