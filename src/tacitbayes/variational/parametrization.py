"""Parametrizations (SP, NTK, μP): per-layer init scales and learning-rate multipliers.

The layers that count are the ``nn.Linear`` and ``nn.Conv2d`` modules of a network,
taken in ``named_modules()`` order: the first is the *input* layer, the last the
*output* layer, the others *hidden* (a network with a single such layer calls it the
output layer). ``fan_in`` and ``fan_out`` follow torch's convention
(Linear: in/out features; Conv2d: channels × kernel size, fan_in divided by groups).

==========  =====================================  =======================================
            init std of the weights                learning-rate multipliers
==========  =====================================  =======================================
``sp``      1/√fan_in                              SGD and Adam: ×1 everywhere
``mup``     input, hidden 1/√fan_in; output        SGD: input ×fan_out, hidden ×1,
            1/fan_in                               output ×1/fan_in, biases ×fan_out;
                                                   Adam: input ×1, hidden and output
                                                   ×1/fan_in, biases ×1
``ntk``     1/√fan_in (effective weights)          SGD: weights ×1/fan_in, biases ×1;
                                                   Adam: weights ×1/√fan_in, biases ×1
==========  =====================================  =======================================

μP is set as the reference library (inferno) sets it. Biases start at zero.

NTK is implemented in its equivalent *SP-with-learning-rate-scaling* form: the NTK
network uses weights v ~ N(0, 1) and the forward multiplier 1/√fan_in, i.e. effective
weights w = v/√fan_in ~ N(0, 1/fan_in). A gradient step on v of size η moves
w by −(η/fan_in)∇_w ℓ, so SGD on w with the multiplier 1/fan_in follows exactly the
NTK trajectory; Adam is invariant to the gradient's scale, so its step on v is
η·(Adam direction) and on w that is ×1/√fan_in (exact up to Adam's ε). Coupled weight
decay λ on v becomes λ·fan_in on w under SGD (set by :func:`param_groups`); under Adam
weight decay is passed through unchanged. Biases use the NTK bias multiplier β = 1.

The covariance factor of a variational layer learns at its mean's rate ×1/R (rank R).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from tacitbayes.errors import InputError

__all__ = [
    "OPTIMIZER_RULES",
    "PARAMETRIZATIONS",
    "LayerInfo",
    "check_parametrization",
    "init_std",
    "layer_infos",
    "lr_multiplier",
    "optimizer_rule",
    "param_groups",
    "parametrize",
    "weight_layers",
]

PARAMETRIZATIONS = ("sp", "ntk", "mup")
OPTIMIZER_RULES = ("sgd", "adam")
ROLES = ("input", "hidden", "output")
#: Optimizers whose step is invariant to the gradient's scale: they get the Adam multipliers.
_ADAPTIVE = (
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.Adagrad,
    torch.optim.RMSprop,
)


@dataclass(frozen=True)
class LayerInfo:
    """One Linear/Conv2d layer: its module name, role in the network and fans."""

    name: str
    role: str
    fan_in: int
    fan_out: int


def check_parametrization(parametrization: str) -> str:
    """Return ``parametrization`` lower-cased, or raise InputError naming the valid ones."""
    key = parametrization.lower() if isinstance(parametrization, str) else None
    if key not in PARAMETRIZATIONS:
        raise InputError(
            f"unknown parametrization {parametrization!r}; available: {', '.join(PARAMETRIZATIONS)}"
        )
    return key


def _check_rule(rule: str) -> str:
    key = rule.lower() if isinstance(rule, str) else None
    if key not in OPTIMIZER_RULES:
        raise InputError(
            f"unknown optimizer rule {rule!r}; available: {', '.join(OPTIMIZER_RULES)}"
        )
    return key


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs of every nn.Linear / nn.Conv2d, in ``named_modules()`` order."""
    if not isinstance(model, nn.Module):
        raise InputError(f"expected an nn.Module, got {type(model).__name__}")
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _fans(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    field = math.prod(module.kernel_size)  # type: ignore[attr-defined]
    return module.in_channels // module.groups * field, module.out_channels * field  # type: ignore[attr-defined]


def layer_infos(model: nn.Module) -> dict[str, LayerInfo]:
    """Role (input / hidden / output by module order) and fans of each Linear/Conv2d layer."""
    layers = weight_layers(model)
    out: dict[str, LayerInfo] = {}
    for i, (name, module) in enumerate(layers):
        role = "output" if i == len(layers) - 1 else "input" if i == 0 else "hidden"
        fan_in, fan_out = _fans(module)
        out[name] = LayerInfo(name, role, fan_in, fan_out)
    return out


def init_std(info: LayerInfo, parametrization: str) -> float:
    """Init std s of the layer's weights: 1/√fan_in, or 1/fan_in for the μP output layer."""
    parametrization = check_parametrization(parametrization)
    if parametrization == "mup" and info.role == "output":
        return 1.0 / info.fan_in
    return 1.0 / math.sqrt(info.fan_in)


def lr_multiplier(info: LayerInfo, parametrization: str, kind: str, rule: str = "sgd") -> float:
    """Learning-rate multiplier of a layer's ``kind`` ("weight" | "bias") under ``rule`` (sgd | adam)."""
    parametrization = check_parametrization(parametrization)
    rule = _check_rule(rule)
    if kind not in ("weight", "bias"):
        raise InputError(f"kind must be 'weight' or 'bias', got {kind!r}")
    if parametrization == "sp":
        return 1.0
    if parametrization == "ntk":
        if kind == "bias":
            return 1.0
        return 1.0 / info.fan_in if rule == "sgd" else 1.0 / math.sqrt(info.fan_in)
    if rule == "sgd":  # μP, SGD
        if kind == "bias":
            return float(info.fan_out)
        return {"input": float(info.fan_out), "hidden": 1.0, "output": 1.0 / info.fan_in}[info.role]
    if kind == "bias":  # μP, Adam
        return 1.0
    return 1.0 if info.role == "input" else 1.0 / info.fan_in


def optimizer_rule(optimizer_cls: type) -> str:
    """ "adam" for scale-invariant (adaptive) optimizers such as Adam/AdamW/RMSprop, else "sgd"."""
    if isinstance(optimizer_cls, type) and issubclass(optimizer_cls, _ADAPTIVE):
        return "adam"
    return "sgd"


@torch.no_grad()
def parametrize(
    model: nn.Module, parametrization: str = "sp", generator: torch.Generator | None = None
) -> nn.Module:
    """Re-initialise every Linear/Conv2d in place: weights ~ N(0, s²) with s = :func:`init_std`, biases 0."""
    infos = layer_infos(model)
    for name, module in weight_layers(model):
        std = init_std(infos[name], parametrization)
        w = module.weight
        w.copy_(torch.randn(w.shape, generator=generator, dtype=w.dtype, device=w.device) * std)
        if module.bias is not None:
            module.bias.zero_()
    return model


def _kind(param_name: str) -> str:
    return "bias" if param_name.rsplit(".", 1)[-1] == "bias" else "weight"


def named_multipliers(
    model: nn.Module, parametrization: str, rule: str = "sgd"
) -> dict[str, float]:
    """Learning-rate multiplier of every trainable parameter of ``model`` (×1 outside Linear/Conv2d)."""
    infos = layer_infos(model)
    out: dict[str, float] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        info = infos.get(owner)
        out[name] = 1.0 if info is None else lr_multiplier(info, parametrization, _kind(name), rule)
    return out


def group_parameters(entries: Iterable[tuple[nn.Parameter, float, float]], lr: float) -> list[dict]:
    """Merge (param, lr multiplier, weight decay) triples into optimizer groups, one per distinct pair."""
    groups: dict[tuple[float, float], dict] = {}
    for param, mult, decay in entries:
        key = (mult, decay)
        if key not in groups:
            groups[key] = {"params": [], "lr": lr * mult, "lr_multiplier": mult}
            groups[key]["weight_decay"] = decay
        groups[key]["params"].append(param)
    return list(groups.values())


def decay_scale(model: nn.Module, parametrization: str, rule: str) -> dict[str, float]:
    """Factor on weight decay per parameter: fan_in for NTK weights under SGD (see module doc), else 1."""
    infos = layer_infos(model)
    out: dict[str, float] = {}
    for name, _ in model.named_parameters():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        info = infos.get(owner)
        ntk_sgd_weight = parametrization == "ntk" and rule == "sgd" and _kind(name) == "weight"
        out[name] = float(info.fan_in) if (info is not None and ntk_sgd_weight) else 1.0
    return out


def param_groups(
    model: nn.Module,
    parametrization: str = "sp",
    optimizer: str = "sgd",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Optimizer groups of a deterministic network: group lr = lr × multiplier; key ``lr_multiplier`` kept."""
    parametrization = check_parametrization(parametrization)
    rule = _check_rule(optimizer)
    if not (lr > 0 and math.isfinite(lr)):
        raise InputError(f"lr must be a positive number, got {lr}")
    if weight_decay < 0:
        raise InputError(f"weight_decay must be non-negative, got {weight_decay}")
    mults = named_multipliers(model, parametrization, rule)
    scales = decay_scale(model, parametrization, rule)
    live = dict(model.named_parameters())
    return group_parameters(((live[n], m, weight_decay * scales[n]) for n, m in mults.items()), lr)
