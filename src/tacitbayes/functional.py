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
* Calls run under :func:`exact_kernels`: torch's fused attention kernels (the
  ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` fast path, the fused SDPA
  kernels) have no forward-mode derivative and some no vmap rule, so the user's forward
  runs on the composite kernels instead: the same function, every derivative defined.
* Per-example transforms ``vmap`` over examples first; a model whose forward cannot be
  vmapped (data-dependent control flow, ``.item()``: Hugging Face mask code) is detected by
  :func:`is_vmap_trace_error` and its callers loop over examples instead (exact, slower),
  saying so once per model class (:func:`warn_per_example_loop`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from tacitbayes.batches import (
    Inputs,
    model_input_errors,
    model_output,
    move_inputs,
    n_examples,
    slice_inputs,
)
from tacitbayes.errors import InputError

__all__ = [
    "FunctionalModel",
    "eval_mode",
    "exact_kernels",
    "find_last_layer",
    "flatten",
    "functionalize",
    "is_vmap_trace_error",
    "last_layer_names",
    "layer_names",
    "model_params",
    "n_params",
    "resolve_param_names",
    "unflatten",
    "warn_per_example_loop",
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


@contextmanager
def exact_kernels() -> Iterator[None]:
    """Run attention on kernels with every derivative: MHA fast path off, SDPA on its math backend.

    Both are the same function as the fused kernels they replace (softmax(QKᵀ/√d + M) V),
    evaluated by composite operations that forward-mode AD and vmap can differentiate.
    The MHA flag is restored on exit; the SDPA backend choice is scoped by torch itself.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


_VMAP_TRACE_MARKS = ("data-dependent", ".item()")
_LOOP_WARNED: set[str] = set()  # model classes already warned about by warn_per_example_loop


def is_vmap_trace_error(exc: BaseException) -> bool:
    """Whether ``exc`` is functorch refusing to vmap a forward (``.item()``, data-dependent control flow)."""
    if not isinstance(exc, RuntimeError):
        return False
    message = str(exc)
    return "vmap" in message and any(mark in message for mark in _VMAP_TRACE_MARKS)


def warn_per_example_loop(model: nn.Module, what: str) -> None:
    """A RuntimeWarning, once per model class, that ``what`` loops over examples instead of vmap."""
    kind = type(model)
    name = f"{kind.__module__}.{kind.__qualname__}"
    if name in _LOOP_WARNED:
        return
    _LOOP_WARNED.add(name)
    warnings.warn(
        f"torch.func.vmap cannot trace the forward pass of {kind.__name__} (data-dependent "
        f"control flow or .item()); {what} are computed one example at a time instead "
        "(exact, slower)",
        RuntimeWarning,
        stacklevel=3,
    )


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


def _direct(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters(recurse=False))


def _pure(module: nn.Module) -> bool:
    """True when every parameter of ``module`` is its own (no submodule holds one)."""
    return {id(p) for p in module.parameters()} == {id(p) for p in _direct(module)}


def _tensors_in(out: object, depth: int = 3) -> list[Tensor]:
    """The tensors of a module output (a Tensor, or nested in mappings, sequences, attributes)."""
    if isinstance(out, Tensor):
        return [out]
    if depth == 0:
        return []
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _tensors_in(v, depth - 1)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _tensors_in(v, depth - 1)]
    return _tensors_in(vars(out), depth - 1) if hasattr(out, "__dict__") else []


def _names_of(module: nn.Module, owner: str) -> list[str]:
    """The names (in ``module.named_parameters()``) of the parameters ``owner`` holds itself."""
    own = {id(p) for p in _direct(module.get_submodule(owner)) if p.requires_grad}
    return [n for n, p in module.named_parameters() if id(p) in own]


def _label(name: str) -> str:
    return repr(name) if name else "the model's own parameters ('')"


def find_last_layer(module: nn.Module, example_inputs: Inputs) -> str:
    """Name of the submodule whose parameters produce the output f(x) (traced on ``example_inputs``).

    One forward pass (eval mode, the first two examples) with forward hooks on the modules
    that own parameters; then a walk back through the autograd graph of the output that
    stops at the output of a module whose parameters are all its own, or at a parameter
    itself (owned by a module with parametrised submodules, e.g. the model's own
    ``nn.Parameter``). Exactly one module must be met, and it must be the last of those
    modules to run; otherwise InputError names the candidates (name the layer instead).
    """
    if not isinstance(module, nn.Module):
        raise InputError(f"expected an nn.Module, got {type(module).__name__}")
    # the trainable parameters only (a frozen head under a LoRA adapter is not the last layer)
    named = {n: p for n, p in module.named_parameters() if p.requires_grad}
    if not named:
        raise InputError(f"{type(module).__name__} has no parameter with requires_grad=True")
    owners = {n: m for n, m in module.named_modules() if any(p.requires_grad for p in _direct(m))}
    pure = {n for n, m in owners.items() if _pure(m)}
    leaves = {n: p.detach().requires_grad_(True) for n, p in named.items()}
    leaf_owner = {id(t): n.rsplit(".", 1)[0] if "." in n else "" for n, t in leaves.items()}
    ran: list[str] = []
    stops: dict[Any, set[str]] = {}

    def hook(name: str):
        def record(_mod: nn.Module, _args: Any, out: Any) -> None:
            ran.append(name)
            for t in _tensors_in(out):
                if t.grad_fn is not None:
                    stops.setdefault(t.grad_fn, set()).add(name)

        return record

    first = next(iter(named.values()))
    x = move_inputs(example_inputs, first.device, first.dtype)
    x = slice_inputs(x, 0, min(2, n_examples(x)))
    handles = [owners[n].register_forward_hook(hook(n)) for n in pure]
    try:
        with torch.enable_grad(), eval_mode(module), exact_kernels():
            if isinstance(x, Tensor):
                out = functional_call(module, leaves, (x,))
            else:
                out = functional_call(module, leaves, (), dict(x))
    finally:
        for h in handles:
            h.remove()
    node = model_output(out).grad_fn
    if node is None:
        raise InputError(f"the output of {type(module).__name__} depends on no parameter")
    found: set[str] = set()
    todo, seen = [node], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in stops:
            found |= stops[node]
        elif hasattr(node, "variable"):
            if id(node.variable) in leaf_owner:
                found.add(leaf_owner[id(node.variable)])
        else:
            todo.extend(child for child, _ in node.next_functions)
    hint = "name the layer (Laplace(last_layer_name=...) or param_names=)"
    if len(found) != 1:
        labels = ", ".join(_label(n) for n in sorted(found)) or "no parameter"
        raise InputError(
            f"the last layer of {type(module).__name__} is ambiguous: the output depends on "
            f"{labels} directly (each without passing through the output of another); {hint}"
        )
    (last,) = found
    if ran and ran[-1] != last:
        raise InputError(
            f"module {ran[-1]!r} of {type(module).__name__} runs last but does not reach the "
            f"output (the output comes from {_label(last)}); {hint}"
        )
    return last


def last_layer_names(module: nn.Module, example_inputs: Inputs | None = None) -> list[str]:
    """Names of the parameters of the module that produces the output (the last layer).

    With ``example_inputs`` the forward pass is traced (:func:`find_last_layer`); without,
    the last layer is read off the structure where it is certain: a module whose parameters
    are all its own, or an ``nn.Sequential`` (recursively, its last child with parameters).
    Any other model needs ``example_inputs``: the order in which submodules are created
    says nothing about the order in which they run.
    """
    if example_inputs is not None:
        return _names_of(module, find_last_layer(module, example_inputs))
    prefix, m = "", module
    while not _pure(m):
        if type(m).forward is not nn.Sequential.forward:
            raise InputError(
                f"{type(m).__name__}{f' ({prefix!r})' if prefix else ''} is not an nn.Sequential: "
                "its last layer is found by tracing the forward pass; pass example_inputs (a "
                "batch of model inputs) or name the layer"
            )
        with_params = [(n, c) for n, c in m.named_children() if any(True for _ in c.parameters())]
        if _direct(m) or not with_params:
            raise InputError(f"cannot tell the last layer of {type(m).__name__} {prefix!r}")
        name, m = with_params[-1]
        prefix = f"{prefix}.{name}" if prefix else name
    if not _direct(m):
        raise InputError(f"{type(module).__name__} has no parameters")
    return _names_of(module, prefix)


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
        with eval_mode(self.module), exact_kernels(), model_input_errors(x):
            if isinstance(x, Tensor):
                return model_output(functional_call(self.module, dicts, (x,)))
            return model_output(functional_call(self.module, dicts, (), dict(x)))


def functionalize(
    module: nn.Module, param_names: str | Sequence[str] | None = None
) -> FunctionalModel:
    """Shorthand for :class:`FunctionalModel` ``(module, param_names)``."""
    return FunctionalModel(module, param_names)
