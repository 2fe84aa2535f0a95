"""The layers of a network that Kronecker-factored curvature reads, and one backward pass for them.

:func:`split_layers` sorts the selected parameters into nn.Linear / nn.Conv2d layers
(laid out as W̃ = [W, b], row-major, bias last) and the rest (normalization layers,
embeddings, parameters owned by a container). :func:`backprop_batch` runs one forward
pass with hooks and the C backward passes of the loss-Hessian factor S (Λ_n = S_n S_nᵀ),
batched into one call: for every factored layer it returns the input locations ã_nt and
the columns g_nct = ∂(f_nᵀ s_nc)/∂z_nt at the layer's output. KFAC and the exact GGN
diagonal are both built from these signals, at the cost of one such pass per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tacitbayes.batches import Inputs, n_examples
from tacitbayes.budget import items_per_chunk
from tacitbayes.curvature.losses import Loss
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel, exact_kernels

__all__ = [
    "FactoredLayer",
    "LayerSignals",
    "backprop_batch",
    "find_layers",
    "split_layers",
]


@dataclass
class FactoredLayer:
    """One Kronecker-factored layer: module, which parameters are free, where W̃ lives in θ.

    The weight occupies θ[w_offset : w_offset + out·features] (row-major) and the bias
    θ[b_offset : b_offset + out]; :meth:`read` and :meth:`write` move between a flat
    block (P, k) and W̃ blocks (k, out, d) by slicing, with no P-sized index tensor.
    """

    name: str
    module: nn.Linear | nn.Conv2d
    w_offset: int | None
    b_offset: int | None
    n_out: int
    d: int

    @property
    def weight(self) -> bool:
        """Whether the weight is a free parameter."""
        return self.w_offset is not None

    @property
    def bias(self) -> bool:
        """Whether the bias is a free parameter."""
        return self.b_offset is not None

    @property
    def n_features(self) -> int:
        """Columns of W̃ that belong to the weight (d minus the bias column)."""
        return self.d - int(self.bias)

    @property
    def index(self) -> Tensor:
        """(out·d,) flat positions of row-major vec(W̃), built on demand."""
        idx = torch.empty(self.n_out, self.d, dtype=torch.long)
        f = self.n_features
        if self.w_offset is not None:
            idx[:, :f] = self.w_offset + torch.arange(self.n_out * f).reshape(self.n_out, f)
        if self.b_offset is not None:
            idx[:, f] = self.b_offset + torch.arange(self.n_out)
        return idx.reshape(-1)

    def read(self, v: Tensor) -> Tensor:
        """W̃ blocks (k, out, d) of the columns of a flat block v (P, k)."""
        k, f, parts = v.shape[1], self.n_features, []
        if self.w_offset is not None:
            w = v[self.w_offset : self.w_offset + self.n_out * f]
            parts.append(w.T.reshape(k, self.n_out, f))
        if self.b_offset is not None:
            parts.append(v[self.b_offset : self.b_offset + self.n_out].T.unsqueeze(-1))
        return torch.cat(parts, -1) if len(parts) > 1 else parts[0]

    def write(self, out: Tensor, blocks: Tensor, add: bool = False) -> None:
        """Store (or add) W̃ blocks (k, out, d) into the columns of a flat block ``out`` (P, k)."""
        k, f = blocks.shape[0], self.n_features
        pieces = []
        if self.w_offset is not None:
            pieces.append((self.w_offset, blocks[..., :f].reshape(k, -1).T))
        if self.b_offset is not None:
            pieces.append((self.b_offset, blocks[..., f].T))
        for start, values in pieces:
            target = out[start : start + values.shape[0]]
            if add:
                target += values
            else:
                target.copy_(values)


def _label(name: str, module: nn.Module) -> str:
    """A readable name for a module in error messages."""
    kind = type(module).__name__
    return f"{name!r} ({kind})" if name else f"the root module ({kind})"


def _attention_submodules(model: nn.Module) -> set[int]:
    """ids of the submodules of every nn.MultiheadAttention (its out_proj Linear is never called)."""
    return {
        id(sub)
        for mod in model.modules()
        if isinstance(mod, nn.MultiheadAttention)
        for sub in mod.modules()
        if sub is not mod
    }


def split_layers(
    model: nn.Module, selected: tuple[str, ...]
) -> tuple[list[FactoredLayer], list[str]]:
    """Linear/Conv2d (groups=1) layers owning selected parameters in the W̃ = [W, b] layout, and
    the names of the selected parameters owned by any other module (norms, embeddings, ...).

    nn.MultiheadAttention reads its projections as tensors (``F.multi_head_attention_forward``
    takes ``in_proj_weight`` and ``out_proj.weight``; ``out_proj`` is never called as a module),
    so all its parameters, ``out_proj``'s included, are "other": exact diagonal blocks.
    """
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
    inside = _attention_submodules(model)
    supported = [
        (m, mod, own)
        for m, mod, own in found
        if id(mod) not in inside
        and (isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.groups == 1))
    ]
    kept = {id(mod) for _, mod, _ in supported}
    rest = [n for _, mod, own in found if id(mod) not in kept for n in own.values()]
    rest = [n for n in selected if n in set(rest)]
    layers = []
    for mname, mod, own in supported:
        w, b = own.get("weight"), own.get("bias")
        n_out = int(mod.weight.shape[0])
        n_feat = int(mod.weight[0].numel()) if w is not None else 0
        d = n_feat + (b is not None)
        w_off = offset[w] if w is not None else None
        b_off = offset[b] if b is not None else None
        layers.append(FactoredLayer(mname, mod, w_off, b_off, n_out, d))
    return layers, rest


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


def owner_of(name: str) -> str:
    """The module name that owns parameter ``name`` ("" for the root)."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def find_layers(model: nn.Module, selected: tuple[str, ...]) -> list[FactoredLayer]:
    """Linear/Conv2d layers owning the selected parameters, in the W̃ = [W, b] layout (else InputError)."""
    layers, rest = split_layers(model, selected)
    if rest:
        mods = dict(model.named_modules())
        owners: dict[str, list[str]] = {}
        for n in rest:
            owners.setdefault(owner_of(n), []).append(n)
        bad = [f"{_label(m, mods[m])} has parameters {names}" for m, names in owners.items()]
        raise InputError(
            "KFAC factors nn.Linear and nn.Conv2d (groups=1) called as modules only "
            "(not the projections of nn.MultiheadAttention); "
            + "; ".join(bad[:3])
            + (f"; and {len(bad) - 3} more such module(s)" if len(bad) > 3 else "")
            + " — pass param_names to restrict it to those layers "
            "(e.g. tacitbayes.functional.last_layer_names(model, x) for a batch of inputs x)"
        )
    return layers


