"""Matrix-free curvature operators of a network: Jacobian, GGN and Hessian.

Conventions:

* Parameter vectors are flat, of length P, ordered as :func:`tacitbayes.functional.flatten`
  (``named_parameters()`` order, free parameters only).
* Network outputs are flattened example-major: the Jacobian has N·O rows and row ``n*O + o``
  is ∂f_o(x_n)/∂θ (reshape a result to (N, O) to get per-example outputs).
* The loss is L = Σ_n ℓ_n (``reduction="sum"``) or L = (1/N) Σ_n ℓ_n (``reduction="mean"``,
  the default, as in torch losses), with N the total number of examples in ``data``.
* Everything is evaluated in eval mode at the model's current parameters (read through
  detached aliases, so in-place updates of the model are seen by later products); the
  module is never mutated.
* ``data`` is one batch or a re-iterable of batches (a list, a DataLoader; a one-shot
  iterator is refused), read by :mod:`tacitbayes.batches`: ``(x, y)``, ``(x, y, *extra)``
  or a mapping (Hugging Face style, target under ``"labels"``). Batches are moved to the
  parameters' device and floating inputs cast to their dtype; products accumulate over
  batches.
* ``op @ v`` takes a vector (P,) or a block (P, k) and returns the same kind.  Blocks are
  processed with ``torch.func.vmap`` over the k columns, ``chunk_size`` columns at a time
  (``None``: as many as the working budget of :mod:`tacitbayes.budget` allows, 4·P
  numbers per column), which bounds memory.
* Under ``torch.distributed`` (:mod:`tacitbayes.distributed`) every rank is given the same
  ``data`` and reads only its shard; the sums over data (products, loss, gradient, N) are
  all-reduced, so every rank holds the global result. Vectors in parameter space are replicated.

No method builds a P×P matrix or a full (N·O)×P Jacobian except ``to_dense()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, jvp, vjp, vmap

from tacitbayes.batches import Batch, Inputs, move_inputs, n_examples, read_batch
from tacitbayes.budget import check_count, items_per_chunk
from tacitbayes.curvature.columns import ggn_diagonal
from tacitbayes.curvature.losses import Loss, get_loss
from tacitbayes.data_pass import DataPass
from tacitbayes.distributed import all_reduce_, all_reduce_float
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel, flatten, unflatten

__all__ = [
    "GGN",
    "OUTPUTS",
    "DenseOperator",
    "Hessian",
    "Jacobian",
    "LinearOperator",
    "ggn_diagonal",
]

Data = Batch | Iterable[Any]

#: The row kinds of a data Jacobian: the network's outputs, the per-example losses, the
#: GGN's rows S_nᵀ J_n.
OUTPUTS = ("logits", "loss", "ggn")


# --------------------------------------------------------------------------- base class


class LinearOperator:
    """A matrix A ∈ R^{m×n} known only through products A v (vector) and A V (block)."""

    def __init__(
        self,
        shape: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device,
        symmetric: bool = False,
    ) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = dtype
        self.device = torch.device(device)
        self.symmetric = symmetric

    # Subclasses implement _matvec / _matmat (and _rmatvec / _rmatmat if they have a transpose).
    chunk_size: int | None = None

    @property
    def columns_per_chunk(self) -> int:
        """Columns of a block vmapped at once: ``chunk_size``, else the working budget's share.

        Default: as many as keep 4·P numbers per column under
        :data:`tacitbayes.budget.WORKING_BYTES` (at least one).
        """
        if self.chunk_size is not None:
            return self.chunk_size
        itemsize = torch.finfo(self.dtype).bits // 8
        return items_per_chunk(4 * self.shape[1] * itemsize, 2**31)

    def _matvec(self, v: Tensor) -> Tensor:
        return self._matmat(v.unsqueeze(1)).squeeze(1)

    def _matmat(self, v: Tensor) -> Tensor:
        return torch.stack([self._matvec(c) for c in v.unbind(1)], dim=1)

    def _rmatvec(self, u: Tensor) -> Tensor:
        if self.symmetric:
            return self._matvec(u)
        raise InputError(f"{type(self).__name__} has no transpose product")

    def _rmatmat(self, u: Tensor) -> Tensor:
        if self.symmetric:
            return self._matmat(u)
        return torch.stack([self._rmatvec(c) for c in u.unbind(1)], dim=1)

    def _check(self, v: Tensor, n: int) -> None:
        if not isinstance(v, Tensor):
            raise InputError(f"can only multiply by a Tensor, got {type(v).__name__}")
        if v.ndim not in (1, 2) or v.shape[0] != n:
            raise InputError(
                f"{type(self).__name__} of shape {self.shape} needs a vector ({n},) or a block "
                f"({n}, k), got shape {tuple(v.shape)}"
            )
        if v.dtype != self.dtype:
            raise InputError(
                f"{type(self).__name__} has dtype {self.dtype}, got a {v.dtype} tensor"
            )
        if v.device != self.device:
            raise InputError(
                f"{type(self).__name__} lives on {self.device}, got a tensor on {v.device}"
            )

    def _apply(self, v: Tensor, n: int, m: int, vec: Callable, mat: Callable) -> Tensor:
        self._check(v, n)
        if v.ndim == 1:
            return vec(v)
        if v.shape[1] == 0:
            return v.new_zeros(m, 0)
        return mat(v)

    def __matmul__(self, v: Tensor) -> Tensor:
        """A v for v of shape (n,) → (m,), or A V for V of shape (n, k) → (m, k)."""
        return self._apply(v, self.shape[1], self.shape[0], self._matvec, self._matmat)

    def rmatmul(self, u: Tensor) -> Tensor:
        """Aᵀ u for u of shape (m,) → (n,), or Aᵀ U for U of shape (m, k) → (n, k)."""
        return self._apply(u, self.shape[0], self.shape[1], self._rmatvec, self._rmatmat)

    @property
    def T(self) -> LinearOperator:  # noqa: N802 - mirrors Tensor.T
        """The transpose Aᵀ (``self`` when A is symmetric)."""
        return self if self.symmetric else _Transposed(self)

    def to_dense(self) -> Tensor:
        """The dense matrix A = A I_n (m×n memory: small problems and tests only)."""
        return self @ torch.eye(self.shape[1], dtype=self.dtype, device=self.device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, device={self.device})"
        )


class _Transposed(LinearOperator):
    """Aᵀ of an operator that implements transpose products."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__((op.shape[1], op.shape[0]), op.dtype, op.device)
        self.op = op
        self._matvec, self._matmat = op._rmatvec, op._rmatmat  # type: ignore[method-assign]
        self._rmatvec, self._rmatmat = op._matvec, op._matmat  # type: ignore[method-assign]

    @property
    def T(self) -> LinearOperator:  # noqa: N802
        return self.op


