"""The Jacobian of all training outputs, stacked over batches: J ∈ R^{(N·O)×P}.

``DataJacobian`` is the operator the null-space methods work with. Rows are grouped
by batch (in the order of ``data``) and example-major within a batch. With
``outputs="loss"`` the per-example output is the scalar loss ℓ(f(θ, x_n), y_n), so J
becomes the N×P matrix of per-example loss gradients (O = 1), which costs one JVP or
one VJP per pass whatever the number of network outputs. With ``outputs="ggn"`` the rows
of example n are S_nᵀ J_n, S_n S_nᵀ = Λ_n the loss's output Hessian at θ* (so JᵀJ is the
GGN and null(J) the GGN's null space; for softmax it adds the direction that shifts every
logit of an example alike, which leaves its probabilities unchanged).

The data are streamed: every product iterates the loader again and holds one batch at
a time (``cache=True`` keeps the batches, for solvers that visit them out of order).
:meth:`DataJacobian.hold_factors` keeps the per-layer Jacobian factors of every batch
instead, where they fit a memory budget: J V and Jᵀ U then run as a few large matrix
products per layer (:mod:`tacitbayes.curvature.factor_products`), without the network. The
loader is read through one :class:`tacitbayes.data_pass.DataPass`, so every product sees
the same rows in the same order (a shuffling DataLoader is read in order; a loader whose
batches change between passes is refused).

Under torch.distributed (see :mod:`tacitbayes.distributed`) every rank is given the same
loader and reads its shard; the operator is still the GLOBAL J. Parameter-space vectors
are replicated. ``J @ V`` and ``J.T @ U`` use replicated data-space vectors in the row
order one process would use on the whole loader: J V computes this rank's rows and
all-gathers them (N·O·k numbers), Jᵀ U takes this rank's rows of U and all-reduces the
sum. The solvers use the sharded form instead, whose communication does not grow with
N: ``local_matmat`` (this rank's rows of J V, no communication), ``local_rmatmat`` (Jᵀ U
from this rank's rows, one P·k all-reduce) and ``row_inner`` / ``row_norms`` (k numbers).
``shape``, ``n_data`` and ``loss_sum`` are global; the per-batch methods (``iter_batches``,
``batch``, ``batch_rows``, ``n_batches``, ``batch_gram``) see this rank's batches only, and
``batch_ids`` / ``example_starts`` place them in the global order.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import jvp, vjp, vmap

from tacitbayes.batches import Batch, Inputs, map_inputs, n_examples, read_batch, to_model
from tacitbayes.curvature.factor_products import FactorProducts
from tacitbayes.curvature.factor_store import FactorFileStore
from tacitbayes.curvature.losses import get_loss
from tacitbayes.curvature.ntk import kernel_factors
from tacitbayes.curvature.operators import (
    OUTPUTS,
    Data,
    LinearOperator,
    _check_chunk,
    _flatten_rows,
    _free_params,
)
from tacitbayes.data_pass import data_pass
from tacitbayes.distributed import (
    all_gather_cat,
    all_reduce_,
    all_reduce_float,
    is_distributed,
)
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel, flatten, unflatten

__all__ = ["OUTPUTS", "DataJacobian"]


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
        cache: bool = False,
    ) -> None:
        if outputs not in OUTPUTS:
            raise InputError(f"outputs must be one of {', '.join(OUTPUTS)}, got {outputs!r}")
        self.outputs = outputs
        self.loss_name = loss
        self.loss = get_loss(loss)
        self.fmodel = FunctionalModel(model, param_names)
        self.params, self._dtype, self._device = _free_params(self.fmodel)
        self.chunk_size = _check_chunk(chunk_size)
        self.data = data_pass(data)  # one fixed order for every pass, this rank's shard
        self.distributed = is_distributed()
        self._cache: list[Batch] | None = [] if cache else None
        self.factors: FactorProducts | None = None
        self.batch_rows: list[int] = []
        n_outputs = None
        first_example: Batch | None = None
        loss_sum = 0.0
        for x, y in self.data.batches(self._device, self._dtype):
            with torch.no_grad():
                out = self.fmodel(self.params, x)
            if out.ndim != 2:
                raise InputError(
                    f"the model must map a batch to (N, O) outputs, got {tuple(out.shape)}"
                )
            if n_outputs is not None and out.shape[1] != n_outputs:
                raise InputError("every batch must give the same number of outputs")
            n_outputs = int(out.shape[1])
            target = self.loss.prepare_target(y, n_examples(x), n_outputs, self._dtype)
            loss_sum += float(self.loss.value(out, target).sum())
            self.batch_rows.append(n_examples(x))
            if first_example is None:  # kept for size estimates (one example, no extra pass)
                one = map_inputs(lambda t: t[:1].clone(), x)  # a copy: the batch is freed
                first_example = Batch(one, y[:1].clone())
            if self._cache is not None:
                self._cache.append((x, y))
        if n_outputs is None and self.distributed:  # an empty shard: sizes from batch 0
            for batch in self.data.source:
                x, y = self._prepare(batch)
                with torch.no_grad():
                    n_outputs = int(self.fmodel(self.params, x).shape[1])
                first_example = Batch(map_inputs(lambda t: t[:1].clone(), x), y[:1].clone())
                break
        if n_outputs is None or first_example is None:
            raise InputError("data holds no batch")
        self.first_example: Batch = first_example
        self.network_outputs = n_outputs
        self.n_outputs = 1 if outputs == "loss" else n_outputs
        self._place_batches([n * self.n_outputs for n in self.batch_rows])
        # Σ_n ℓ(f(θ*, x_n), y_n) of the same pass, over every rank
        self.loss_sum = all_reduce_float(loss_sum) if self.distributed else loss_sum
        self.n_data = self.global_rows // self.n_outputs
        self.batch_rows = [n * self.n_outputs for n in self.batch_rows]
        n_p = sum(t.numel() for t in self.params.values())
        super().__init__((self.global_rows, n_p), self._dtype, self._device)

    def _place_batches(self, rows: list[int]) -> None:
        """Global batch order and row positions: batch i of rank r's shard is batch r + iW."""
        w, r = (dist.get_world_size(), dist.get_rank()) if self.distributed else (1, 0)
        presharded = self.data.presharded
        # presharded loaders: the global order is rank 0's batches, then rank 1's, ...
        keys = [r * 2**40 + i if presharded else r + i * w for i in range(len(rows))]
        mine = torch.tensor([[k, n] for k, n in zip(keys, rows, strict=True)], dtype=torch.long)
        table = all_gather_cat(mine.reshape(-1, 2).to(self._device)).cpu()  # rank-major
        order = table[:, 0].argsort()  # global batch b is table row order[b]
        sizes = table[order, 1]
        global_starts = (torch.cumsum(sizes, 0) - sizes).tolist()
        start_of = {int(k): s for k, s in zip(table[order, 0], global_starts, strict=True)}
        index_of = {int(k): b for b, k in enumerate(table[order, 0])}
        self.global_rows = int(sizes.sum())
        self.batch_ids = [index_of[k] for k in keys]  # global index of each local batch
        self.example_starts = [start_of[k] // self.n_outputs for k in keys]

        def positions(ks: list[int], ns: list[int]) -> Tensor:
            ranges = [
                torch.arange(start_of[k], start_of[k] + n) for k, n in zip(ks, ns, strict=True)
            ]
            return torch.cat(ranges or [torch.zeros(0, dtype=torch.long)]).to(self._device)

        self._local_index = positions(keys, rows)  # global rows of this rank's rows
        self._gather_index = positions(table[:, 0].tolist(), table[:, 1].tolist())

    def gather_rows(self, local: Tensor) -> Tensor:
        """The data-space rows of every rank, in the global row order (this rank's, alone)."""
        if not self.distributed:
            return local
        gathered = all_gather_cat(local)
        out = gathered.new_empty(gathered.shape)
        out[self._gather_index] = gathered
        return out

    def local_rows(self, U: Tensor) -> Tensor:
        """This rank's rows of a replicated data-space block U (all of U with one process)."""
        return U if not self.distributed else U[self._local_index]

    def _prepare(self, batch: object) -> Batch:
        return to_model(read_batch(batch), self._device, self._dtype)

    def iter_batches(self) -> Iterator[Batch]:
        """The (x, y) batches in order, on the parameters' device (targets prepared)."""
        source = (
            self._cache if self._cache is not None else self.data.batches(self._device, self._dtype)
        )
        for x, y in source:
            target = self.loss.prepare_target(y, n_examples(x), self.network_outputs, self._dtype)
            yield Batch(x, target)

    def batch(self, index: int) -> Batch:
        """Batch ``index`` (random access: O(1) with ``cache=True``, a partial pass otherwise)."""
        for i, batch in enumerate(self.iter_batches()):
            if i == index:
                return batch
        raise IndexError(f"batch {index} out of range")

    @property
    def n_batches(self) -> int:
        """Number of batches (row blocks)."""
        return len(self.batch_rows)

    def _function(self, batch: int | Batch):
        x, y = self.batch(batch) if isinstance(batch, int) else batch
        if self.outputs == "loss":
            # row n is r_nᵀ J_n with r_n = ∂ℓ_n/∂f_n at θ* (the loss gradient, evaluated
            # without the cancellation of differentiating logsumexp(f) − f_y in float32)
            with torch.no_grad():
                r = self.loss.output_gradient(self.fmodel(self.params, x), y)
            return lambda p: (self.fmodel(p, x) * r).sum(-1)
        if self.outputs == "ggn":
            # rows S_nᵀ J_n with Λ_n = S_n S_nᵀ at θ* (fixed: the map stays linear in f)
            with torch.no_grad():
                s = self.loss.hessian_sqrt(self.fmodel(self.params, x), y)
            return lambda p: torch.einsum("no,noc->nc", self.fmodel(p, x), s).reshape(-1)
        return lambda p: self.fmodel(p, x).reshape(-1)

    def batch_matmat(self, index: int | Batch, V: Tensor) -> Tensor:
        """J_b V for batch ``index`` (or an (x, y) batch itself): (P, k) -> (rows_b, k)."""
        fn = self._function(index)

        def jv(t: dict[str, Tensor]) -> Tensor:
            return jvp(fn, (self.params,), (t,))[1]

        return vmap(jv, chunk_size=self.columns_per_chunk)(unflatten(V.T, self.params)).T

    def batch_rmatmat(self, index: int | Batch, U: Tensor) -> Tensor:
        """J_bᵀ U for batch ``index`` (or an (x, y) batch itself): (rows_b, k) -> (P, k)."""
        _, vjp_fn = vjp(self._function(index), self.params)
        out = vmap(vjp_fn, chunk_size=self.columns_per_chunk)(U.T)[0]
        return _flatten_rows(out, U.shape[1]).T

    def batch_gram(self, index: int, max_bytes: int = 2**28) -> Tensor:
        """J_b J_bᵀ (rows_b × rows_b): J_bᵀ by vmapped VJPs, then one matmul.

        When the rows_b × P block would exceed ``max_bytes``, the block is built a chunk
        of columns at a time as J_b (J_bᵀ E) with one VJP and one JVP per column.
        """
        rows = self.batch_rows[index]
        batch = self.batch(index)
        eye = torch.eye(rows, dtype=self.dtype, device=self.device)
        itemsize = torch.finfo(self.dtype).bits // 8
        chunk = max(1, min(rows, max_bytes // max(1, self.shape[1] * itemsize)))
        if chunk == rows:
            jt = self.batch_rmatmat(batch, eye)
            gram = jt.T @ jt
        else:
            cols = [
                self.batch_matmat(batch, self.batch_rmatmat(batch, eye[:, i : i + chunk]))
                for i in range(0, rows, chunk)
            ]
            gram = torch.cat(cols, dim=1)
        return 0.5 * (gram + gram.T)

    def _batch_factors(self, x: Inputs, y: Tensor, max_bytes: int = 2**62):
        return kernel_factors(
            self.fmodel.module,
            x,
            y,
            outputs=self.outputs,
            loss=self.loss_name,
            param_names=list(self.params),
            dtype=self.dtype,
            max_explicit_bytes=max_bytes,
        )

    def factor_bytes(self) -> int:
        """Bytes the per-layer factors of this rank's batches would take (from one example)."""
        x, y = self.first_example
        target = self.loss.prepare_target(y, 1, self.network_outputs, self.dtype)
        one = FactorProducts([self._batch_factors(x, target)], self._sizes())
        return one.nbytes() * (self.local_row_count // self.n_outputs)

    def _sizes(self) -> dict[str, int]:
        return {name: t.numel() for name, t in self.params.items()}

    def hold_factors(self, max_bytes: int, disk_bytes: int = 0) -> bool:
        """Keep every batch's per-layer factors when they fit ``max_bytes``; J V, Jᵀ U then use them.

        Factors over ``max_bytes`` but within ``disk_bytes`` (CPU only) go to memory-mapped
        files of a temporary directory (:class:`FactorFileStore`), removed with them.
        One pass over the data at θ*. The factor products are checked against autograd's
        on the first batch; a model they do not describe (a RuntimeWarning says so) keeps
        the autograd products. Returns whether the factors are held.
        """
        if self.factors is not None:
            return True
        try:
            need = self.factor_bytes()
            on_disk = need > max_bytes
            if on_disk and (need > disk_bytes or self.device.type != "cpu"):
                return False
            store = FactorFileStore() if on_disk else None
            gen = torch.Generator(device="cpu").manual_seed(0)
            v = torch.randn(self.shape[1], 2, generator=gen).to(self.device, self.dtype)
            batches, want = [], None
            for x, y in self.iter_batches():  # one batch's factors in memory at a time
                if want is None:  # autograd's J_1 v, to check the factors against
                    want = self.batch_matmat(Batch(x, y), v)
                f = self._batch_factors(x, y)
                batches.append(store.spill(f) if store is not None else f)
            factors = FactorProducts(batches, self._sizes(), store=store)
        except InputError:
            return False
        assert want is not None  # FactorProducts refuses an empty list
        got = factors.matmat(v)[0]
        tol = 1e-4 if self.dtype == torch.float32 else 1e-8
        if float((got - want).norm()) > tol * max(float(want.norm()), 1e-30):
            warnings.warn(
                "the per-layer Jacobian factors do not reproduce this model's Jacobian "
                "(a layer used in a way the factors do not describe); products stay "
                "with autograd",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        self.factors = factors
        return True

    @property
    def local_row_count(self) -> int:
        """Rows of J this rank owns (all of them with one process)."""
        return sum(self.batch_rows)

    def local_matmat(self, V: Tensor) -> Tensor:
        """This rank's rows of J V, in its batch order: (P, k) -> (local rows, k); no communication."""
        if self.factors is not None:
            parts = self.factors.matmat(V)
        else:
            parts = [self.batch_matmat(b, V) for b in self.iter_batches()]
        return torch.cat(parts) if parts else V.new_zeros(0, V.shape[1])

    def local_rmatmat(self, U: Tensor) -> Tensor:
        """Jᵀ U = Σ_ranks J_rᵀ U_r from this rank's rows U_r: (local rows, k) -> (P, k), all-reduced."""
        if U.shape[0] != self.local_row_count:
            raise InputError(f"U must have {self.local_row_count} rows here, got {U.shape[0]}")
        if self.factors is not None:
            return all_reduce_(self.factors.rmatmat(torch.split(U, self.batch_rows)))
        out = torch.zeros(self.shape[1], U.shape[1], dtype=self.dtype, device=self.device)
        start = 0
        for b, rows in zip(self.iter_batches(), self.batch_rows, strict=True):
            out += self.batch_rmatmat(b, U[start : start + rows])
            start += rows
        return all_reduce_(out)

    def row_inner(self, A: Tensor, B: Tensor) -> Tensor:
        """Per-column aᵀb of two sharded data-space blocks (this rank's rows): (k,), summed over ranks."""
        return all_reduce_((A * B).sum(0))

    def row_norms(self, A: Tensor) -> Tensor:
        """Per-column ‖a‖ of a sharded data-space block (this rank's rows), over every rank."""
        return self.row_inner(A, A).clamp_min(0).sqrt()

    def _matmat(self, v: Tensor) -> Tensor:
        return self.gather_rows(self.local_matmat(v))

    def _rmatmat(self, u: Tensor) -> Tensor:
        return self.local_rmatmat(self.local_rows(u))

    def _matvec(self, v: Tensor) -> Tensor:
        return self._matmat(v.unsqueeze(1)).squeeze(1)

    def _rmatvec(self, u: Tensor) -> Tensor:
        return self._rmatmat(u.unsqueeze(1)).squeeze(1)

    def params_flat(self) -> Tensor:
        """θ*, the flat vector of the free parameters."""
        return flatten(self.params).detach().clone()
