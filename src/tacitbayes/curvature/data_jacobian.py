"""The Jacobian of all training outputs, stacked over batches: J ∈ R^{(N·O)×P}.

``DataJacobian`` is the operator the null-space methods work with. Rows are grouped
by batch (in the order of ``data``) and example-major within a batch. With
``outputs="loss"`` the per-example output is the scalar loss ℓ(f(θ, x_n), y_n), so J
becomes the N×P matrix of per-example loss gradients (O = 1), which costs one JVP or
one VJP per pass whatever the number of network outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import jvp, vjp, vmap

from tacitbayes.curvature.losses import get_loss
from tacitbayes.curvature.operators import (
    Data,
    LinearOperator,
    _as_batches,
    _check_batch,
    _check_chunk,
    _flatten_rows,
    _free_params,
)
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel, flatten, unflatten

__all__ = ["DataJacobian"]


class DataJacobian(LinearOperator):
    """J = ∂[f(θ, x_n)]_n/∂θ over every batch of ``data``; J v by JVPs, Jᵀ u by VJPs."""

    def __init__(
        self,
        model: nn.Module,
        data: Data,
        outputs: str = "logits",
        loss: str = "cross_entropy",
        param_names: str | Sequence[str] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        if outputs not in ("logits", "loss"):
            raise InputError(f"outputs must be 'logits' or 'loss', got {outputs!r}")
        self.outputs = outputs
        self.loss = get_loss(loss)
        self.fmodel = FunctionalModel(model, param_names)
        self.params, dtype, device = _free_params(self.fmodel)
        self.chunk_size = _check_chunk(chunk_size)
        self.batches: list[tuple[Tensor, Tensor]] = []
        n_outputs = None
        for batch in _as_batches(data):
            x, y = (t.to(device) for t in _check_batch(batch))
            with torch.no_grad():
                out = self.fmodel(self.params, x)
            if out.ndim != 2:
                raise InputError(
                    f"the model must map a batch to (N, O) outputs, got {tuple(out.shape)}"
                )
            n_outputs = int(out.shape[1])
            y = self.loss.prepare_target(y, x.shape[0], n_outputs, dtype)
            self.batches.append((x, y))
        if n_outputs is None:
            raise InputError("data holds no batch")
        self.n_outputs = 1 if outputs == "loss" else n_outputs
        self.batch_rows = [x.shape[0] * self.n_outputs for x, _ in self.batches]
        self.n_data = sum(x.shape[0] for x, _ in self.batches)
        n_p = sum(t.numel() for t in self.params.values())
        super().__init__((sum(self.batch_rows), n_p), dtype, device)

    @property
    def n_batches(self) -> int:
        """Number of batches (row blocks)."""
        return len(self.batches)

    def _function(self, index: int):
        x, y = self.batches[index]
        if self.outputs == "loss":
            return lambda p: self.loss.value(self.fmodel(p, x), y)
        return lambda p: self.fmodel(p, x).reshape(-1)

    def batch_matmat(self, index: int, V: Tensor) -> Tensor:
        """J_b V for batch ``index``: (P, k) -> (rows_b, k)."""
        fn = self._function(index)

        def jv(t: dict[str, Tensor]) -> Tensor:
            return jvp(fn, (self.params,), (t,))[1]

        return vmap(jv, chunk_size=self.chunk_size)(unflatten(V.T, self.params)).T

    def batch_rmatmat(self, index: int, U: Tensor) -> Tensor:
        """J_bᵀ U for batch ``index``: (rows_b, k) -> (P, k)."""
        _, vjp_fn = vjp(self._function(index), self.params)
        out = vmap(vjp_fn, chunk_size=self.chunk_size)(U.T)[0]
        return _flatten_rows(out, U.shape[1]).T

    def batch_gram(self, index: int, max_bytes: int = 2**28) -> Tensor:
        """J_b J_bᵀ (rows_b × rows_b): J_bᵀ by vmapped VJPs, then one matmul.

        When the rows_b × P block would exceed ``max_bytes``, the block is built a chunk
        of columns at a time as J_b (J_bᵀ E) with one VJP and one JVP per column.
        """
        rows = self.batch_rows[index]
        eye = torch.eye(rows, dtype=self.dtype, device=self.device)
        itemsize = torch.finfo(self.dtype).bits // 8
        chunk = max(1, min(rows, max_bytes // max(1, self.shape[1] * itemsize)))
        if chunk == rows:
            jt = self.batch_rmatmat(index, eye)
            gram = jt.T @ jt
        else:
            cols = [
                self.batch_matmat(index, self.batch_rmatmat(index, eye[:, i : i + chunk]))
                for i in range(0, rows, chunk)
            ]
            gram = torch.cat(cols, dim=1)
        return 0.5 * (gram + gram.T)

    def _matmat(self, v: Tensor) -> Tensor:
        return torch.cat([self.batch_matmat(i, v) for i in range(self.n_batches)])

    def _rmatmat(self, u: Tensor) -> Tensor:
        out = torch.zeros(self.shape[1], u.shape[1], dtype=self.dtype, device=self.device)
        start = 0
        for i, rows in enumerate(self.batch_rows):
            out += self.batch_rmatmat(i, u[start : start + rows])
            start += rows
        return out

    def _matvec(self, v: Tensor) -> Tensor:
        return self._matmat(v.unsqueeze(1)).squeeze(1)

    def _rmatvec(self, u: Tensor) -> Tensor:
        return self._rmatmat(u.unsqueeze(1)).squeeze(1)

    def params_flat(self) -> Tensor:
        """θ*, the flat vector of the free parameters."""
        return flatten(self.params).detach().clone()
