"""The empirical neural tangent kernel K = J Jᵀ, built from per-layer Jacobian factors.

For a Linear layer z = W a + b, row (n, o) of J restricted to (W, b) is
(g_{no} a_nᵀ, g_{no}) with a_n the layer input and g_{no} = ∂f_o(x_n)/∂z_n, so

    K[(n, o), (m, o')] = Σ_layers (a_n·a_m + 1) (g_{no}·g_{mo'})

(the activation Gram times the output-gradient Gram), which never forms J: the cost is
N·M·d_in + N·O·M·O·d_out per layer instead of N·O·M·O·P. A Conv2d layer, a Linear
layer applied to a sequence and any other parameter contribute through their explicit
per-row gradients (small for convolution kernels and normalisation weights). With
``outputs="loss"`` the rows are the per-example loss gradients ∇_θ ℓ(f(θ, x_n), y_n)
(O = 1). Everything is evaluated in eval mode (examples must not interact).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from tacitbayes.batches import Inputs, call_model, map_inputs, move_inputs, n_examples
from tacitbayes.curvature.losses import get_loss
from tacitbayes.curvature.operators import OUTPUTS
from tacitbayes.errors import InputError
from tacitbayes.functional import (
    eval_mode,
    exact_kernels,
    is_vmap_trace_error,
    resolve_param_names,
    warn_per_example_loop,
)

__all__ = [
    "KernelFactors",
    "kernel_factors",
    "ntk_blocks",
    "ntk_cross",
    "ntk_cross_block",
    "ntk_diagonal",
    "ntk_gram",
]


@dataclass
class KernelFactors:
    """Per-layer Jacobian factors of one batch: K = Σ_l (A Aᵀ + b) ∘ (G Gᵀ) + R Rᵀ.

    ``hadamard``: (A, G, with_bias) triples, A of shape (N, d_in) or None (bias only),
    G of shape (N, O, d_out); ``explicit``: the remaining Jacobian columns, (N, O, P_e).
    ``hadamard_names``: the (weight, bias) parameter names of each triple (None where not
    free); ``explicit_names``: the parameters whose flattened columns ``explicit`` holds,
    in order (both None for factors merged from several models' layouts).
    """

    n: int
    n_outputs: int
    hadamard: list[tuple[Tensor | None, Tensor, bool]]
    explicit: Tensor | None
    hadamard_names: list[tuple[str | None, str | None]] | None = None
    explicit_names: list[str] | None = None

    def nbytes(self) -> int:
        """Memory held by the factors."""
        total = 0 if self.explicit is None else self.explicit.numel()
        for a, g, _ in self.hadamard:
            total += g.numel() + (0 if a is None else a.numel())
        return total * 8


@contextmanager
def _requires_grad(params: Sequence[nn.Parameter]):
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def _factored(module: nn.Module) -> bool:
    """Whether a module's parameters enter through (input, output-gradient) factors."""
    if type(module) is nn.Linear:
        return True
    return (
        type(module) is nn.Conv2d
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _own_free(prefix: str, module: nn.Module, free: set[str]) -> list[str]:
    own = [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]
    return [n for n in own if n in free]


def _layer_plan(model: nn.Module, free: set[str]) -> dict[str, nn.Module]:
    """The Linear/Conv2d modules that own free parameters, by name."""
    return {
        prefix: module
        for prefix, module in model.named_modules()
        if _factored(module) and _own_free(prefix, module, free)
    }


def _conv_rows(module: nn.Conv2d, a: Tensor, g: Tensor, w: bool, b: bool) -> Tensor:
    """Explicit per-row gradients of a Conv2d: (N, O, P_layer)."""
    n, o = g.shape[:2]
    cols = F.unfold(
        a,
        module.kernel_size,
        dilation=module.dilation,
        padding=module.padding,
        stride=module.stride,
    )  # (N, C_in·k², T)
    g = g.reshape(n, o, g.shape[2], -1)  # (N, O, C_out, T)
    parts = []
    if w:
        parts.append(torch.einsum("noct,nkt->nock", g, cols).reshape(n, o, -1))
    if b:
        parts.append(g.sum(-1))
    return torch.cat(parts, -1)


def _sequence_rows(a: Tensor, g: Tensor, w: bool, b: bool) -> Tensor:
    """Explicit per-row gradients of a Linear applied over positions: (N, O, P_layer)."""
    n, o = g.shape[:2]
    a = a.reshape(n, -1, a.shape[-1])
    g = g.reshape(n, o, -1, g.shape[-1])
    parts = []
    if w:
        parts.append(torch.einsum("notd,nti->nodi", g, a).reshape(n, o, -1))
    if b:
        parts.append(g.sum(2))
    return torch.cat(parts, -1)


def kernel_factors(
    model: nn.Module,
    x: Inputs,
    y: Tensor | None = None,
    *,
    outputs: str = "logits",
    loss: str = "cross_entropy",
    param_names: str | Sequence[str] | None = None,
    dtype: torch.dtype = torch.float64,
    max_explicit_bytes: int = 2**31,
) -> KernelFactors:
    """Jacobian factors of one batch (rows (n, o) of J, or per-example loss gradients).

    The explicit per-row gradients (Conv2d, sequence-Linear and other parameters) take
    N·O·P_explicit numbers; over ``max_explicit_bytes`` an InputError says so.
    """
    if outputs not in OUTPUTS:
        raise InputError(f"outputs must be one of {', '.join(OUTPUTS)}, got {outputs!r}")
    names = resolve_param_names(model, param_names)
    free = set(names)
    live = dict(model.named_parameters())
    first = live[names[0]]
    x = move_inputs(x, first.device, first.dtype)
    layers = _layer_plan(model, free)
    inputs: dict[str, Tensor] = {}
    zs: dict[str, Tensor] = {}
    calls: dict[str, int] = {}

    def hook(name: str):
        def record(_module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            inputs[name] = args[0].detach()
            zs[name] = out
            calls[name] = calls.get(name, 0) + 1

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    loss_fn = get_loss(loss)
    try:
        with (
            eval_mode(model),
            exact_kernels(),
            _requires_grad([live[n] for n in names]),
            torch.enable_grad(),
        ):
            out = call_model(model, x)
            if out.ndim != 2:
                raise InputError(f"the model must map a batch to (N, O) outputs, got {out.shape}")
            n = out.shape[0]
            if outputs == "loss":
                if y is None:
                    raise InputError("outputs='loss' needs targets")
                target = loss_fn.prepare_target(y.to(out.device), n, out.shape[1], out.dtype)
                # Σ_n r_nᵀ f_n with r_n = ∂ℓ_n/∂f_n fixed: its gradient rows are the loss
                # gradients, free of the cancellation in differentiating ℓ itself
                r = loss_fn.output_gradient(out.detach(), target)
                scalars = [(out * r).sum()]
            else:
                scalars = [out[:, o].sum() for o in range(out.shape[1])]
            # outputs="ggn": rows S_nᵀ J_n, Λ_n = S_n S_nᵀ at θ* (the factors G are mixed by S)
            sqrt = (
                loss_fn.hessian_sqrt(out.detach(), _ggn_target(loss_fn, y, out))
                if outputs == "ggn"
                else None
            )
            # a layer applied more than once (shared weights) goes the explicit way
            present = [name for name in layers if calls.get(name) == 1]
            grads = [
                torch.autograd.grad(s, [zs[k] for k in present], retain_graph=True)
                if present
                else ()
                for s in scalars
            ]
    finally:
        for h in handles:
            h.remove()
    n_out = len(scalars)
    # parameters outside Linear/Conv2d layers, and layers whose forward never ran
    covered = {n for name in present for n in _own_free(name, layers[name], free)}
    rest = [n for n in names if n not in covered]
    explicit_params = sum(live[n].numel() for n in rest) + sum(
        live[n].numel()
        for name in present
        if isinstance(layers[name], nn.Conv2d) or inputs[name].ndim > 2
        for n in _own_free(name, layers[name], free)
    )
    explicit_bytes = n * n_out * explicit_params * torch.finfo(dtype).bits // 8
    if explicit_bytes > max_explicit_bytes:
        raise InputError(
            f"the kernel factors of this batch need {explicit_bytes / 2**30:.1f} GiB of explicit "
            f"per-row gradients ({explicit_params:,} parameters outside plain Linear layers); "
            "use smaller batches, or solver='krylov', which never forms them"
        )
    hadamard: list[tuple[Tensor | None, Tensor, bool]] = []
    hadamard_names: list[tuple[str | None, str | None]] = []
    explicit: list[Tensor] = []
    explicit_names: list[str] = []
    for i, name in enumerate(present):
        module = layers[name]
        prefix = f"{name}." if name else ""
        w, b = f"{prefix}weight" in free, f"{prefix}bias" in free and module.bias is not None
        names_wb = (f"{prefix}weight" if w else None, f"{prefix}bias" if b else None)
        a = inputs[name].to(dtype)
        g = torch.stack([grads[o][i] for o in range(n_out)], 1).detach().to(dtype)
        if sqrt is not None:
            g = _mix_rows(g, sqrt)
        if isinstance(module, nn.Conv2d):
            explicit.append(_conv_rows(module, a, g, w, b))
            explicit_names += [n for n in names_wb if n is not None]
        elif a.ndim > 2:
            explicit.append(_sequence_rows(a, g, w, b))
            explicit_names += [n for n in names_wb if n is not None]
        else:
            hadamard.append((a if w else None, g, b))
            hadamard_names.append(names_wb)
    if rest:
        explicit_names += rest
        kind = "loss" if outputs == "loss" else "logits"
        rows = _explicit_rows(model, x, y, rest, kind, loss).detach().to(dtype)
        explicit.append(rows if sqrt is None else _mix_rows(rows, sqrt))
    return KernelFactors(
        n=n,
        n_outputs=n_out,
        hadamard=hadamard,
        explicit=torch.cat(explicit, -1) if explicit else None,
        hadamard_names=hadamard_names,
        explicit_names=explicit_names,
    )


def _ggn_target(loss_fn, y: Tensor | None, out: Tensor) -> Tensor:
    """Targets for Λ_n (the output Hessians of this library's losses do not read them)."""
    if y is None:
        return out.detach()
    return loss_fn.prepare_target(y.to(out.device), out.shape[0], out.shape[1], out.dtype)


def _mix_rows(rows: Tensor, sqrt: Tensor) -> Tensor:
    """Rows (N, O, ...) of the logits' Jacobian to the GGN's rows S_nᵀ J_n: (N, C, ...)."""
    return torch.einsum("no...,noc->nc...", rows, sqrt.to(rows.dtype))


def _explicit_rows(
    model: nn.Module, x: Inputs, y: Tensor | None, names: list[str], outputs: str, loss: str
) -> Tensor:
    """Per-example Jacobian columns ∂f(x_n)/∂θ_names (or ∂(r_nᵀf_n)/∂θ_names): (N, O, P_names).

    Reverse mode vmapped over examples; a forward that vmap cannot trace (data-dependent
    control flow, ``.item()``) gets one reverse-mode Jacobian per example instead.
    """
    live = dict(model.named_parameters())
    params = {n: live[n].detach() for n in names}
    loss_fn = get_loss(loss)

    def one(p: dict[str, Tensor], xn: Inputs, rn: Tensor | None) -> Tensor:
        x1 = map_inputs(lambda t: t.unsqueeze(0), xn)
        out = call_model(lambda *a, **k: functional_call(model, p, a, k, strict=False), x1)
        if outputs == "loss":
            return (out[0] * rn).sum().reshape(1)
        return out[0]

    n = n_examples(x)
    with eval_mode(model), exact_kernels():
        r = None
        if outputs == "loss":
            with torch.no_grad():
                out = call_model(model, x)
            target = loss_fn.prepare_target(y.to(out.device), len(out), out.shape[1], out.dtype)
            r = loss_fn.output_gradient(out, target)
        try:
            jac = vmap(jacrev(one), in_dims=(None, 0, None if r is None else 0))(params, x, r)
        except RuntimeError as exc:
            if not is_vmap_trace_error(exc):
                raise
            warn_per_example_loop(model, "per-example Jacobian rows")
            rows = [
                jacrev(one)(params, _example(x, i), None if r is None else r[i]) for i in range(n)
            ]
            jac = {k: torch.stack([row[k] for row in rows]) for k in names}
    return torch.cat([jac[k].reshape(n, jac[k].shape[1], -1) for k in names], -1)


def _example(x: Inputs, i: int) -> Inputs:
    """Example i of a batch, without its batch dimension."""
    return map_inputs(lambda t: t[i], x)


def ntk_cross_block(
    left: KernelFactors, right: KernelFactors, dtype: torch.dtype = torch.float64
) -> Tensor:
    """K between the rows of two batches: (N·O_left, M·O_right), accumulated in ``dtype``."""
    n, m, o1, o2 = left.n, right.n, left.n_outputs, right.n_outputs
    out = torch.zeros(n * o1, m * o2, dtype=dtype, device=_device(left))
    view = out.view(n, o1, m, o2)
    for (a1, g1, bias), (a2, g2, _) in zip(left.hadamard, right.hadamard, strict=True):
        gg = (g1.reshape(n * o1, -1) @ g2.reshape(m * o2, -1).T).view(n, o1, m, o2)
        aa = a1 @ a2.T if a1 is not None else torch.zeros(n, m, dtype=gg.dtype, device=gg.device)
        if bias:
            aa = aa + 1.0
        view += gg * aa[:, None, :, None]
    if left.explicit is not None and right.explicit is not None:
        out += left.explicit.reshape(n * o1, -1) @ right.explicit.reshape(m * o2, -1).T
    return out


def _device(f: KernelFactors) -> torch.device:
    if f.hadamard:
        return f.hadamard[0][1].device
    assert f.explicit is not None
    return f.explicit.device


def ntk_cross(left: Iterable[KernelFactors], right: Sequence[KernelFactors]) -> Tensor:
    """The kernel block K_{LR} between two sets of factors, rows stacked in batch order."""
    right = list(right)
    rows = [torch.cat([ntk_cross_block(fl, fr) for fr in right], 1) for fl in left]
    if not rows:
        raise InputError("no batch to build a kernel from")
    return torch.cat(rows)


def ntk_gram(factors: Sequence[KernelFactors]) -> Tensor:
    """The symmetric Gram K = J Jᵀ of a set of factors: the blocks on and above the diagonal,
    mirrored, written into one preallocated (rows × rows) float64 matrix."""
    factors = list(factors)
    if not factors:
        raise InputError("no batch to build a kernel from")
    sizes = [f.n * f.n_outputs for f in factors]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    out = torch.empty(sum(sizes), sum(sizes), dtype=torch.float64, device=_device(factors[0]))
    for i, fi in enumerate(factors):
        rows = slice(starts[i], starts[i] + sizes[i])
        for j in range(i, len(factors)):
            block = ntk_cross_block(fi, factors[j])
            out[rows, starts[j] : starts[j] + sizes[j]] = block
            if j > i:
                out[starts[j] : starts[j] + sizes[j], rows] = block.T
    return out


def ntk_diagonal(factors: KernelFactors) -> Tensor:
    """diag K = ‖J_{(n,o)}‖² for the rows of one batch: (N·O,)."""
    n, o = factors.n, factors.n_outputs
    out = torch.zeros(n, o, dtype=torch.float64, device=_device(factors))
    for a, g, bias in factors.hadamard:
        aa = (a * a).sum(-1) if a is not None else torch.zeros(n, dtype=out.dtype)
        out += g.pow(2).sum(-1) * (aa + (1.0 if bias else 0.0))[:, None]
    if factors.explicit is not None:
        out += factors.explicit.pow(2).sum(-1)
    return out.reshape(-1)


def ntk_blocks(factors: KernelFactors) -> Tensor:
    """Per-example blocks J_n J_nᵀ = Σ_l (a_n·a_n + b) G_n G_nᵀ + R_n R_nᵀ of one batch: (N, O, O)."""
    n, o = factors.n, factors.n_outputs
    out = torch.zeros(n, o, o, dtype=torch.float64, device=_device(factors))
    for a, g, bias in factors.hadamard:
        aa = torch.zeros(n, dtype=out.dtype, device=out.device) if a is None else (a * a).sum(-1)
        out += (g @ g.mT) * (aa + (1.0 if bias else 0.0))[:, None, None]
    if factors.explicit is not None:
        out += factors.explicit @ factors.explicit.mT
    return out
