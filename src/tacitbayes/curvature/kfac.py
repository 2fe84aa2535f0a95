"""Kronecker-factored GGN (KFAC) for the nn.Linear and nn.Conv2d layers of a network.

Conventions:

* A layer's free parameters are laid out as W̃ = [W, b] of shape (out, d): W reshaped to
  (out, features) (Conv2d: features = in·kh·kw, the order of ``F.unfold`` patches), and the
  bias, if selected, as a last column (its input is the constant 1).  ``vec(W̃)`` is row-major,
  entry (o, i) at o·d + i, so the layer's KFAC block is ``KroneckerProduct(G, A)`` =
  G ⊗ A with G (out×out) acting on rows and A (d×d) on columns: (G ⊗ A) vec(W̃) = vec(G W̃ A).
* Flat vectors (``@``, ``diagonal``, ``solve``, ``sample``, ``to_dense``) are in the order of
  :func:`tacitbayes.functional.flatten` (``named_parameters()``: weight entries, then bias
  entries); the permutation to and from the [W, b] layout is ``flat_index(name)``.
* Exact GGN expectation, no Monte Carlo: with Λ_n = S_n S_nᵀ (C columns s_nc, see
  :mod:`tacitbayes.curvature.losses`), g_nct = ∂(f_nᵀ s_nc)/∂z_nt is the backpropagated column c
  at the layer output z at location t (t = one spatial position of a Conv2d, one token of a
  Linear applied to (N, *, D) inputs; T = 1 for a plain Linear).  ã_nt = [a_nt, 1].
* ``conv_approx="expand"`` (KFC, Grosse & Martens 2016; KFAC-expand, Eschenhagen et al. 2023;
  the N·T locations count as examples):
  A = (1/(N·T)) Σ_{n,t} ã_nt ã_ntᵀ,  G = Σ_{n,c,t} g_nct g_nctᵀ.
  The 1/T makes the block exact when the loss is a sum over locations of a linear layer
  (tested); with A = (1/N)Σ ããᵀ the block would be T times too large.
* ``conv_approx="reduce"`` (KFAC-reduce, Eschenhagen et al. 2023, with its 1/T² scaling):
  A = (1/(N·T²)) Σ_n (Σ_t ã_nt)(Σ_t ã_nt)ᵀ,  G = Σ_{n,c} (Σ_t g_nct)(Σ_t g_nct)ᵀ.
  Exact for N = 1 when the locations are mean-pooled right after the layer (tested).
  Both settings apply to every layer with T > 1 (Conv2d, and Linear on tokens).
* For T = 1 both reduce to A = (1/N) Σ_n ã ãᵀ, G = Σ_{n,c} g gᵀ, so G ⊗ A = N·E[ããᵀ] ⊗ E[Σ_c ggᵀ]
  (exact for N = 1).  The factors above are for ``reduction="sum"`` (L = Σ_n ℓ_n);
  ``reduction="mean"`` (L = (1/N)Σ_n ℓ_n) divides G by N.  A is never rescaled.
* A layer with only its weight selected gets no bias column (the bias is held fixed); one with
  only its bias selected has ã = [1] (d = 1).
* Every other selected parameter (BatchNorm / LayerNorm / GroupNorm affine parameters,
  embeddings, parameters owned by a container such as a ViT's positional embedding) gets
  an exact *diagonal* GGN block, Σ_n Σ_c (J_nᵀ s_nc)², one block per owning module, computed
  in the same pass (:mod:`tacitbayes.curvature.diagonal`). ``blocks`` lists the Kronecker
  and diagonal blocks in ``named_modules()`` order; a per-block δ follows that order.
* The C backward passes of a batch run as one batched call (``is_grads_batched``); the
  loader is read once, and the summed loss Σ_n ℓ_n at θ* is recorded (``loss_sum``).
* ``mc_samples = k`` replaces the C exact columns by k Monte Carlo columns of the Fisher
  (sampled labels; E[S̃S̃ᵀ] = Λ), seeded by ``seed``: for outputs with many classes.
* Under ``torch.distributed`` each rank reads its shard of the (same) loader; the raw sums
  Σ ããᵀ, Σ ggᵀ, the diagonal blocks, the counts and Σ ℓ are all-reduced before normalising,
  so every rank holds the global factors (Monte Carlo columns: seed + rank per rank).
* The running sums (Σ ããᵀ, Σ ggᵀ, the diagonal blocks) are kept in float64: each batch's
  product is formed in the model's dtype and added to a float64 sum, and the factors are cast
  back to the model's dtype at the end.  A float32 running sum loses accuracy as batches add
  up (the 10×10 G of a 784-64-10 MLP over 469 fashion-mnist batches: 2.7e-5 relative, with
  a null eigenvalue pushed negative); the float64 sum keeps it under 3e-7.  Memory: the sums
  take d_in² + d_out² float64 entries per layer during the pass (twice a float32 factor),
  plus one d×d product in the model's dtype per batch.  On ``mps`` (no float64) the sums stay
  in the model's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tacitbayes.budget import check_count
from tacitbayes.curvature.columns import per_example_columns, reduce_pass
from tacitbayes.curvature.layers import (
    FactoredLayer,
    LayerSignals,
    backprop_batch,
    find_layers,
    owner_of,
    split_layers,
)
from tacitbayes.curvature.losses import Loss, get_loss
from tacitbayes.curvature.operators import LinearOperator, _free_params
from tacitbayes.data_pass import DataPass, data_pass
from tacitbayes.distributed import all_reduce_, rank
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel
from tacitbayes.linalg import KroneckerProduct
from tacitbayes.linalg.eigen import symmetric_eigh

__all__ = ["KFAC", "FactoredLayer", "find_layers"]  # the last two re-exported from layers

CONV_APPROX = ("expand", "reduce")
_NO_DATA = object()  # from_factors: build the layer structure without a data pass


def _sum_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """float64 for the running sums of the factors, or ``dtype`` on mps (which has no float64)."""
    return dtype if torch.device(device).type == "mps" else torch.float64


def _add_input_moment(layer: FactoredLayer, a: Tensor, reduce: bool, m: Tensor) -> int:
    """m += Σ_r ã_r ã_rᵀ over rows r (locations, or per-example location means); the row count.

    ã = [a, 1] is never formed: the bias row/column is Σ_r a_r and the corner the count.
    The batch's product is formed in a's dtype (one f×f temporary) and added to m, which may
    be of a wider dtype (the float64 running sum of :class:`KFAC`).
    """
    rows = a.mean(1) if reduce else a.reshape(-1, a.shape[-1])
    f = layer.d - int(layer.bias)
    if layer.weight:
        m[:f, :f] += rows.mT @ rows
    if layer.bias:
        if layer.weight:
            total = rows.sum(0)
            m[:f, f] += total
            m[f, :f] += total
        m[f, f] += rows.shape[0]
    return int(rows.shape[0])


def _symmetrize_(m: Tensor, scale: float) -> Tensor:
    """m ← scale · (m + mᵀ)/2 in place (one transposed copy as the only temporary)."""
    upper = m.mT.clone()
    return m.add_(upper).mul_(0.5 * scale)


def _as_data(data: Any) -> DataPass:
    """The data pass over ``data`` (a single batch is a one-batch loader)."""
    return data_pass(data)


class KFAC(LinearOperator):
    """Block-diagonal KFAC GGN ≈ diag_l(G_l ⊗ A_l) over the Linear/Conv2d layers (module docstring).

    Attributes: ``layers`` (factored module names), ``factors`` ({name: (A, G)}),
    ``diagonals`` ({module: exact GGN diagonal} for parameters outside Linear/Conv2d),
    ``blocks`` (all block names), ``n_data`` (N), ``loss_sum`` (Σ ℓ_n at θ*),
    ``param_names``; ``kronecker(name)`` and ``flat_index(name)`` expose one layer.
    ``@``, ``diagonal``, ``to_dense`` act in flat parameter order; ``solve``, ``logdet``,
    ``sample`` and ``sample_transform`` use KFAC + δI with δ = ``prior_precision`` (a scalar
    or one value per block of ``blocks``) through the eigendecompositions of the factors (cached).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | Loss,
        data: Any,
        reduction: str = "mean",
        param_names: str | Sequence[str] | None = None,
        conv_approx: str = "expand",
        mc_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        check_count("mc_samples", mc_samples)
        self.mc_samples, self.seed = mc_samples, int(seed)
        if reduction not in ("mean", "sum"):
            raise InputError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if conv_approx not in CONV_APPROX:
            raise InputError(f"conv_approx must be one of {list(CONV_APPROX)}, got {conv_approx!r}")
        self.loss = get_loss(loss)
        self.reduction, self.conv_approx = reduction, conv_approx
        self.fmodel = FunctionalModel(model, param_names)
        self.param_names = self.fmodel.param_names
        params, dtype, device = _free_params(self.fmodel)
        n_p = sum(int(t.numel()) for t in params.values())
        super().__init__((n_p, n_p), dtype, device, symmetric=True)
        self._layers, self._rest = split_layers(model, self.param_names)
        self._by_name = {la.name: la for la in self._layers}
        self._diag_index = self._diagonal_blocks(params)
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        self.blocks: list[str] = sorted([*self._by_name, *self._diag_index], key=order.__getitem__)
        self.n_data = self.n_outputs = 0
        self.loss_sum = 0.0
        self._eig: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        self.diagonals: dict[str, Tensor] = {}
        self.factors: dict[str, tuple[Tensor, Tensor]] = (
            {} if data is _NO_DATA else self._compute(_as_data(data))
        )

    def _diagonal_blocks(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """{owning module: flat positions} of the parameters outside Linear/Conv2d layers."""
        index: dict[str, list[Tensor]] = {}
        start = 0
        rest = set(self._rest)
        for name, t in params.items():
            if name in rest:
                positions = torch.arange(start, start + t.numel(), device=self.device)
                index.setdefault(owner_of(name), []).append(positions)
            start += t.numel()
        return {k: torch.cat(v) for k, v in index.items()}

    @classmethod
    def from_factors(
        cls,
        model: nn.Module,
        loss: str | Loss,
        factors: dict[str, tuple[Tensor, Tensor]],
        n_data: int,
        reduction: str = "mean",
        param_names: str | Sequence[str] | None = None,
        conv_approx: str = "expand",
        diagonals: dict[str, Tensor] | None = None,
    ) -> KFAC:
        """A KFAC with given factors {layer: (A, G)} and diagonal blocks (a state dict), no data pass."""
        kfac = cls(model, loss, _NO_DATA, reduction, param_names, conv_approx)
        diagonals = diagonals or {}
        if sorted(diagonals) != sorted(kfac._diag_index):
            raise InputError(
                f"diagonal blocks are given for {sorted(diagonals)}, the model has diagonal "
                f"blocks {sorted(kfac._diag_index)}"
            )
        for name, index in kfac._diag_index.items():
            d = diagonals[name]
            if tuple(d.shape) != (len(index),):
                raise InputError(f"diagonal block {name!r} must have shape ({len(index)},)")
            kfac.diagonals[name] = d.to(dtype=kfac.dtype, device=kfac.device).clone()
        if sorted(factors) != sorted(kfac.layers):
            raise InputError(
                f"factors are given for layers {sorted(factors)}, the model's KFAC layers are "
                f"{sorted(kfac.layers)}"
            )
        for la in kfac._layers:
            A, G = factors[la.name]
            if tuple(A.shape) != (la.d, la.d) or tuple(G.shape) != (la.n_out, la.n_out):
                raise InputError(
                    f"factors of layer {la.name!r} must have shapes ({la.d}, {la.d}) and "
                    f"({la.n_out}, {la.n_out}), got {tuple(A.shape)} and {tuple(G.shape)}"
                )
            kw = {"dtype": kfac.dtype, "device": kfac.device}
            kfac.factors[la.name] = (A.to(**kw).clone(), G.to(**kw).clone())
        kfac.n_data = int(n_data)
        return kfac

    # ---- factor computation --------------------------------------------------------------
    def _compute(self, data: Iterable[Any]) -> dict[str, tuple[Tensor, Tensor]]:
        """One pass: Σ ããᵀ, its count, Σ ggᵀ, the diagonal blocks and Σ ℓ; return {name: (A, G)}.

        The sums are float64 (:func:`_sum_dtype`); the factors and diagonals returned are
        cast to the model's dtype.
        """
        kw = {"dtype": _sum_dtype(self.dtype, self.device), "device": self.device}
        a_sum = {la.name: torch.zeros(la.d, la.d, **kw) for la in self._layers}
        g_sum = {la.name: torch.zeros(la.n_out, la.n_out, **kw) for la in self._layers}
        d_sum = {k: torch.zeros(len(v), **kw) for k, v in self._diag_index.items()}
        count = dict.fromkeys(a_sum, 0)
        n_total, loss_sum = 0, 0.0
        gen = torch.Generator(device=self.device).manual_seed(self.seed + rank())
        n_outputs = 0
        for x, y in _as_data(data).batches(self.device, self.dtype):
            f, y, factor, chunks = backprop_batch(
                self.fmodel,
                self.loss,
                self._layers,
                x,
                y,
                mc_samples=self.mc_samples,
                generator=gen,
            )
            loss_sum += float(self.loss.value(f, y).sum())
            for i, signals in enumerate(chunks):
                for la in self._layers:
                    rows = self._accumulate(la, signals[la.name], a_sum, g_sum, inputs=i == 0)
                    count[la.name] += rows
            if self._rest:
                self._accumulate_diagonal(x, factor, d_sum)
            n_total, n_outputs = n_total + int(f.shape[0]), int(f.shape[1])
        n_total, self.n_outputs, loss_sum = reduce_pass(n_total, n_outputs, loss_sum, self.device)
        if n_total == 0:
            raise InputError("data holds no example")
        counts = torch.tensor([count[k] for k in a_sum], dtype=torch.float64, device=self.device)
        count = dict(zip(a_sum, (int(c) for c in all_reduce_(counts).tolist()), strict=True))
        for t in (*a_sum.values(), *g_sum.values(), *d_sum.values()):
            all_reduce_(t)
        self.n_data, self.loss_sum = n_total, loss_sum
        scale_g = 1.0 / n_total if self.reduction == "mean" else 1.0
        self.diagonals = {k: (v * scale_g).to(self.dtype) for k, v in d_sum.items()}
        out = {}
        for name in list(a_sum):
            A = _symmetrize_(a_sum.pop(name), 1.0 / count[name]).to(self.dtype)
            out[name] = (A, _symmetrize_(g_sum.pop(name), scale_g).to(self.dtype))
        return out

    def _accumulate(
        self,
        layer: FactoredLayer,
        signals: LayerSignals,
        a_sum: dict[str, Tensor],
        g_sum: dict[str, Tensor],
        inputs: bool = True,
    ) -> int:
        """Add a chunk's Σ ggᵀ of a layer (and, if ``inputs``, the batch's Σ ããᵀ); its input rows.

        Each product is formed in the signals' dtype and added to the (float64) running sums.
        """
        reduce = self.conv_approx == "reduce"
        rows_a = 0
        if inputs:
            rows_a = _add_input_moment(layer, signals.inputs, reduce, a_sum[layer.name])
        g = signals.grads  # (C, N, T, out)
        rows = g.sum(2) if reduce else g
        rows = rows.reshape(-1, g.shape[-1])
        g_sum[layer.name] += rows.mT @ rows
        return rows_a

    def _accumulate_diagonal(self, x: Any, s: Tensor, d_sum: dict[str, Tensor]) -> None:
        """Add Σ_n Σ_c (J_nᵀ s_nc)² of the parameters outside Linear/Conv2d layers."""
        acc = torch.zeros(sum(len(v) for v in d_sum.values()), dtype=self.dtype, device=self.device)
        for cols in per_example_columns(self.fmodel.module, self._rest, x, s):
            acc += cols.square().sum((0, 1))
        # the columns follow the flat parameter order, as do the blocks' positions
        flat = torch.cat(list(self._diag_index.values())).sort().values
        for name, index in self._diag_index.items():
            d_sum[name] += acc[torch.searchsorted(flat, index)]

    # ---- structure -----------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Names of the factored modules, in ``named_modules()`` order."""
        return [la.name for la in self._layers]

    def _layer(self, name: str) -> FactoredLayer:
        if name not in self._by_name:
            raise InputError(f"unknown KFAC layer {name!r}; layers are {self.layers}")
        return self._by_name[name]

    def flat_index(self, name: str) -> Tensor:
        """Flat positions of the row-major entries of W̃ = [W, b]: vec(W̃) = θ[flat_index]."""
        return self._layer(name).index.to(self.device)

    def kronecker(self, name: str) -> KroneckerProduct:
        """The layer's KFAC block G ⊗ A on row-major vec([W, b])."""
        self._layer(name)
        A, G = self.factors[name]
        return KroneckerProduct(G, A)

    def __repr__(self) -> str:
        return (
            f"KFAC(layers={self.layers}, diagonal_blocks={list(self._diag_index)}, n_data={self.n_data}, reduction={self.reduction!r}, "
            f"conv_approx={self.conv_approx!r}, P={self.shape[0]}, dtype={self.dtype})"
        )

    # ---- products and dense views ------------------------------------------------------------
    def _blockwise(
        self,
        v: Tensor,
        fn: Callable[[FactoredLayer, Tensor], Tensor],
        diag_fn: Callable[[str, Tensor], Tensor],
    ) -> Tensor:
        """fn on every layer's W̃ blocks (k, out, d) of v (P, k), diag_fn on every diagonal block's rows."""
        out = torch.zeros_like(v)
        for la in self._layers:
            la.write(out, fn(la, la.read(v)))
        for name, index in self._diag_index.items():
            out[index] = diag_fn(name, v[index])
        return out

    def _matmat(self, v: Tensor) -> Tensor:
        """Blockwise W̃ ↦ G W̃ A (A symmetric), and h ⊙ v on the diagonal blocks."""

        def one(la: FactoredLayer, w: Tensor) -> Tensor:
            A, G = self.factors[la.name]
            return G @ w @ A

        return self._blockwise(v, one, lambda name, rows: self.diagonals[name][:, None] * rows)

    def diagonal(self) -> Tensor:
        """diag(KFAC) = diag G ⊗ diag A per layer, and the diagonal blocks, in flat order."""
        out = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        for la in self._layers:
            la.write(out[:, None], self.kronecker(la.name).diag().reshape(1, la.n_out, la.d))
        for name, index in self._diag_index.items():
            out[index] = self.diagonals[name]
        return out

    def to_dense(self) -> Tensor:
        """The block-diagonal P×P matrix in flat order (small problems and tests only)."""
        out = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        for la in self._layers:
            idx = self.flat_index(la.name)
            out[idx[:, None], idx[None, :]] = self.kronecker(la.name).to_dense()
        for name, index in self._diag_index.items():
            out[index, index] = self.diagonals[name]
        return out

    # ---- damped inverse via eigendecompositions ----------------------------------------
    def _eigh(self, name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(λ_G, Q_G, λ_A, Q_A) with eigenvalues clamped at 0 (cached)."""
        if name not in self._eig:
            A, G = self.factors[name]
            lam_g, q_g = symmetric_eigh(G, f"the KFAC factor G of layer {name!r}")
            lam_a, q_a = symmetric_eigh(A, f"the KFAC factor A of layer {name!r}")
            self._eig[name] = (lam_g.clamp_min(0), q_g, lam_a.clamp_min(0), q_a)
        return self._eig[name]

    def _deltas(self, prior_precision: float | Tensor) -> list[Tensor]:
        """Per-block damping δ_b > 0 from a scalar or a tensor of shape (n_blocks,) in ``blocks`` order."""
        n_blocks = len(self.blocks)
        if isinstance(prior_precision, bool) or not isinstance(
            prior_precision, (int, float, Tensor)
        ):
            raise InputError(
                f"prior_precision must be a number or a Tensor, got {type(prior_precision).__name__}"
            )
        d = torch.as_tensor(prior_precision, dtype=self.dtype, device=self.device)
        if d.ndim == 0 or d.numel() == 1:
            d = d.reshape(()).expand(n_blocks)
        elif d.shape != (n_blocks,):
            raise InputError(
                f"prior_precision must be a scalar or have shape ({n_blocks},) (one per block "
                f"{self.blocks}), got shape {tuple(d.shape)}"
            )
        with torch.no_grad():
            if not bool(torch.isfinite(d).all()) or bool((d <= 0).any()):
                raise InputError(f"prior_precision must be finite and > 0, got {d.tolist()}")
        return list(d.unbind(0))

    def _damped(self, prior_precision: float | Tensor) -> dict[str, Tensor]:
        """Per block the eigenvalues of the damped block: λ_G λ_Aᵀ + δ (out, d), or h + δ."""
        out = {}
        for name, delta in zip(self.blocks, self._deltas(prior_precision), strict=True):
            if name in self._by_name:
                lam_g, _, lam_a, _ = self._eigh(name)
                out[name] = lam_g[:, None] * lam_a[None, :] + delta
            else:
                out[name] = self.diagonals[name].clamp_min(0) + delta
        return out

    def _checked(self, v: Tensor) -> tuple[Tensor, bool]:
        """Validate v and view it as a block (P, k); also say whether it was a vector."""
        self._check(v, self.shape[0])
        return (v.unsqueeze(1), True) if v.ndim == 1 else (v, False)

    def solve(self, v: Tensor, prior_precision: float | Tensor) -> Tensor:
        """(KFAC + δI)⁻¹ v blockwise: W̃ ↦ Q_G [(Q_Gᵀ W̃ Q_A) / (λ_G λ_Aᵀ + δ)] Q_Aᵀ."""
        V, was_vector = self._checked(v)
        damped = self._damped(prior_precision)

        def one(la: FactoredLayer, w: Tensor) -> Tensor:
            _, q_g, _, q_a = self._eigh(la.name)
            return q_g @ ((q_g.mT @ w @ q_a) / damped[la.name]) @ q_a.mT

        out = self._blockwise(V, one, lambda name, rows: rows / damped[name][:, None])
        return out.squeeze(1) if was_vector else out

    def logdet(self, prior_precision: float | Tensor) -> Tensor:
        """log det(KFAC + δI) = Σ_l Σ_{i,j} log(λ_G,i λ_A,j + δ_l) + Σ_b Σ_i log(h_i + δ_b) (differentiable in δ).

        Logs and sum in float64 (a float64 0-d tensor): a float32 sum over P terms carries an
        error of order one, enough to move an evidence search from run to run.
        """
        return sum(m.double().log().sum() for m in self._damped(prior_precision).values())  # type: ignore[return-value]

    def sample_transform(self, z: Tensor, prior_precision: float | Tensor) -> Tensor:
        """Map standard-normal z (P,) or (P, k) to N(0, (KFAC + δI)⁻¹) by the symmetric square root.

        W̃ ↦ Q_G ((Q_Gᵀ W̃ Q_A) / √M) Q_Aᵀ: the same matrix whatever eigenbasis ``eigh``
        returns (signs, rotations within repeated eigenvalues), so a sample is a continuous
        function of the factors and agrees between runs that sum them in another order.
        """
        Z, was_vector = self._checked(z)
        damped = self._damped(prior_precision)

        def one(la: FactoredLayer, w: Tensor) -> Tensor:
            _, q_g, _, q_a = self._eigh(la.name)
            return q_g @ ((q_g.mT @ w @ q_a) * damped[la.name].rsqrt()) @ q_a.mT

        out = self._blockwise(Z, one, lambda name, rows: rows * damped[name].rsqrt()[:, None])
        return out.squeeze(1) if was_vector else out

    def sample(
        self,
        n_samples: int,
        prior_precision: float | Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draws (n_samples, P) from N(0, (KFAC + δI)⁻¹) in flat parameter order."""
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise InputError(f"n_samples must be a positive integer, got {n_samples!r}")
        z = torch.randn(
            self.shape[0], n_samples, dtype=self.dtype, device=self.device, generator=generator
        )
        return self.sample_transform(z, prior_precision).mT