def _out_locations(layer: FactoredLayer, g: Tensor) -> Tensor:
    """Output gradients (N, out, H, W) or (N, *, out) as (N, T, out)."""
    if isinstance(layer.module, nn.Conv2d):
        return g.flatten(2).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


@dataclass
class LayerSignals:
    """One layer's inputs ã (N, T, features) and backpropagated columns g (C', N, T, out)."""

    inputs: Tensor
    grads: Tensor


def backprop_batch(
    fmodel: FunctionalModel,
    loss: Loss,
    layers: list[FactoredLayer],
    x: Inputs,
    y: Tensor,
    shared: str = "raise",
    max_bytes: int | None = None,
    mc_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Iterator[dict[str, LayerSignals]]]:
    """One forward pass, then the backward passes of the columns of S (Λ = S Sᵀ), batched.

    Returns the outputs f (N, O), the prepared targets, the factor S (N, O, C) and an
    iterator over chunks of the C columns: per chunk, every layer's signals. With
    ``mc_samples = k`` the factor is the Monte Carlo one of the Fisher (k sampled
    columns, E[S̃S̃ᵀ] = Λ; for many classes), drawn with ``generator``. A
    chunk holds as many columns as keep the backpropagated signals under ``max_bytes``
    (:mod:`tacitbayes.budget`). ``shared="raise"`` refuses a layer called twice in one
    forward pass; ``"concat"`` stacks its calls as extra locations (exact for
    per-example gradients).
    """
    n = n_examples(x)
    calls: dict[str, list[tuple[Tensor, Tensor]]] = {la.name: [] for la in layers}

    def make_hook(layer: FactoredLayer) -> Callable[..., Tensor]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> Tensor:
            if calls[layer.name] and shared == "raise":
                raise InputError(
                    f"layer {layer.name!r} is called more than once per forward pass; "
                    "KFAC needs each Linear/Conv2d layer to be used once"
                )
            a = _locations(layer, inputs[0].detach(), n)
            z = output if output.requires_grad else output.detach().requires_grad_(True)
            calls[layer.name].append((a, z))
            return z.clone()  # downstream in-place ops must not rebase z's history

        return hook

    handles = [la.module.register_forward_hook(make_hook(la)) for la in layers]
    try:
        with torch.enable_grad(), exact_kernels():  # the hooks see the composite kernels
            f = fmodel(fmodel.params(), x)
    finally:
        for h in handles:
            h.remove()
    missing = [name for name, used in calls.items() if not used]
    if missing:
        raise InputError(
            f"layer(s) {missing} were not called as modules in the forward pass "
            "(their inputs are read with forward hooks; exclude them with param_names)"
        )
    if f.ndim != 2 or f.shape[0] != n:
        raise InputError(
            f"the model must map a batch to outputs of shape (N, O), got {tuple(f.shape)}"
        )
    y = loss.prepare_target(y, n, int(f.shape[1]), f.dtype)
    if mc_samples is None:
        factor = loss.hessian_sqrt(f.detach(), y)
    else:
        if generator is None:
            generator = torch.Generator(device=f.device).manual_seed(0)
        factor = loss.sampled_sqrt(f.detach(), mc_samples, generator)
    s = factor.movedim(-1, 0)  # (C, N, O)
    zs = [z for la in layers for _, z in calls[la.name]]
    per_column = 2 * sum(z.numel() for z in zs) * z_itemsize(zs)
    step = items_per_chunk(per_column, s.shape[0], max_bytes)

    def chunks() -> Iterator[dict[str, LayerSignals]]:
        for start in range(0, s.shape[0], step):
            cols = s[start : start + step]
            yield _signals(layers, calls, f, zs, cols, n)

    return f.detach(), y, factor, chunks()


