"""One way to read a batch, for every consumer of a data loader in tacitbayes.

A loader is any re-iterable of batches (a list, a ``torch.utils.data.DataLoader``; a
one-shot iterator is refused because most fits read the data more than once). A batch
is one of:

* ``(x, y)`` or ``(x, y, *extra)``: ``x`` the model input (a Tensor, or a mapping of
  keyword arguments), ``y`` the targets; extra entries (indices, weights) are ignored;
* a mapping, Hugging Face style: the target under ``"labels"``, every other entry a
  keyword argument of the model (``model(input_ids=..., attention_mask=...)``). Other
  keys are chosen with :class:`KeyedLoader` (``KeyedLoader(loader, target="label",
  inputs="image")`` passes ``batch["image"]`` positionally).

:func:`read_batch` turns any of these into a :class:`Batch` ``(inputs, target)``; every
input tensor must have the target's leading dimension. :func:`to_model` moves a batch to
the model's device and casts floating inputs to its dtype (integer inputs such as token
ids keep theirs). :func:`call_model` evaluates ``model(x)`` or ``model(**x)`` and reads the
logits from a Tensor, a mapping with ``"logits"`` or an object with ``.logits``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from tacitbayes.errors import InputError

__all__ = [
    "Batch",
    "Inputs",
    "KeyedLoader",
    "call_model",
    "cat_inputs",
    "check_loader",
    "iter_batches",
    "map_inputs",
    "model_output",
    "move_inputs",
    "n_examples",
    "read_batch",
    "slice_inputs",
    "to_model",
]

Inputs = Tensor | Mapping[str, Tensor]

BATCH_HELP = (
    "a batch must be (x, y), (x, y, *extra) or a mapping with the target under 'labels' "
    "(use tacitbayes.batches.KeyedLoader for other keys)"
)


class Batch(NamedTuple):
    """Model inputs (a Tensor, or keyword arguments) and targets of one batch."""

    inputs: Inputs
    target: Tensor


def _tensors(inputs: Inputs) -> list[Tensor]:
    return [inputs] if isinstance(inputs, Tensor) else list(inputs.values())


def n_examples(inputs: Inputs) -> int:
    """The number of examples N: the leading dimension shared by every input tensor."""
    sizes = {int(t.shape[0]) if t.ndim else -1 for t in _tensors(inputs)}
    if len(sizes) != 1 or -1 in sizes:
        raise InputError(f"the input tensors must share a leading batch dimension, got {sizes}")
    return sizes.pop()


def _check_inputs(inputs: Any) -> Inputs:
    if isinstance(inputs, Tensor):
        return inputs
    if isinstance(inputs, Mapping) and inputs:
        bad = [k for k, v in inputs.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
        if not bad:
            return dict(inputs)
        raise InputError(f"model inputs {bad} are not Tensors under string keys; {BATCH_HELP}")
    raise InputError(f"model inputs of type {type(inputs).__name__}; {BATCH_HELP}")


def _from_mapping(
    batch: Mapping[str, Any], target: str, inputs: str | Sequence[str] | None
) -> tuple[Any, Any]:
    if target not in batch:
        raise InputError(
            f"the batch has keys {sorted(batch)} and no target {target!r}; "
            "wrap the loader in tacitbayes.batches.KeyedLoader(loader, target=..., inputs=...)"
        )
    if isinstance(inputs, str):
        if inputs not in batch:
            raise InputError(f"the batch has keys {sorted(batch)} and no input {inputs!r}")
        return batch[inputs], batch[target]
    keys = [k for k in batch if k != target] if inputs is None else list(inputs)
    missing = [k for k in keys if k not in batch]
    if missing or not keys:
        raise InputError(f"the batch has keys {sorted(batch)}; model inputs {keys} are missing")
    return {k: batch[k] for k in keys}, batch[target]


def read_batch(
    batch: Any, target: str = "labels", inputs: str | Sequence[str] | None = None
) -> Batch:
    """(inputs, target) of a tuple/list batch or of a mapping batch (keys ``target``, ``inputs``)."""
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, Mapping):
        x, y = _from_mapping(batch, target, inputs)
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    else:
        raise InputError(f"got a batch of type {type(batch).__name__}; {BATCH_HELP}")
    x = _check_inputs(x)
    if not isinstance(y, Tensor) or y.ndim == 0:
        raise InputError(f"the targets must be a Tensor with a batch dimension; {BATCH_HELP}")
    n = n_examples(x)
    if n != y.shape[0]:
        raise InputError(
            f"inputs with {n} examples and targets of shape {tuple(y.shape)} do not have the "
            "same number of examples"
        )
    return Batch(x, y)


def check_loader(data: Any, what: str = "data") -> Iterable[Any]:
    """A re-iterable of batches: a single batch becomes a one-batch list; iterators are refused."""
    if isinstance(data, Mapping) or (
        isinstance(data, (tuple, list))
        and len(data) >= 2
        and isinstance(data[1], Tensor)
        and isinstance(data[0], (Tensor, Mapping))
    ):
        return [data]
    if isinstance(data, Tensor) or not isinstance(data, Iterable):
        raise InputError(f"{what} must be a batch or a re-iterable of batches; {BATCH_HELP}")
    if iter(data) is data:
        raise InputError(
            f"{what} is a one-shot iterator; pass something that can be iterated more than "
            "once (a DataLoader or a list of batches)"
        )
    return data


def map_inputs(fn: Callable[[Tensor], Tensor], inputs: Inputs) -> Inputs:
    """Apply ``fn`` to the input tensor, or to every tensor of a mapping."""
    if isinstance(inputs, Tensor):
        return fn(inputs)
    return {k: fn(v) for k, v in inputs.items()}


def slice_inputs(inputs: Inputs, start: int, stop: int) -> Inputs:
    """Examples ``start:stop`` of the inputs."""
    return map_inputs(lambda t: t[start:stop], inputs)


def cat_inputs(parts: Sequence[Inputs]) -> Inputs:
    """Concatenate inputs along the batch dimension (tensors, or mappings with equal keys)."""
    if isinstance(parts[0], Tensor):
        return torch.cat(list(parts))  # type: ignore[arg-type]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # type: ignore[index]


def move_inputs(
    inputs: Inputs, device: torch.device | str, dtype: torch.dtype | None = None
) -> Inputs:
    """Inputs on ``device``, floating tensors cast to ``dtype`` (integer inputs unchanged)."""

    def move(t: Tensor) -> Tensor:
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            return t.to(device=device, dtype=dtype)
        return t.to(device)

    return map_inputs(move, inputs)


def to_model(batch: Batch, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
    """The batch on ``device``, floating inputs cast to ``dtype`` (integer inputs unchanged)."""
    return Batch(move_inputs(batch.inputs, device, dtype), batch.target.to(device))


def iter_batches(
    data: Iterable[Any], device: torch.device | str, dtype: torch.dtype | None = None
) -> Iterator[Batch]:
    """Every batch of ``data`` read by :func:`read_batch` and moved by :func:`to_model`."""
    for batch in data:
        yield to_model(read_batch(batch), device, dtype)


def model_output(out: Any) -> Tensor:
    """The logits of a model output: a Tensor, ``out["logits"]`` or ``out.logits``."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise InputError(
        f"the model returned {type(out).__name__}; expected a Tensor or an output with logits"
    )


def call_model(model: Callable[..., Any], inputs: Inputs) -> Tensor:
    """model(x) for a Tensor input, model(**x) for keyword inputs; the logits of the output."""
    if isinstance(inputs, Tensor):
        return model_output(model(inputs))
    return model_output(model(**inputs))


class KeyedLoader:
    """A re-iterable view of a loader of mappings that reads ``target`` and ``inputs`` keys."""

    def __init__(
        self,
        loader: Iterable[Mapping[str, Any]],
        target: str = "labels",
        inputs: str | Sequence[str] | None = None,
    ) -> None:
        self.loader = check_loader(loader, "loader")
        if not isinstance(target, str):
            raise InputError(f"target must be a key (str), got {type(target).__name__}")
        self.target, self.inputs = target, inputs

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            if not isinstance(batch, Mapping):
                raise InputError(f"KeyedLoader reads mapping batches, got {type(batch).__name__}")
            yield read_batch(batch, self.target, self.inputs)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]
