"""Variational gradient descent (docs/methods.md §3): q = N(m, σ² I) with fixed σ, only m learned.

    m ← m − ρ · ( (1/N_s) Σᵢ ∇ℓ(m + εᵢ) + δ m ),   εᵢ ~ N(0, σ² I)

with ρ the learning rate, N_s = ``n_samples`` samples per step and an optional weight
decay δ (default 0, the method as stated).  Same sampling protocol as IVON
(:mod:`tacitbayes.optim.sampling`): ``n_samples`` is the ``mc_samples`` of that protocol.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from tacitbayes.errors import InputError
from tacitbayes.optim.sampling import SampledOptimizer, check_range

__all__ = ["VariationalGD"]


class VariationalGD(SampledOptimizer):
    """VGD: m ← m − ρ((1/N_s) Σᵢ ∇ℓ(m + εᵢ) + δm), εᵢ ~ N(0, σ²I); per-group ``lr``, ``sigma``, ``weight_decay``.

    ``sync=True``: data-parallel sync mode of :mod:`tacitbayes.optim.sampling` (ĝ all-reduced).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        sigma: float,
        n_samples: int = 1,
        weight_decay: float = 0.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        sync: bool = False,
    ) -> None:
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise InputError(f"n_samples must be an int ≥ 1, got {n_samples!r}")
        defaults = dict(lr=lr, sigma=sigma, weight_decay=weight_decay)
        _validate(defaults)
        super().__init__(params, defaults, n_samples, seed, generator, sync)

    @property
    def n_samples(self) -> int:
        """N_s, the number of noisy gradients averaged per step."""
        return self.mc_samples

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its hyper-parameters (defaults filled in) are validated first."""
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        _validate(merged)
        super().add_param_group(param_group)

    def _noise_scale(self, group: dict[str, Any], p: Tensor) -> tuple[Tensor | None, float]:
        return None, float(group["sigma"])

    def _update_group(self, group: dict[str, Any], items: list[tuple[Tensor, dict, int]]) -> None:
        for _, state, _ in items:
            state["step"] = state.get("step", 0) + 1
        ps = [p for p, _, _ in items]
        grads = [st["grad_avg"] for _, st, _ in items]
        if group["weight_decay"]:
            torch._foreach_add_(grads, ps, alpha=group["weight_decay"])
        torch._foreach_add_(ps, grads, alpha=-group["lr"])


def _validate(h: dict[str, Any]) -> None:
    """Raise InputError for hyper-parameters VGD cannot use (σ = 0 is plain GD)."""
    check_range("lr", h["lr"], 0.0, low_open=True, high_open=True)
    check_range("sigma", h["sigma"], 0.0, high_open=True)
    check_range("weight_decay", h["weight_decay"], 0.0, high_open=True)
