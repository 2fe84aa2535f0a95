"""Per-example GGN columns J_nᵀ s_nc and the exact GGN diagonal and dense block built from them.

G = Σ_n J_nᵀ Λ_n J_n = Σ_n Σ_c (J_nᵀ s_nc)(J_nᵀ s_nc)ᵀ with Λ_n = S_n S_nᵀ.

* Diagonal, at the cost of one KFAC pass: the per-example gradient of f_nᵀ s_nc with
  respect to a Linear/Conv2d weight is Σ_t g_nct ã_ntᵀ (:func:`layers.backprop_batch`), so
  the layer's diagonal is Σ_{n,c} (Σ_t g_nct ã_ntᵀ)² entrywise; for T = 1 it is the matrix
  product (Σ_c g²)ᵀ ã² (BackPACK's DiagGGN formula). Every other parameter (normalization
  layers, embeddings, parameters of containers) gets its columns J_nᵀ s_nc by ``torch.func``
  (vmap over examples of a VJP restricted to those parameters), a bounded number of
  examples at a time.
* Dense block of a parameter subset (last-layer Laplace): Σ of the columns' outer products.

Each pass reads the loader once and also returns N, O and Σ_n ℓ_n at θ* (:class:`GGNPass`).
Under ``torch.distributed`` each rank reads its shard of the (same) loader and the curvature,
N and Σ_n ℓ_n are all-reduced (:func:`reduce_pass`): every rank holds the global result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import vjp, vmap

from tacitbayes.batches import Inputs, map_inputs, slice_inputs
from tacitbayes.budget import check_count, items_per_chunk
from tacitbayes.curvature.layers import FactoredLayer, LayerSignals, backprop_batch, split_layers
from tacitbayes.curvature.losses import Loss, get_loss
from tacitbayes.data_pass import data_pass
from tacitbayes.distributed import all_reduce_, is_distributed, rank
from tacitbayes.errors import InputError
from tacitbayes.functional import FunctionalModel, is_vmap_trace_error, warn_per_example_loop

__all__ = [
    "GGNPass",
    "dense_ggn_pass",
    "diagonal_ggn_pass",
    "ggn_diagonal",
    "layer_diagonal",
    "per_example_columns",
    "reduce_pass",
]


def layer_diagonal(
    layer: FactoredLayer, signals: LayerSignals
) -> tuple[Tensor | None, Tensor | None]:
    """Σ_{n,c} (Σ_t g_nct ã_ntᵀ)² as (weight part (out, features) or None, bias part (out,) or None)."""
    a, g = signals.inputs, signals.grads  # (N, T, f), (C, N, T, out)
    weight = bias = None
    if layer.weight:
        if a.shape[1] == 1:
            weight = g[:, :, 0].square().sum(0).mT @ a[:, 0].square()
        else:
            weight = a.new_zeros(layer.n_out, a.shape[-1])
            item = g.shape[0] * layer.n_out * a.shape[-1] * a.element_size()
            per = items_per_chunk(item, a.shape[0])
            for start in range(0, a.shape[0], per):
                stop = start + per
                grads = torch.einsum("cnto,nti->cnoi", g[:, start:stop], a[start:stop])
                weight += grads.square().sum((0, 1))
    if layer.bias:
        bias = g.sum(2).square().sum((0, 1))
    return weight, bias


def _add_layer_diagonal(total: Tensor, layer: FactoredLayer, signals: LayerSignals) -> None:
    """total[θ of the layer] += its exact GGN diagonal, by slices of the flat vector."""
    weight, bias = layer_diagonal(layer, signals)
    if weight is not None and layer.w_offset is not None:
        total[layer.w_offset : layer.w_offset + weight.numel()] += weight.reshape(-1)
    if bias is not None and layer.b_offset is not None:
        total[layer.b_offset : layer.b_offset + bias.numel()] += bias


def per_example_columns(
    model: nn.Module,
    names: Sequence[str],
    x: Inputs,
    s: Tensor,
    max_bytes: int | None = None,
) -> Iterator[Tensor]:
    """Blocks of J_nᵀ s_nc for the parameters ``names``: (examples, C, P_names), bounded in size.

    ``s`` holds the factor columns (N, O, C) at the current parameters; each block covers
    as many examples as keep 2·chunk·C·P numbers under ``max_bytes`` (at least one). The
    examples of a block are vmapped; a forward that vmap cannot trace (data-dependent
    control flow, ``.item()``) is run one example at a time instead (same columns).
    """
    fmodel = FunctionalModel(model, names)
    params = fmodel.params()
    n_p = sum(t.numel() for t in params.values())

    def one(xn: Inputs, sn: Tensor) -> Tensor:
        x1 = map_inputs(lambda t: t.unsqueeze(0), xn)
        return _example_columns(fmodel, params, x1, sn)

    n = s.shape[0]
    chunk = items_per_chunk(2 * s.shape[-1] * n_p * s.element_size(), n, max_bytes)
    vmapped = True
    for start in range(0, n, chunk):
        xs, ss = slice_inputs(x, start, start + chunk), s[start : start + chunk]
        block = None
        if vmapped:
            try:
                block = vmap(one)(xs, ss)
            except RuntimeError as exc:
                if not is_vmap_trace_error(exc):
                    raise
                warn_per_example_loop(model, "per-example GGN columns")
                vmapped = False
        if block is None:
            block = _looped_columns(fmodel, params, xs, ss)
        yield block


def _example_columns(
    fmodel: FunctionalModel, params: dict[str, Tensor], x1: Inputs, sn: Tensor
) -> Tensor:
    """J_nᵀ s_nc for the C columns of sn (O, C) of one example x1 (batch of 1): (C, P_names)."""
    _, vjp_fn = vjp(lambda p: fmodel(p, x1), params)
    cols = vmap(vjp_fn, in_dims=-1)(sn.unsqueeze(0))[0]
    return torch.cat([c.reshape(c.shape[0], -1) for c in cols.values()], 1)


def _looped_columns(
    fmodel: FunctionalModel, params: dict[str, Tensor], x: Inputs, s: Tensor
) -> Tensor:
    """J_nᵀ s_nc by one forward and VJP per example n, no vmap over examples: (N, C, P_names)."""
    blocks = [
        _example_columns(fmodel, params, slice_inputs(x, i, i + 1), s[i]) for i in range(len(s))
    ]
    return torch.stack(blocks)


def reduce_pass(
    count: int, n_out: int, loss_sum: float, device: torch.device
) -> tuple[int, int, float]:
    """(Σ_ranks N, O, Σ_ranks Σ_n ℓ_n); O is read from the ranks that saw an example (identity alone)."""
    if not is_distributed():
        return count, n_out, loss_sum
    seen = count > 0
    t = torch.tensor(
        [count, n_out if seen else 0, int(seen), loss_sum], dtype=torch.float64, device=device
    )
    n, o, k, s = all_reduce_(t).tolist()
    return int(n), int(o) // max(int(k), 1), float(s)


@dataclass
class GGNPass:
    """What one pass over the data gives: the curvature, N, O and Σ_n ℓ(f(θ*, x_n), y_n)."""

    curvature: Tensor
    n_data: int
    n_outputs: int
    loss_sum: float


def diagonal_ggn_pass(
    model: nn.Module,
    loss: str | Loss,
    data: Any,
    param_names: str | Sequence[str] | None = None,
    chunk_size: int | None = None,
    mc_samples: int | None = None,
    seed: int = 0,
) -> GGNPass:
    """Σ_n Σ_c (J_nᵀ s_nc)² in flat order (sum over examples), in one pass over ``data``.

    ``chunk_size`` splits each batch into pieces of that many examples (bounds memory).
    ``mc_samples = k``: the Monte Carlo Fisher diagonal with k sampled columns per example
    (unbiased; for many classes, where the C exact columns cost too much), seeded.
    """
    loss_fn = get_loss(loss)
    fmodel = FunctionalModel(model, param_names)
    names = fmodel.param_names
    layers, rest = split_layers(model, names)
    live = dict(model.named_parameters())
    first = live[names[0]]
    total = torch.zeros(sum(live[n].numel() for n in names), dtype=first.dtype, device=first.device)
    rest_index = _flat_index(names, rest, live)
    count, n_out, loss_sum = 0, 0, 0.0
    gen = torch.Generator(device=first.device).manual_seed(seed + rank())  # independent ranks
    for x, y in data_pass(data).batches(first.device, first.dtype):
        size = len(y) if chunk_size is None else chunk_size
        for start in range(0, len(y), size):
            piece = slice_inputs(x, start, start + size)
            f, target, factor, chunks = backprop_batch(
                fmodel,
                loss_fn,
                layers,
                piece,
                y[start : start + size],
                shared="concat",
                mc_samples=mc_samples,
                generator=gen,
            )
            for signals in chunks:
                for la in layers:
                    _add_layer_diagonal(total, la, signals.pop(la.name))
            if rest:
                acc = f.new_zeros(len(rest_index))
                for cols in per_example_columns(model, rest, piece, factor):
                    acc += cols.square().sum((0, 1))
                total[rest_index.to(total.device)] += acc
            loss_sum += float(loss_fn.value(f, target).sum())
            count, n_out = count + int(f.shape[0]), int(f.shape[1])
    count, n_out, loss_sum = reduce_pass(count, n_out, loss_sum, total.device)
    if count == 0:
        raise InputError("data holds no example")
    return GGNPass(all_reduce_(total), count, n_out, loss_sum)


def dense_ggn_pass(
    model: nn.Module,
    loss: str | Loss,
    data: Any,
    param_names: str | Sequence[str] | None = None,
) -> GGNPass:
    """The dense GGN Σ_n Σ_c (J_nᵀ s_nc)(J_nᵀ s_nc)ᵀ of the chosen parameters (P×P), in one pass."""
    loss_fn = get_loss(loss)
    fmodel = FunctionalModel(model, param_names)
    params = fmodel.params()
    first = next(iter(params.values()))
    n_p = sum(t.numel() for t in params.values())
    total = torch.zeros(n_p, n_p, dtype=first.dtype, device=first.device)
    count, n_out, loss_sum = 0, 0, 0.0
    for x, y in data_pass(data).batches(first.device, first.dtype):
        with torch.no_grad():
            f = fmodel(params, x)
        if f.ndim != 2:
            raise InputError(f"the model must map a batch to (N, O) outputs, got {tuple(f.shape)}")
        target = loss_fn.prepare_target(y, int(f.shape[0]), int(f.shape[1]), f.dtype)
        s = loss_fn.hessian_sqrt(f, target)
        for cols in per_example_columns(model, fmodel.param_names, x, s):
            flat = cols.reshape(-1, n_p)
            total += flat.mT @ flat
        loss_sum += float(loss_fn.value(f, target).sum())
        count, n_out = count + int(f.shape[0]), int(f.shape[1])
    count, n_out, loss_sum = reduce_pass(count, n_out, loss_sum, total.device)
    if count == 0:
        raise InputError("data holds no example")
    all_reduce_(total)
    return GGNPass(0.5 * (total + total.mT), count, n_out, loss_sum)


def ggn_diagonal(
    model: nn.Module,
    loss: str | Loss,
    data: Any,
    param_names: str | Sequence[str] | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    mc_samples: int | None = None,
    seed: int = 0,
) -> Tensor:
    """Exact diag(G) = scale · Σ_n Σ_c (J_nᵀ s_nc)² (scale 1/N for "mean"), flat order, one pass.

    ``chunk_size`` examples at a time; ``mc_samples = k`` gives the Monte Carlo Fisher
    diagonal instead (k sampled columns per example, seeded by ``seed``): unbiased, for
    outputs with many classes.
    """
    if reduction not in ("mean", "sum"):
        raise InputError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    check_count("chunk_size", chunk_size)
    check_count("mc_samples", mc_samples)
    result = diagonal_ggn_pass(model, loss, data, param_names, chunk_size, mc_samples, seed)
    return result.curvature / result.n_data if reduction == "mean" else result.curvature


def _flat_index(names: Sequence[str], chosen: Iterable[str], live: dict[str, Tensor]) -> Tensor:
    """Flat positions of the parameters ``chosen`` within the flat vector over ``names``."""
    wanted, parts, start = set(chosen), [], 0
    for n in names:
        size = live[n].numel()
        if n in wanted:
            parts.append(torch.arange(start, start + size))
        start += size
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
