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
  only its bias selected has ã = [1] (d = 1).  A module that owns a selected parameter but is
  not an nn.Linear / nn.Conv2d (groups=1) raises InputError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tacitbayes.curvature.losses import Loss, get_loss
from tacitbayes.curvature.operators import LinearOperator, _check_batch, _free_params
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel
from tacitbayes.linalg import KroneckerProduct

__all__ = ["KFAC", "FactoredLayer", "find_layers"]

CONV_APPROX = ("expand", "reduce")
_NO_DATA = object()  # from_factors: build the layer structure without a data pass


@dataclass
class FactoredLayer:
    """One Kronecker-factored layer: module, which parameters are free, flat positions of W̃."""

    name: str
    module: nn.Linear | nn.Conv2d
    weight: bool
    bias: bool
    index: Tensor  # (out·d,) flat position of row-major vec(W̃)
    n_out: int
    d: int


def _label(name: str, module: nn.Module) -> str:
    """A readable name for a module in error messages."""
    kind = type(module).__name__
    return f"{name!r} ({kind})" if name else f"the root module ({kind})"


def find_layers(model: nn.Module, selected: tuple[str, ...]) -> list[FactoredLayer]:
    """Linear/Conv2d layers owning the selected parameters, in the W̃ = [W, b] layout (else InputError)."""
    live = dict(model.named_parameters())
    offset, start = {}, 0
    for n in selected:
        offset[n] = start
        start += live[n].numel()
    canonical = {id(p): n for n, p in model.named_parameters()}
    owners: dict[str, list[str]] = {}
    found: list[tuple[str, nn.Module, dict[str, str]]] = []
    for mname, module in model.named_modules():
        own = {
            pname: canonical[id(p)]
            for pname, p in module.named_parameters(recurse=False)
            if canonical[id(p)] in offset
        }
        for full in own.values():
            owners.setdefault(full, []).append(mname)
        if own:
            found.append((mname, module, own))
    shared = {n: m for n, m in owners.items() if len(m) > 1}
    if shared:
        raise InputError(f"KFAC cannot handle parameters shared between modules: {shared}")
    bad = [
        f"{_label(m, mod)} has parameters {sorted(own.values())}"
        for m, mod, own in found
        if not isinstance(mod, (nn.Linear, nn.Conv2d))
    ]
    if bad:
        raise InputError(
            "KFAC supports nn.Linear and nn.Conv2d; "
            + "; ".join(bad[:3])
            + (f"; and {len(bad) - 3} more such module(s)" if len(bad) > 3 else "")
            + " — pass param_names to restrict KFAC to supported layers "
            "(e.g. tacitbayes.functional.last_layer_names(model))"
        )
    layers = []
    for mname, mod, own in found:
        if isinstance(mod, nn.Conv2d) and mod.groups != 1:
            raise InputError(f"KFAC supports Conv2d with groups=1 only; {_label(mname, mod)}")
        w, b = own.get("weight"), own.get("bias")
        n_out = int(mod.weight.shape[0])
        n_feat = int(mod.weight[0].numel()) if w is not None else 0
        d = n_feat + (b is not None)
        index = torch.empty(n_out, d, dtype=torch.long)
        if w is not None:
            index[:, :n_feat] = offset[w] + torch.arange(n_out * n_feat).reshape(n_out, n_feat)
        if b is not None:
            index[:, n_feat] = offset[b] + torch.arange(n_out)
        layers.append(
            FactoredLayer(mname, mod, w is not None, b is not None, index.reshape(-1), n_out, d)
        )
    return layers


