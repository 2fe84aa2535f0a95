"""Turn an ``nn.Module`` into a pure function ``f(params, x)`` of (a subset of) its parameters.

Conventions used everywhere in tacitbayes:

* A parameter dict ``params: dict[str, Tensor]`` is keyed by the names of
  ``module.named_parameters()`` and is always ordered like that iteration (shared
  parameters appear once, under their first name).  :func:`flatten` concatenates the
  raveled tensors in that order, so flat vectors of length ``P`` are consistent across
  the library.
* The *free* parameters are those named in ``param_names`` (default: every parameter
  with ``requires_grad=True``); all other parameters and all buffers are read from the
  module at call time and held fixed.
* Calls are evaluated in **eval mode** (dropout off, BatchNorm on running statistics).
  The train/eval flags of the module and its submodules are switched only for the
  duration of a call and restored exactly afterwards; nothing is mutated persistently.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call

from tacitbayes.batches import Inputs, model_output, move_inputs
from tacitbayes.errors import InputError

__all__ = [
    "FunctionalModel",
    "eval_mode",
    "flatten",
    "functionalize",
    "last_layer_names",
    "layer_names",
    "model_params",
    "n_params",
    "resolve_param_names",
    "unflatten",
]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily set ``training=False`` on every submodule; restore each flag on exit."""
    flags = [(m, m.training) for m in module.modules()]
    try:
        for m, _ in flags:
            m.training = False
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def _as_name_list(names: str | Sequence[str], what: str) -> list[str]:
    if isinstance(names, str):
        return [names]
    try:
        out = list(names)
    except TypeError:
        raise InputError(
            f"{what} must be a sequence of strings, got {type(names).__name__}"
        ) from None
    if not all(isinstance(n, str) for n in out):
        raise InputError(f"{what} must contain only strings, got {out!r}")
    return out


def resolve_param_names(
    module: nn.Module, param_names: str | Sequence[str] | None = None
) -> tuple[str, ...]:
    """Validate ``param_names`` and return them in ``named_parameters()`` order (default: all trainable)."""
    all_names = [n for n, _ in module.named_parameters()]
    if param_names is None:
        chosen = [n for n, p in module.named_parameters() if p.requires_grad]
        if not chosen:
            raise InputError("the model has no parameter with requires_grad=True")
        return tuple(chosen)
    requested = _as_name_list(param_names, "param_names")
    if not requested:
        raise InputError("param_names is empty; name at least one parameter")
    unknown = [n for n in requested if n not in all_names]
    if unknown:
        raise InputError(f"unknown parameter name(s) {unknown}; valid names are {all_names}")
    duplicates = sorted({n for n in requested if requested.count(n) > 1})
    if duplicates:
        raise InputError(f"parameter name(s) {duplicates} given more than once")
    wanted = set(requested)
    return tuple(n for n in all_names if n in wanted)


def model_params(module: nn.Module, names: str | Sequence[str] | None = None) -> dict[str, Tensor]:
    """Return ``{name: p.detach()}`` for the chosen parameters (default: all trainable).

    The tensors are detached *aliases* of the live parameters (no copy): they carry no
    autograd history, and in-place updates of the model (e.g. by an optimiser) are visible
    through them.  Clone them if a snapshot is needed.
    """
    chosen = resolve_param_names(module, names)
    live = dict(module.named_parameters())
    return {n: live[n].detach() for n in chosen}


def n_params(params: Mapping[str, Tensor] | nn.Module) -> int:
    """Number of scalars P = Σ_i numel(θ_i) (a module counts all its trainable parameters)."""
    if isinstance(params, nn.Module):
        params = model_params(params)
    return sum(int(t.numel()) for t in params.values())


def flatten(params: Mapping[str, Tensor]) -> Tensor:
    """Concatenate the raveled tensors in dict order: θ ↦ vec(θ) ∈ R^P."""
    if not params:
        raise InputError("cannot flatten an empty parameter dict")
    return torch.cat([t.reshape(-1) for t in params.values()])