class DenseOperator(LinearOperator):
    """A LinearOperator view of an explicit matrix M (products are plain matmuls)."""

    def __init__(self, matrix: Tensor, symmetric: bool | None = None) -> None:
        if not isinstance(matrix, Tensor) or matrix.ndim != 2:
            raise InputError("DenseOperator needs a 2-D Tensor")
        if symmetric is None:
            symmetric = matrix.shape[0] == matrix.shape[1] and bool(torch.equal(matrix, matrix.T))
        super().__init__(tuple(matrix.shape), matrix.dtype, matrix.device, symmetric)  # type: ignore[arg-type]
        self.matrix = matrix

    def _matvec(self, v: Tensor) -> Tensor:
        return self.matrix @ v

    _matmat = _matvec

    def _rmatvec(self, u: Tensor) -> Tensor:
        return self.matrix.T @ u

    _rmatmat = _rmatvec

    def to_dense(self) -> Tensor:
        """The wrapped matrix (a copy)."""
        return self.matrix.clone()


# --------------------------------------------------------------------------- helpers


def _flatten_rows(d: dict[str, Tensor], k: int) -> Tensor:
    """Stack k batched parameter dicts (leading dim k) into a (k, P) matrix."""
    return torch.cat([t.reshape(k, -1) for t in d.values()], dim=1)