def _locations(layer: FactoredLayer, a: Tensor, n: int) -> Tensor:
    """Layer inputs a of shape (N, T, features): unfolded patches (Conv2d) or tokens (Linear)."""
    mod = layer.module
    conv = isinstance(mod, nn.Conv2d)
    if a.ndim < 2 or a.shape[0] != n or (conv and a.ndim != 4):
        need = "(N, C, H, W)" if conv else "(N, ..., features)"
        raise InputError(
            f"layer {layer.name!r} got an input of shape {tuple(a.shape)}; KFAC needs {need} "
            f"inputs with a leading batch dimension of N = {n} examples"
        )
    if isinstance(mod, nn.Conv2d):
        pad = [int(p) for p in mod._reversed_padding_repeated_twice]
        if any(pad):
            mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
            a = F.pad(a, pad, mode=mode)
        a = F.unfold(a, mod.kernel_size, dilation=mod.dilation, stride=mod.stride)
        return a.transpose(1, 2)  # (N, T, in·kh·kw)
    return a.reshape(n, -1, a.shape[-1])


def _input_moment(layer: FactoredLayer, a: Tensor, reduce: bool) -> tuple[Tensor, int]:
    """Σ_r ã_r ã_rᵀ over rows r (locations, or per-example location means) and the row count.

    ã = [a, 1] is never formed: the bias row/column is Σ_r a_r and the corner the count.
    """
    rows = a.mean(1) if reduce else a.reshape(-1, a.shape[-1])
    m = rows.new_zeros(layer.d, layer.d)
    f = layer.d - int(layer.bias)
    if layer.weight:
        m[:f, :f] = rows.mT @ rows
    if layer.bias:
        if layer.weight:
            m[:f, f] = m[f, :f] = rows.sum(0)
        m[f, f] = rows.shape[0]
    return m, int(rows.shape[0])


def _out_locations(layer: FactoredLayer, g: Tensor) -> Tensor:
    """Output gradients (N, out, H, W) or (N, *, out) as (N, T, out)."""
    if isinstance(layer.module, nn.Conv2d):
        return g.flatten(2).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


def _as_data(data: Any) -> Iterable[Any]:
    """A single (x, y) pair as a one-batch list, or the iterable of batches itself."""
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        return [tuple(data)]
    if isinstance(data, Tensor) or not isinstance(data, Iterable):
        raise InputError("data must be an (x, y) pair of Tensors or an iterable of (x, y) batches")
    return data


