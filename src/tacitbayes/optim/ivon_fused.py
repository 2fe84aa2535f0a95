"""IVON's update of one parameter as a single fused kernel (torch.compile), with an eager twin.

The update (:mod:`tacitbayes.optim.ivon`), for ĝ the averaged sampled gradient, Σĝε the
noise product and r = 1/√(h + δ) of the samples:

    g ← β₁ g + (1 − β₁) ĝ
    ĥ = c · Σĝε / r,   c = √λ / n
    h ← β₂ h + (1 − β₂) ĥ + ½ (1 − β₂)² (h − ĥ)² / (h + δ)        (skipped when β₂ = 1)
    d = clip((g + b δ μ) / (h + δ), ±κ b),   b = 1 − β₁ᵗ
    μ ← μ − (α / b) d,   r ← 1/√(h + δ)

Eagerly this is about fifteen passes over every parameter-sized tensor, a large share of a
CPU step of a small network; compiled (inductor) it is one pass. The scalars are passed
as 0-d tensors so that the changing b = 1 − β₁ᵗ does not recompile. If compiling fails
(no C++ compiler, an unsupported platform), :func:`ivon_update_` warns once and stays eager:
both compute the same expressions, so they agree to rounding.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["ivon_update_", "ivon_update_eager_"]


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
) -> None:
    """One IVON step of (μ, g, h, r) in place; ``geps`` None means β₂ = 1 (h fixed); ``step`` = α/b."""
    m.lerp_(grad, 1.0 - beta1)
    if geps is not None:
        hhat = geps / r * hess_scale
        diff = (h - hhat) * r
        h.lerp_(hhat, w)
        h.add_(diff * diff * (0.5 * w * w))
    s = h + delta
    d = ((m + bc * delta * p) / s).clamp(-clip * bc, clip * bc)
    p.sub_(step * d)
    r.copy_(torch.rsqrt(s))


_COMPILED: Callable[..., None] | None = None
_FAILED = False


def ivon_update_(*args: Tensor | None) -> None:
    """:func:`ivon_update_eager_` as one compiled kernel (eager if compiling is not possible)."""
    global _COMPILED, _FAILED
    if not _FAILED:
        try:
            if _COMPILED is None:
                _COMPILED = torch.compile(ivon_update_eager_, dynamic=True, fullgraph=True)
            _COMPILED(*args)
            return
        except Exception as exc:  # noqa: BLE001  (any compiler failure: fall back, once)
            _FAILED = True
            warnings.warn(
                f"IVON's fused update could not be compiled ({type(exc).__name__}: {exc}); "
                "using the eager update (same results, slower)",
                RuntimeWarning,
                stacklevel=2,
            )
    ivon_update_eager_(*args)