def _free_params(fmodel: FunctionalModel) -> tuple[dict[str, Tensor], torch.dtype, torch.device]:
    params = fmodel.params()
    dtypes = {t.dtype for t in params.values()}
    devices = {t.device for t in params.values()}
    if len(dtypes) != 1 or len(devices) != 1:
        raise InputError(
            f"all free parameters must share one dtype and device, got {dtypes} on {devices}"
        )
    if not next(iter(dtypes)).is_floating_point:
        raise InputError(f"free parameters must be floating point, got {dtypes}")
    return params, dtypes.pop(), devices.pop()


def _maybe_vmap(fn: Callable, batched: bool, chunk_size: int | None) -> Callable:
    return vmap(fn, chunk_size=chunk_size) if batched else fn


def _check_chunk(chunk_size: int | None) -> int | None:
    return check_count("chunk_size", chunk_size)


# --------------------------------------------------------------------------- Jacobian


class Jacobian(LinearOperator):
    """J = ∂ vec(f(θ, x)) / ∂θ ∈ R^{(N·O)×P}, rows example-major; J v by JVP, Jᵀ u by VJP."""

    def __init__(
        self,
        model: nn.Module,
        x: Inputs,
        param_names: str | Sequence[str] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        self.fmodel = FunctionalModel(model, param_names)
        self.params, dtype, device = _free_params(self.fmodel)
        if not isinstance(x, (Tensor, dict)) or n_examples(x) < 1:
            raise InputError("x must be a Tensor (or keyword inputs) with a batch dimension")
        self.x = move_inputs(x, device, dtype)
        self.chunk_size = _check_chunk(chunk_size)
        with torch.no_grad():
            out = self.fmodel(self.params, self.x)
        if out.ndim == 0 or out.shape[0] != n_examples(self.x):
            raise InputError(f"model output of shape {tuple(out.shape)} has no batch dimension")
        self.n_data, self.n_outputs = int(out.shape[0]), int(out[0].numel())
        n_p = sum(t.numel() for t in self.params.values())
        super().__init__((self.n_data * self.n_outputs, n_p), dtype, device)

    def _fn(self, p: dict[str, Tensor]) -> Tensor:
        return self.fmodel(p, self.x).reshape(-1)

    def _jv(self, t: dict[str, Tensor]) -> Tensor:
        return jvp(self._fn, (self.params,), (t,))[1]

    def _matvec(self, v: Tensor) -> Tensor:
        return self._jv(unflatten(v, self.params))

    def _matmat(self, v: Tensor) -> Tensor:
        tangents = unflatten(v.T, self.params)
        return vmap(self._jv, chunk_size=self.columns_per_chunk)(tangents).T

    def _rmatvec(self, u: Tensor) -> Tensor:
        _, vjp_fn = vjp(self._fn, self.params)
        return flatten(vjp_fn(u)[0])

    def _rmatmat(self, u: Tensor) -> Tensor:
        _, vjp_fn = vjp(self._fn, self.params)
        out = vmap(vjp_fn, chunk_size=self.columns_per_chunk)(u.T)[0]
        return _flatten_rows(out, u.shape[1]).T


# --------------------------------------------------------------------------- loss curvature


class _LossCurvature(LinearOperator):
    """Shared machinery of the P×P curvature matrices of L(θ) = scale · Σ_n ℓ(f(θ, x_n), y_n)."""

    def __init__(
        self,
        model: nn.Module,
        loss: str | Loss,
        data: Data,
        param_names: str | Sequence[str] | None = None,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        self.loss = get_loss(loss)
        if reduction not in ("mean", "sum"):
            raise InputError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self.chunk_size = _check_chunk(chunk_size)
        self.fmodel = FunctionalModel(model, param_names)
        self.params, dtype, device = _free_params(self.fmodel)
        # one fixed order; products are sums that follow in-place changes of the data
        self.data = DataPass(data, checked=False)
        first = next(iter(self.data.source), None)  # every rank: batch 0 of the whole loader
        if first is None:
            raise InputError("data holds no batch")
        x = read_batch(first).inputs
        with torch.no_grad():
            out = self.fmodel(self.params, x)
        if out.ndim != 2 or out.shape[0] != n_examples(x):
            raise InputError(
                f"the model must map a batch to outputs of shape (N, O), got {tuple(out.shape)}"
            )
        self.n_outputs = int(out.shape[1])
        self._n_data: int | None = None
        n_p = sum(t.numel() for t in self.params.values())
        super().__init__((n_p, n_p), dtype, device, symmetric=True)

    def batches(self) -> Iterator[Batch]:
        """This rank's validated (x, y) batches on the operator's device, targets prepared for the loss."""
        for x, y in self.data.batches(self.device, self.dtype):
            yield Batch(x, self.loss.prepare_target(y, n_examples(x), self.n_outputs, self.dtype))

    @property
    def n_data(self) -> int:
        """Total number of examples N in ``data`` (summed over ranks)."""
        if self._n_data is None:
            mine = sum(n_examples(b.inputs) for b in self.data)
            self._n_data = int(all_reduce_float(mine))
        return self._n_data

    def _accumulate(
        self, per_batch: Callable[[Inputs, Tensor], Tensor], shape: Sequence[int]
    ) -> Tensor:
        """scale · Σ_ranks Σ_batches per_batch(x, y) (of ``shape``), scale = 1/N ("mean") or 1."""
        total: Tensor | None = None
        count = 0
        for x, y in self.batches():
            part = per_batch(x, y)
            total = part if total is None else total.add_(part)
            count += n_examples(x)
        if total is None:  # an empty shard still joins the all-reduce
            total = torch.zeros(tuple(shape), dtype=self.dtype, device=self.device)
        total = all_reduce_(total.contiguous())  # a collective sums storage: same layout
        count = int(all_reduce_float(count))
        if count == 0:
            raise InputError("data holds no example")
        self._n_data = count
        return total / count if self.reduction == "mean" else total

    def _batch_loss(self, x: Inputs, y: Tensor) -> Callable[[dict[str, Tensor]], Tensor]:
        return lambda p: self.loss.value(self.fmodel(p, x), y).sum()

    def loss_value(self) -> Tensor:
        """L(θ) at the current parameters (a 0-d tensor)."""
        with torch.no_grad():
            return self._accumulate(lambda x, y: self._batch_loss(x, y)(self.params), ())

    def gradient(self) -> Tensor:
        """∇_θ L(θ) over all of ``data``, a flat vector (P,)."""
        return self._accumulate(
            lambda x, y: flatten(grad(self._batch_loss(x, y))(self.params)), (self.shape[0],)
        )

    def _product(self, v: Tensor, batched: bool) -> Tensor:
        rows = v.T if batched else v
        tangents = unflatten(rows, self.params)
        out = self._accumulate(
            lambda x, y: self._batch_product(x, y, tangents, batched), tuple(rows.shape)
        )
        return out.T if batched else out

    def _batch_product(
        self, x: Inputs, y: Tensor, tangents: dict[str, Tensor], batched: bool
    ) -> Tensor:
        raise NotImplementedError

    def _matvec(self, v: Tensor) -> Tensor:
        return self._product(v, batched=False)

    def _matmat(self, v: Tensor) -> Tensor:
        return self._product(v, batched=True)


class GGN(_LossCurvature):
    """G = Σ_n J_nᵀ Λ_n J_n (times 1/N for "mean"), Λ_n = ∂²ℓ_n/∂f²; products JVP → Λ → VJP."""

    def _batch_product(
        self, x: Inputs, y: Tensor, tangents: dict[str, Tensor], batched: bool
    ) -> Tensor:
        def fn(p: dict[str, Tensor]) -> Tensor:
            return self.fmodel(p, x)

        if batched:  # one VJP graph; the k JVPs are vmapped (chunked) over the columns
            f, vjp_fn = vjp(fn, self.params)
            one = lambda t: jvp(fn, (self.params,), (t,))[1]  # noqa: E731
            jvs = vmap(one, chunk_size=self.columns_per_chunk)(tangents)
        else:  # one forward pass carries f and J v (J v as a non-differentiated aux output),
            # so the VJP back-propagates through the primal graph only: forward + JVP + VJP.
            f, vjp_fn, jvs = vjp(lambda p: jvp(fn, (p,), (tangents,)), self.params, has_aux=True)
        hjvs = self.loss.hessian_matvec(f, y, jvs)
        out = _maybe_vmap(vjp_fn, batched, self.columns_per_chunk)(hjvs)[0]
        return _flatten_rows(out, hjvs.shape[0]) if batched else flatten(out)

    def diagonal(self, chunk_size: int | None = None) -> Tensor:
        """Exact diag(G) = Σ_n Σ_c (J_nᵀ s_nc)² with Λ_n = S_n S_nᵀ (see :mod:`curvature.diagonal`)."""
        return ggn_diagonal(
            self.fmodel.module,
            self.loss,
            self.data,
            self.fmodel.param_names,
            self.reduction,
            chunk_size=_check_chunk(chunk_size),
        )


def _tensors_in(obj: Any, depth: int = 3) -> list[Tensor]:
    """The tensors held in a (nested) list, tuple or mapping, ``depth`` levels deep."""
    if isinstance(obj, Tensor):
        return [obj]
    if depth == 0 or not isinstance(obj, (Mapping, tuple, list)):
        return []
    items = obj.values() if isinstance(obj, Mapping) else obj
    return [t for item in items for t in _tensors_in(item, depth - 1)]


def _versions(tensors: list[Tensor]) -> list[tuple[Tensor, int]] | None:
    """(tensor, version counter) pairs; None if a tensor has no counter (inference mode)."""
    try:
        return [(t, t._version) for t in tensors]
    except RuntimeError:
        return None


def _same_state(a: list[tuple[Tensor, int]], b: list[tuple[Tensor, int]]) -> bool:
    return len(a) == len(b) and all(s is t and u == w for (s, u), (t, w) in zip(a, b, strict=True))


class Hessian(_LossCurvature):
    """H = ∇²_θ L(θ), products by automatic differentiation of the gradient ∇L.

    ``mode="reverse-over-reverse"`` (default) differentiates the backward pass once more,
    H v = VJP(∇L, v) (valid as H is symmetric); the backward graph is built once per batch
    and shared by all columns of a block.  ``mode="forward-over-reverse"`` uses
    H v = JVP(∇L, v).  Both are exact; the default was faster in CPU timings (≈2.7× vs ≈3.3×
    a gradient for a 784-512-512-10 MLP at batch 256).

    ``cache_graph`` (reverse-over-reverse only): keep the first-order graph of each batch,
    g_b = ``autograd.grad(L_b, θ, create_graph=True)``, and answer later products by
    H v = Σ_b ``autograd.grad(g_b, θ, v)`` alone (one double backward, no forward or first backward: about half the cost, the
    same exact product).  ``None`` (default) caches when ``data`` is a single batch (or a
    one-element list); ``True`` caches every batch (memory: the activations of all of
    ``data``; the data are read once, so a loader that reshuffles or augments is frozen
    at that pass); ``False`` never caches.  The cache is rebuilt when a parameter or
    buffer of the model, or a tensor of a list of batches, was replaced or changed in
    place since (checked through tensor version counters before every product; writes
    through ``.data`` bypass these counters: call :meth:`clear_cache` after those).
    """

    MODES = ("reverse-over-reverse", "forward-over-reverse")

    def __init__(
        self,
        model: nn.Module,
        loss: str | Loss,
        data: Data,
        param_names: str | Sequence[str] | None = None,
        reduction: str = "mean",
        chunk_size: int | None = None,
        mode: str = "reverse-over-reverse",
        cache_graph: bool | None = None,
    ) -> None:
        if mode not in self.MODES:
            raise InputError(f"unknown Hessian mode {mode!r}; choose one of {list(self.MODES)}")
        if not (cache_graph is None or isinstance(cache_graph, bool)):
            raise InputError(f"cache_graph must be True, False or None, got {cache_graph!r}")
        if cache_graph and mode != "reverse-over-reverse":
            raise InputError("cache_graph=True needs mode='reverse-over-reverse'")
        self.mode = mode
        self.cache_graph = cache_graph
        self._graphs: tuple[list[tuple[Tensor, int]], list[Any]] | None = None
        super().__init__(model, loss, data, param_names, reduction, chunk_size)

    @property
    def caches_graph(self) -> bool:
        """Whether products reuse retained first-order graphs (see ``cache_graph``)."""
        if self.mode != "reverse-over-reverse":
            return False
        if self.cache_graph is None:
            return isinstance(self.data.source, (list, tuple)) and len(self.data.source) == 1
        return self.cache_graph

    def clear_cache(self) -> None:
        """Free the retained graphs now; the next product rebuilds them."""
        self._graphs = None

    def _state(self) -> list[tuple[Tensor, int]] | None:
        """Everything a product reads, with version counters: free, fixed and buffer tensors."""
        module = self.fmodel.module
        tensors = [*self.params.values(), *module.parameters(), *module.buffers()]
        if isinstance(self.data.source, (list, tuple)):
            tensors += _tensors_in(self.data.source)
        return _versions(tensors)

    def _retain_graphs(self) -> list[tuple[tuple[Tensor, ...], list[Tensor]]]:
        """Per batch of this rank the graph ∇(scale · L_b) (with its leaves), "mean"'s global 1/N folded in."""
        batches = list(self.batches())
        count = int(all_reduce_float(sum(int(y.shape[0]) for _, y in batches)))
        if count == 0:
            raise InputError("data holds no example")
        self._n_data = count
        scale = 1.0 / count if self.reduction == "mean" else 1.0
        graphs = []
        for x, y in batches:
            leaves = {k: t.detach().requires_grad_(True) for k, t in self.params.items()}
            with torch.enable_grad():
                loss = self._batch_loss(x, y)(leaves) * scale
                grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
            graphs.append((grads, list(leaves.values())))
        return graphs

    def _product(self, v: Tensor, batched: bool) -> Tensor:
        state = self._state() if self.caches_graph else None
        if state is None:
            self._graphs = None
            return super()._product(v, batched)
        if self._graphs is None or not _same_state(self._graphs[0], state):
            self._graphs = None  # free the stale graphs before building new ones
            self._graphs = (state, self._retain_graphs())
        sizes = [t.numel() for t in self.params.values()]
        total: Tensor | None = None
        for grads, leaves in self._graphs[1]:
            if batched:  # columns of v as a batch of cotangents, chunked
                parts = []
                for cols in v.T.split(self.columns_per_chunk):
                    outs = [
                        t.reshape(len(cols), *p.shape)
                        for t, p in zip(cols.split(sizes, 1), leaves, strict=True)
                    ]
                    hv = torch.autograd.grad(
                        grads, leaves, outs, retain_graph=True, is_grads_batched=True
                    )
                    parts.append(torch.cat([h.reshape(len(cols), -1) for h in hv], 1))
                part = torch.cat(parts).T
            else:
                outs = [t.view_as(p) for t, p in zip(v.split(sizes), leaves, strict=True)]
                hv = torch.autograd.grad(grads, leaves, outs, retain_graph=True)
                part = torch.cat([h.reshape(-1) for h in hv])
            total = part if total is None else total.add_(part)
        if total is None:  # an empty shard still joins the all-reduce
            total = torch.zeros_like(v)
        return all_reduce_(total.contiguous())  # a collective sums storage: same layout

    def _batch_product(
        self, x: Inputs, y: Tensor, tangents: dict[str, Tensor], batched: bool
    ) -> Tensor:
        g = grad(self._batch_loss(x, y))
        if self.mode == "reverse-over-reverse":
            _, vjp_fn = vjp(g, self.params)
            out = _maybe_vmap(vjp_fn, batched, self.columns_per_chunk)(tangents)[0]
        else:
            hv = lambda t: jvp(g, (self.params,), (t,))[1]  # noqa: E731
            out = _maybe_vmap(hv, batched, self.columns_per_chunk)(tangents)
        if batched:
            return _flatten_rows(out, next(iter(tangents.values())).shape[0])
        return flatten(out)