class KFAC(LinearOperator):
    """Block-diagonal KFAC GGN ≈ diag_l(G_l ⊗ A_l) over the Linear/Conv2d layers (module docstring).

    Attributes: ``layers`` (module names), ``factors`` ({name: (A, G)}), ``n_data`` (N),
    ``param_names``; ``kronecker(name)`` and ``flat_index(name)`` expose one block.
    ``@``, ``diagonal``, ``to_dense`` act in flat parameter order; ``solve``, ``logdet``,
    ``sample`` and ``sample_transform`` use KFAC + δI with δ = ``prior_precision`` (a scalar
    or one value per layer) through the eigendecompositions of the factors (cached).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | Loss,
        data: Any,
        reduction: str = "mean",
        param_names: str | Sequence[str] | None = None,
        conv_approx: str = "expand",
    ) -> None:
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
        self._layers = find_layers(model, self.param_names)
        for la in self._layers:
            la.index = la.index.to(device)
        self._by_name = {la.name: la for la in self._layers}
        self.n_data = 0
        self._eig: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        self.factors: dict[str, tuple[Tensor, Tensor]] = (
            {} if data is _NO_DATA else self._compute(_as_data(data))
        )

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
    ) -> KFAC:
        """A KFAC with given factors {layer: (A, G)} (e.g. restored from a state dict), no data pass."""
        kfac = cls(model, loss, _NO_DATA, reduction, param_names, conv_approx)
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
        """Accumulate Σ ããᵀ, its count and Σ ggᵀ over all batches; return {name: (A, G)}."""
        kw = {"dtype": self.dtype, "device": self.device}
        a_sum = {la.name: torch.zeros(la.d, la.d, **kw) for la in self._layers}
        g_sum = {la.name: torch.zeros(la.n_out, la.n_out, **kw) for la in self._layers}
        count = dict.fromkeys(a_sum, 0)
        n_total = 0
        for batch in data:
            x, y = _check_batch(batch)
            x, y = x.to(self.device), y.to(self.device)
            counts = self._batch(x, y, a_sum, g_sum)
            for k, c in counts.items():
                count[k] += c
            n_total += int(x.shape[0])
        if n_total == 0:
            raise InputError("data holds no example")
        self.n_data = n_total
        scale_g = 1.0 / n_total if self.reduction == "mean" else 1.0
        out = {}
        for name in a_sum:
            A = a_sum[name] / count[name]
            G = g_sum[name] * scale_g
            out[name] = (0.5 * (A + A.mT), 0.5 * (G + G.mT))
        return out

    def _batch(
        self, x: Tensor, y: Tensor, a_sum: dict[str, Tensor], g_sum: dict[str, Tensor]
    ) -> dict[str, int]:
        """One forward (hooks: A and layer outputs) and C backward passes to the layer outputs."""
        n = int(x.shape[0])
        reduce = self.conv_approx == "reduce"
        outs: dict[str, Tensor] = {}
        counts: dict[str, int] = {}

        def make_hook(layer: FactoredLayer) -> Callable[..., Tensor]:
            def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
                if layer.name in outs:
                    raise InputError(
                        f"layer {layer.name!r} is called more than once per forward pass; "
                        "KFAC needs each Linear/Conv2d layer to be used once"
                    )
                a = _locations(layer, inputs[0].detach(), n)
                m, counts[layer.name] = _input_moment(layer, a, reduce)
                a_sum[layer.name] += m
                z = output if output.requires_grad else output.detach().requires_grad_(True)
                outs[layer.name] = z
                return z.clone()  # downstream in-place ops must not rebase z's history

            return hook

        handles = [la.module.register_forward_hook(make_hook(la)) for la in self._layers]
        try:
            with torch.enable_grad():
                f = self.fmodel(self.fmodel.params(), x)
        finally:
            for h in handles:
                h.remove()
        missing = [la.name for la in self._layers if la.name not in outs]
        if missing:
            raise InputError(
                f"layer(s) {missing} were not called as modules in the forward pass "
                "(KFAC reads their inputs with forward hooks)"
            )
        if f.ndim != 2 or f.shape[0] != n:
            raise InputError(
                f"the model must map a batch to outputs of shape (N, O), got {tuple(f.shape)}"
            )
        y = self.loss.prepare_target(y, n, int(f.shape[1]), self.dtype)
        s = self.loss.hessian_sqrt(f.detach(), y)  # (N, O, C)
        names = list(outs)
        for c in range(s.shape[-1] if f.requires_grad else 0):
            grads = torch.autograd.grad(
                f, [outs[k] for k in names], s[..., c], retain_graph=True, allow_unused=True
            )
            for k, g in zip(names, grads, strict=True):
                if g is None:
                    continue
                g = _out_locations(self._by_name[k], g)
                rows = g.sum(1) if reduce else g.reshape(-1, g.shape[-1])
                g_sum[k] += rows.mT @ rows
        return counts

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
        return self._layer(name).index

    def kronecker(self, name: str) -> KroneckerProduct:
        """The layer's KFAC block G ⊗ A on row-major vec([W, b])."""
        self._layer(name)
        A, G = self.factors[name]
        return KroneckerProduct(G, A)

    def __repr__(self) -> str:
        return (
            f"KFAC(layers={self.layers}, n_data={self.n_data}, reduction={self.reduction!r}, "
            f"conv_approx={self.conv_approx!r}, P={self.shape[0]}, dtype={self.dtype})"
        )

    # ---- products and dense views ------------------------------------------------------------
    def _blockwise(self, v: Tensor, fn: Callable[[FactoredLayer, Tensor], Tensor]) -> Tensor:
        """Apply fn to every layer's W̃ blocks (k, out, d) of the columns of v (P, k); scatter back."""
        k = v.shape[1]
        out = torch.zeros_like(v)
        for la in self._layers:
            w = v[la.index].T.reshape(k, la.n_out, la.d)
            out[la.index] = fn(la, w).reshape(k, -1).T
        return out

    def _matmat(self, v: Tensor) -> Tensor:
        """Blockwise W̃ ↦ G W̃ A (A symmetric) on the columns of v (P, k)."""

        def one(la: FactoredLayer, w: Tensor) -> Tensor:
            A, G = self.factors[la.name]
            return G @ w @ A

        return self._blockwise(v, one)

    def diagonal(self) -> Tensor:
        """diag(KFAC) = diag G ⊗ diag A per layer, in flat order."""
        out = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        for la in self._layers:
            out[self.flat_index(la.name)] = self.kronecker(la.name).diag()
        return out

    def to_dense(self) -> Tensor:
        """The block-diagonal P×P matrix in flat order (small problems and tests only)."""
        out = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        for la in self._layers:
            idx = self.flat_index(la.name)
            out[idx[:, None], idx[None, :]] = self.kronecker(la.name).to_dense()
        return out

    # ---- damped inverse via eigendecompositions ----------------------------------------
    def _eigh(self, name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(λ_G, Q_G, λ_A, Q_A) with eigenvalues clamped at 0 (cached)."""
        if name not in self._eig:
            A, G = self.factors[name]
            lam_g, q_g = torch.linalg.eigh(G)
            lam_a, q_a = torch.linalg.eigh(A)
            self._eig[name] = (lam_g.clamp_min(0), q_g, lam_a.clamp_min(0), q_a)
        return self._eig[name]

    def _deltas(self, prior_precision: float | Tensor) -> list[Tensor]:
        """Per-layer damping δ_l > 0 from a scalar or a tensor of shape (n_layers,)."""
        n_layers = len(self._layers)
        if isinstance(prior_precision, bool) or not isinstance(
            prior_precision, (int, float, Tensor)
        ):
            raise InputError(
                f"prior_precision must be a number or a Tensor, got {type(prior_precision).__name__}"
            )
        d = torch.as_tensor(prior_precision, dtype=self.dtype, device=self.device)
        if d.ndim == 0 or d.numel() == 1:
            d = d.reshape(()).expand(n_layers)
        elif d.shape != (n_layers,):
            raise InputError(
                f"prior_precision must be a scalar or have shape ({n_layers},) (one per layer "
                f"{self.layers}), got shape {tuple(d.shape)}"
            )
        with torch.no_grad():
            if not bool(torch.isfinite(d).all()) or bool((d <= 0).any()):
                raise InputError(f"prior_precision must be finite and > 0, got {d.tolist()}")
        return list(d.unbind(0))

    def _damped(self, prior_precision: float | Tensor) -> dict[str, Tensor]:
        """Per layer the eigenvalues M = λ_G λ_Aᵀ + δ of G ⊗ A + δI, shape (out, d)."""
        out = {}
        for la, delta in zip(self._layers, self._deltas(prior_precision), strict=True):
            lam_g, _, lam_a, _ = self._eigh(la.name)
            out[la.name] = lam_g[:, None] * lam_a[None, :] + delta
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

        out = self._blockwise(V, one)
        return out.squeeze(1) if was_vector else out

    def logdet(self, prior_precision: float | Tensor) -> Tensor:
        """log det(KFAC + δI) = Σ_l Σ_{i,j} log(λ_G,i λ_A,j + δ_l) (differentiable in δ)."""
        return sum(m.log().sum() for m in self._damped(prior_precision).values())  # type: ignore[return-value]

    def sample_transform(self, z: Tensor, prior_precision: float | Tensor) -> Tensor:
        """Map standard-normal z (P,) or (P, k) to N(0, (KFAC + δI)⁻¹): W̃ ↦ Q_G (Z̃ / √M) Q_Aᵀ."""
        Z, was_vector = self._checked(z)
        damped = self._damped(prior_precision)

        def one(la: FactoredLayer, w: Tensor) -> Tensor:
            _, q_g, _, q_a = self._eigh(la.name)
            return q_g @ (w * damped[la.name].rsqrt()) @ q_a.mT

        out = self._blockwise(Z, one)
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