def unflatten(vec: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`flatten`: split ``vec`` of shape (..., P) into tensors shaped like ``like``.

    Leading batch dimensions are kept: entry ``name`` gets shape ``(*batch, *like[name].shape)``.
    For a 1-D ``vec`` the results are views of ``vec``.
    """
    if not isinstance(vec, Tensor):
        raise InputError(f"expected a Tensor, got {type(vec).__name__}")
    total = n_params(like)
    if vec.ndim == 0 or vec.shape[-1] != total:
        raise InputError(
            f"vector has shape {tuple(vec.shape)} but the parameters have {total} entries "
            f"(expected shape (..., {total}))"
        )
    batch = vec.shape[:-1]
    out: dict[str, Tensor] = {}
    start = 0
    for name, t in like.items():
        stop = start + t.numel()
        out[name] = vec[..., start:stop].reshape(*batch, *t.shape)
        start = stop
    return out


def last_layer_names(module: nn.Module) -> list[str]:
    """Names of the parameters of the last ``nn.Linear`` in ``module.named_modules()`` order."""
    last = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            last = (name, m)
    if last is None:
        raise InputError(f"{type(module).__name__} contains no nn.Linear layer")
    prefix, layer = last
    return [f"{prefix}.{n}" if prefix else n for n, _ in layer.named_parameters(recurse=False)]


def layer_names(module: nn.Module, prefixes: str | Sequence[str]) -> list[str]:
    """Names of all parameters inside the given submodules (``name == p`` or ``name`` starts with ``p + "."``)."""
    wanted = _as_name_list(prefixes, "prefixes")
    if not wanted:
        raise InputError("prefixes is empty; name at least one submodule")
    all_names = [n for n, _ in module.named_parameters()]

    def matches(name: str, prefix: str) -> bool:
        return prefix == "" or name == prefix or name.startswith(prefix + ".")

    missing = [p for p in wanted if not any(matches(n, p) for n in all_names)]
    if missing:
        owners = sorted({n.rsplit(".", 1)[0] if "." in n else "" for n in all_names})
        raise InputError(
            f"no parameter lives under {missing}; submodules with parameters are {owners} "
            f"(parameter names: {all_names})"
        )
    return [n for n in all_names if any(matches(n, p) for p in wanted)]


class FunctionalModel:
    """The pure function f(θ, x) = module(x; θ_free = θ, θ_fixed = current values), in eval mode.

    ``param_names`` picks the free parameters (validated; stored in ``named_parameters()``
    order).  Fixed parameters and buffers are read from the module at every call, so the
    function always reflects the module's current state.  The module is never mutated: its
    train/eval flags are switched to eval only during a call (see :func:`eval_mode`).
    """

    def __init__(self, module: nn.Module, param_names: str | Sequence[str] | None = None) -> None:
        if not isinstance(module, nn.Module):
            raise InputError(f"expected an nn.Module, got {type(module).__name__}")
        self.module = module
        self.param_names: tuple[str, ...] = resolve_param_names(module, param_names)
        free = set(self.param_names)
        self._fixed_names = tuple(n for n, _ in module.named_parameters() if n not in free)

    def params(self) -> dict[str, Tensor]:
        """Current values of the free parameters as detached aliases (see :func:`model_params`)."""
        live = dict(self.module.named_parameters())
        return {n: live[n].detach() for n in self.param_names}

    @property
    def n_params(self) -> int:
        """Number of free scalars P."""
        return n_params(self.params())

    def __call__(self, params: Mapping[str, Tensor], x: Inputs) -> Tensor:
        """Evaluate f(θ, x) (``module(**x)`` for keyword inputs), inputs on θ's device and dtype."""
        live = dict(self.module.named_parameters())
        fixed = {n: live[n].detach() for n in self._fixed_names}
        buffers = dict(self.module.named_buffers())
        first = next(iter(params.values()))
        x = move_inputs(x, first.device, first.dtype)
        dicts = (dict(params), fixed, buffers)
        with eval_mode(self.module):
            if isinstance(x, Tensor):
                return model_output(functional_call(self.module, dicts, (x,)))
            return model_output(functional_call(self.module, dicts, (), dict(x)))


def functionalize(
    module: nn.Module, param_names: str | Sequence[str] | None = None
) -> FunctionalModel:
    """Shorthand for :class:`FunctionalModel` ``(module, param_names)``."""
    return FunctionalModel(module, param_names)
