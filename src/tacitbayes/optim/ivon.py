"""IVON: improved variational online Newton (Shen et al., ICML 2024), from docs/methods.md §3.

q(θ) = N(μ, diag σ²) with σ = 1/√(λ(h + δ)); each step, for samples θ = μ + σ ⊙ ε:

    ĝ = ∇ℓ(θ),  ĥ = ĝ ⊙ ε / σ                       (averaged over the step's samples)
    g ← β₁ g + (1 − β₁) ĝ
    h ← β₂ h + (1 − β₂) ĥ + ½ (1 − β₂)² (h − ĥ)² / (h + δ)
    μ ← μ − α (g / (1 − β₁ᵗ) + δ μ) / (h + δ)

with α the learning rate, λ the effective sample size (≈ N), δ the weight decay (prior
precision per unit of λ) and h₀ = ``hess_init``.  The h update keeps h + δ > 0 for any ĥ.
With β₂ = 1 the covariance stays fixed at σ² = 1/(λ(h₀ + δ)): variational GD with momentum
and a fixed isotropic (per-group) noise level.  Between steps 1/√(h + δ) is cached, so a
sample costs one Gaussian draw and one fused multiply-add per weight; hyper-parameter
changes of a group take effect from its next step.  Options: ``clip_radius`` clips the update direction elementwise to [−r, r];
``rescale_lr`` multiplies α by (h₀ + δ), so the first steps match SGD with step α.

h forgets h₀ as β₂ᵗ: after t steps only a share 1 − β₂ᵗ of it comes from the data
(0.3% after 320 steps at β₂ = 0.99999), and until then σ and the preconditioner are
those of h₀. At step counts t = 128, 256, 512, … the mean relative change
mean|h − h₀|/h₀ of each group is read (one pass over h, at those steps only); below 1%
a RuntimeWarning, once per optimizer, names β₂, t and the remedies. Under a process
group every rank holds the same h, so every rank decides alike.

Written from the equations above (the public ivon-opt package is GPL and was not used).
See :mod:`tacitbayes.optim.sampling` for the sampling protocol.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from tacitbayes.errors import InputError
from tacitbayes.optim.ivon_fused import ivon_update_many_, ivon_update_many_eager_
from tacitbayes.optim.sampling import SampledOptimizer, check_range

__all__ = ["IVON"]

HESS_CHECK_FROM = 128  # h is compared with h₀ at steps 128, 256, 512, …
HESS_MOVED = 0.01  # below this mean relative change, h is still h₀'s (warned once)


class IVON(SampledOptimizer):
    """IVON: μ ← μ − α(g/(1−β₁ᵗ) + δμ)/(h+δ) with sampled ĝ, ĥ = ĝε/σ and σ = 1/√(λ(h+δ)).

    Per-group options: ``lr`` (α), ``ess`` (λ), ``hess_init`` (h₀), ``beta1``, ``beta2``,
    ``weight_decay`` (δ), ``clip_radius``, ``rescale_lr``.

    ``fused`` (default False: the eager update, about fifteen elementwise passes per
    parameter): True runs each group's update as compiled kernels (torch.compile,
    :mod:`tacitbayes.optim.ivon_fused`), one pass per parameter. Compiling costs the
    first steps 8–11 s with a warm inductor cache and about 2 minutes with a cold one
    on a 2-core CPU (more than a whole AdamW training of a small model): opt in for long
    runs whose step is bound by the update's memory traffic.

    ``sync=True`` (data parallelism in a process group): rank 0's μ and noise generator
    are broadcast at construction, so all ranks draw the same θ = μ + σ ⊙ ε; each rank
    backpropagates the mean loss of its slice B_r of the global batch B, and
    ``step(weight=|B_r|/|B|)`` (default 1/W) all-reduces ĝ = Σ_r w_r ĝ_r and the Hessian
    statistic Σ_s ĝ_s ⊙ ε_s = Σ_r w_r (Σ_s ĝ_s ⊙ ε_s)_r (linear in ĝ at the shared ε; not
    collected, hence not reduced, when β₂ = 1) before the update: one step on W ranks is
    the one-process step on B, and g, h, μ stay identical on every rank. Without a
    process group ``sync`` changes nothing.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        ess: float,
        hess_init: float = 1.0,
        beta1: float = 0.9,
        beta2: float = 0.99999,
        weight_decay: float = 1e-4,
        mc_samples: int = 1,
        clip_radius: float | None = None,
        rescale_lr: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        sync: bool = False,
        fused: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            ess=ess,
            hess_init=hess_init,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            clip_radius=clip_radius,
            rescale_lr=rescale_lr,
        )
        _validate(defaults)
        super().__init__(params, defaults, mc_samples, seed, generator, sync)
        if not isinstance(fused, bool):
            raise InputError(f"fused must be True or False, got {fused!r}")
        self.fused = fused
        self._hess_warned = False  # the warning that h has not left h₀ is given once

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its hyper-parameters (defaults filled in) are validated first."""
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        _validate(merged)
        super().add_param_group(param_group)

    # ------------------------------------------------------------------ hooks

    def _hess(self, group: dict[str, Any], p: Tensor) -> Tensor | float:
        state = self.state.get(p)
        if state and "hess" in state:
            return state["hess"]
        return float(group["hess_init"])

    def _inv_sqrt_scale(self, group: dict[str, Any], p: Tensor) -> Tensor | float:
        """r = 1/√(h + δ), so that σ = r/√λ (cached between steps; scalar before the first)."""
        h = self._hess(group, p)
        if isinstance(h, float):
            return 1.0 / math.sqrt(h + group["weight_decay"])
        r = self._work.get(p, {}).get("rsqrt")
        if r is None:  # after load_state_dict or a change of weight_decay: recompute from h
            r = torch.add(h, group["weight_decay"], out=self._buffer(p, "rsqrt")).rsqrt_()
        return r

    def _noise_scale(self, group: dict[str, Any], p: Tensor) -> tuple[Tensor | None, float]:
        r = self._inv_sqrt_scale(group, p)
        inv_sqrt_ess = 1.0 / math.sqrt(group["ess"])
        if isinstance(r, float):
            return None, r * inv_sqrt_ess
        return r, inv_sqrt_ess

    def _wants_noise_product(self, group: dict[str, Any]) -> bool:
        return group["beta2"] < 1.0

    def _update_group(self, group: dict[str, Any], items: list[tuple[Tensor, dict, int]]) -> None:
        beta1, beta2 = group["beta1"], group["beta2"]
        delta, ess, clip = group["weight_decay"], group["ess"], group["clip_radius"]
        lr = group["lr"] * ((group["hess_init"] + delta) if group["rescale_lr"] else 1.0)
        batches: dict[tuple, list[list[Tensor]]] = {}  # parameters that share the scalars
        for p, state, n in items:
            r = self._inv_sqrt_scale(group, p)  # 1/√(h_t + δ): σ_t = r/√λ
            if "hess" not in state:
                state["step"] = 0
                state["momentum"] = torch.zeros_like(p)
                state["hess"] = torch.full_like(p, float(group["hess_init"]))
            if not isinstance(r, Tensor):  # before the first step: a scalar
                r = self._buffer(p, "rsqrt").fill_(r)
            state["step"] += 1
            noise = state.get("geps_noise") if beta2 < 1.0 else None  # Σĝε = ĝ ⊙ ε, unformed
            geps = (
                (state["grad_avg"] if noise is not None else state["geps_sum"])
                if beta2 < 1.0
                else None
            )
            tensors = [p, state["momentum"], state["hess"], state["grad_avg"], geps, r, noise]
            if all(t is None or t.is_contiguous() for t in tensors):
                # flat views: one compiled graph serves parameters of every shape
                flat = [None if t is None else t.detach().view(-1) for t in tensors]
                key = (state["step"], n, p.dtype, p.device, noise is None, None)
            else:  # a non-contiguous tensor: elementwise as it is, on its own
                flat, key = tensors, (state["step"], n, p.dtype, p.device, noise is None, id(p))
            lists = batches.setdefault(key, [[] for _ in tensors])
            for column, t in zip(lists, flat, strict=True):
                column.append(t)
        for key, (ps, moms, hess, grads, gepss, rs, noises) in batches.items():
            step, n, _, _, formed, alone = key
            bc = 1.0 - beta1**step
            scalars = [
                beta1,
                1.0 - beta2,
                delta,
                lr / bc,
                bc,
                math.sqrt(ess) / n,  # ĥ = (Σ ĝ ⊙ ε) · √λ / (n r)
                math.inf if clip is None else clip,
            ]
            like = ps[0]
            numbers = [torch.tensor(v, dtype=like.dtype, device=like.device) for v in scalars]
            update = ivon_update_many_ if self.fused and alone is None else ivon_update_many_eager_
            geps_list = None if beta2 >= 1.0 else gepss
            noise_list = None if beta2 >= 1.0 or formed else noises
            update(ps, moms, hess, grads, geps_list, rs, *numbers, noises=noise_list)  # r too
        self._check_hess_moved(group, items)

    def _check_hess_moved(
        self, group: dict[str, Any], items: list[tuple[Tensor, dict, int]]
    ) -> None:
        """Warn once if mean|h − h₀|/h₀ < 1% at a step t = 128·2ᵏ (h still set by ``hess_init``)."""
        beta2 = group["beta2"]
        if self._hess_warned or beta2 >= 1.0:  # β₂ = 1 keeps h = h₀ by design
            return
        step = max(state["step"] for _, state, _ in items)
        if step < HESS_CHECK_FROM or step & (step - 1):  # only at powers of two
            return
        h0 = float(group["hess_init"])
        moved = sum(float((state["hess"] - h0).abs().sum()) for _, state, _ in items)
        moved /= h0 * sum(state["hess"].numel() for _, state, _ in items)
        if moved >= HESS_MOVED:
            return
        self._hess_warned = True
        share = 1.0 - beta2**step  # the share of h that comes from the data
        warnings.warn(
            f"IVON: after {step} steps the Hessian estimate h has moved only {100 * moved:.2g}% "
            f"from hess_init={h0:g} (mean |h − h₀|/h₀): with beta2={beta2:g}, 1 − beta2^t = "
            f"{100 * share:.2g}% of h comes from the data, so the posterior σ and the step "
            f"are still set by hess_init. Use a smaller beta2 (e.g. 0.9999, or 0.999 for "
            f"a short run), train for many more steps (the memory of h is about "
            f"1/(1 − beta2) = {1 / (1 - beta2):.0f} steps), or set hess_init closer to the "
            "data's curvature",
            RuntimeWarning,
            stacklevel=_caller_stacklevel(),
        )

    # ------------------------------------------------------------------ views

    @torch.no_grad()
    def preconditioner(self) -> dict[Tensor, Tensor]:
        """h + δ for every parameter (keyed by the parameter tensor): the diagonal D of the update."""
        out = {}
        for group in self.param_groups:
            for p in group["params"]:
                h = self._hess(group, p)
                d = h + group["weight_decay"]
                out[p] = d.clone() if isinstance(d, Tensor) else torch.full_like(p, d)
        return out


_INTERNAL = (os.path.dirname(__file__), os.path.dirname(torch.__file__))


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside tacitbayes.optim and torch: the caller of ``step()``.

    (torch's optimizer hooks and an lr scheduler wrap ``step``, so the depth varies.)
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level


def _validate(h: dict[str, Any]) -> None:
    """Raise InputError for hyper-parameters IVON cannot use."""
    check_range("lr", h["lr"], 0.0, low_open=True, high_open=True)
    check_range("ess", h["ess"], 0.0, low_open=True, high_open=True)
    check_range("hess_init", h["hess_init"], 0.0, low_open=True, high_open=True)
    check_range("beta1", h["beta1"], 0.0, 1.0, high_open=True)
    check_range("beta2", h["beta2"], 0.0, 1.0)
    check_range("weight_decay", h["weight_decay"], 0.0, high_open=True)
    if h["clip_radius"] is not None:
        check_range("clip_radius", h["clip_radius"], 0.0, low_open=True)
    if not isinstance(h["rescale_lr"], bool):
        raise InputError(f"rescale_lr must be True or False, got {h['rescale_lr']!r}")