def z_itemsize(zs: list[Tensor]) -> int:
    """Bytes per element of the layer outputs (8 when there are none)."""
    return zs[0].element_size() if zs else 8


def _signals(
    layers: list[FactoredLayer],
    calls: dict[str, list[tuple[Tensor, Tensor]]],
    f: Tensor,
    zs: list[Tensor],
    cols: Tensor,
    n: int,
) -> dict[str, LayerSignals]:
    """Backpropagate the columns ``cols`` (C', N, O) of S to every layer output, batched."""
    grads: list[Tensor | None] = [None] * len(zs)
    if zs and f.requires_grad:
        grads = list(
            torch.autograd.grad(
                f, zs, cols, retain_graph=True, is_grads_batched=True, allow_unused=True
            )
        )
    signals: dict[str, LayerSignals] = {}
    k = 0
    for la in layers:
        ins, outs = [], []
        for a, z in calls[la.name]:
            g = grads[k]
            k += 1
            if g is None:
                g = torch.zeros((cols.shape[0], *z.shape), dtype=z.dtype, device=z.device)
            outs.append(_out_locations(la, g.flatten(0, 1)).unflatten(0, (cols.shape[0], n)))
            ins.append(a)
        inputs = ins[0] if len(ins) == 1 else torch.cat(ins, 1)
        signals[la.name] = LayerSignals(inputs, outs[0] if len(outs) == 1 else torch.cat(outs, 2))
    return signals
