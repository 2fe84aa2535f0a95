"""Sharpness tracking during training: top Hessian eigenvalues on a fixed data subset.

``SharpnessTracker`` works with any training loop: call ``tracker.maybe_record(step)``
after each step (it records every ``every`` steps) or ``tracker.record(step)`` directly.
Each record holds the top ``n_eigs`` eigenvalues of the Hessian H of the mean training
loss L = (1/N) Σ ℓ over the subset (Lanczos on Hessian-vector products,
:func:`tacitbayes.curvature.top_eigenvalues`), L itself, the accuracy, ‖∇L‖² and
c = (∇L · v₁)², the squared gradient component along the top eigenvector (for the VGD
threshold of :mod:`tacitbayes.dynamics.thresholds`).  With an IVON optimizer it also
records the preconditioned sharpness λ_max(D^{-1/2} H D^{-1/2}), D = diag(h + δ).

Lanczos starts from a fresh random vector (seeded per record): ``top_eigenvalues`` has no
warm-start option.  Records are taken at the mean weights: call the tracker outside
``sampled_params``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tacitbayes.batches import read_batch
from tacitbayes.curvature import Hessian, LinearOperator, top_eigenvalues
from tacitbayes.errors import InputError

__all__ = ["PreconditionedOperator", "SharpnessTracker", "preconditioner_vector"]


class PreconditionedOperator(LinearOperator):
    """D^{-1/2} A D^{-1/2} for a symmetric operator A and a positive diagonal D (given as a vector d)."""

    def __init__(self, op: LinearOperator, d: Tensor) -> None:
        if not isinstance(op, LinearOperator) or op.shape[0] != op.shape[1]:
            raise InputError("PreconditionedOperator needs a square LinearOperator")
        if not isinstance(d, Tensor) or d.shape != (op.shape[0],):
            raise InputError(f"d must be a vector of length {op.shape[0]}")
        if not bool((d > 0).all()) or not bool(torch.isfinite(d).all()):
            raise InputError("the diagonal d must be positive and finite")
        super().__init__(op.shape, op.dtype, op.device, symmetric=True)
        self.op = op
        self.scale = d.to(dtype=op.dtype, device=op.device).rsqrt()

    def _matvec(self, v: Tensor) -> Tensor:
        return self.scale * (self.op @ (self.scale * v))

    def _matmat(self, v: Tensor) -> Tensor:
        s = self.scale.unsqueeze(1)
        return s * (self.op @ (s * v))


def preconditioner_vector(model: nn.Module, optimizer: Any, param_names: Sequence[str]) -> Tensor:
    """Flat d = h + δ of an IVON ``optimizer`` in the order of ``param_names`` of ``model``."""
    if not hasattr(optimizer, "preconditioner"):
        raise InputError(f"{type(optimizer).__name__} has no preconditioner (need IVON)")
    pre = optimizer.preconditioner()
    live = dict(model.named_parameters())
    parts = []
    for name in param_names:
        p = live[name]
        if p not in pre:
            raise InputError(f"parameter {name!r} is not handled by the optimizer")
        parts.append(pre[p].reshape(-1))
    return torch.cat(parts)


class SharpnessTracker:
    """Every ``every`` steps: top Hessian eigenvalues λ₁ ≥ … of L = mean ℓ on ``data``, L, accuracy, (∇L·v₁)².

    ``loss`` is "mse" (ℓ = ½‖f − onehot(y)‖²) or "cross_entropy"; ``data`` an (x, y) pair or
    a re-iterable of batches (a fixed subset).  ``optimizer`` (IVON) adds
    ``preconditioned_sharpness``.  ``tol`` and ``max_iters`` go to Lanczos.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str,
        data: Any,
        every: int = 10,
        n_eigs: int = 1,
        optimizer: Any = None,
        tol: float = 1e-3,
        max_iters: int = 100,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        for name, value in (("every", every), ("n_eigs", n_eigs), ("max_iters", max_iters)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an int ≥ 1, got {value!r}")
        if optimizer is not None and not hasattr(optimizer, "preconditioner"):
            raise InputError(
                f"optimizer must be an IVON optimizer (for the preconditioned sharpness), "
                f"got {type(optimizer).__name__}"
            )
        self.model = model
        self.op = Hessian(model, loss, data, reduction="mean")
        self.every, self.n_eigs, self.tol, self.max_iters = every, n_eigs, tol, max_iters
        self.optimizer = optimizer
        self.seed = seed
        self.history: list[dict[str, Any]] = []

    def maybe_record(self, step: int) -> dict[str, Any] | None:
        """Record if ``step`` is a multiple of ``every``; return the record or None."""
        return self.record(step) if step % self.every == 0 else None

    def _loss_and_accuracy(self) -> tuple[float, float | None]:
        total = 0.0
        correct = count = 0
        classes = True
        with torch.no_grad():
            raw_batches = (read_batch(b) for b in self.op.data)
            for (x, y), (_, raw) in zip(self.op.batches(), raw_batches, strict=True):
                f = self.op.fmodel(self.op.params, x)
                total += float(self.op.loss.value(f, y).sum())
                count += int(f.shape[0])
                if raw.is_floating_point() or raw.ndim != 1:
                    classes = False
                else:
                    correct += int((f.argmax(-1) == raw.to(f.device)).sum())
        return total / count, (correct / count if classes else None)

    def record(self, step: int) -> dict[str, Any]:
        """Measure now (at the current weights) and append the record to ``history``."""
        res = top_eigenvalues(
            self.op,
            k=self.n_eigs,
            tol=self.tol,
            max_iters=self.max_iters,
            seed=self.seed + step,
            return_eigenvectors=True,
        )
        loss, accuracy = self._loss_and_accuracy()
        grad = self.op.gradient()
        assert res.eigenvectors is not None
        v1 = res.eigenvectors[:, 0]
        rec: dict[str, Any] = {
            "step": int(step),
            "loss": loss,
            "accuracy": accuracy,
            "sharpness": float(res.eigenvalues[0]),
            "eigenvalues": [float(e) for e in res.eigenvalues],
            "lanczos_matvecs": res.n_matvecs,
            "lanczos_converged": bool(res.converged),
            "grad_sq_norm": float(grad.square().sum()),
            "grad_top_sq": float((grad @ v1) ** 2),
            "n_params": int(self.op.shape[0]),
        }
        if self.optimizer is not None:
            d = preconditioner_vector(self.model, self.optimizer, self.op.fmodel.param_names)
            pre = top_eigenvalues(
                PreconditionedOperator(self.op, d),
                k=1,
                tol=self.tol,
                max_iters=self.max_iters,
                seed=self.seed + step + 1,
            )
            rec["preconditioned_sharpness"] = float(pre.eigenvalues[0])
        self.op.clear_cache()  # the next record starts from new weights; free the graph now
        self.history.append(rec)
        return rec

    def series(self, key: str) -> tuple[list[int], list[Any]]:
        """(steps, values) of one recorded quantity, e.g. ``tracker.series("sharpness")``."""
        if self.history and key not in self.history[0]:
            raise InputError(f"no recorded quantity {key!r}; have {sorted(self.history[0])}")
        return [r["step"] for r in self.history], [r[key] for r in self.history]
