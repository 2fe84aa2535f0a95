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

**The data pass** of a multi-pass fit (one fixed order, checked) is
:class:`tacitbayes.data_pass.DataPass`.

**The data rule** (:func:`as_loader`, used by every training entry point): a map-style
``torch.utils.data.Dataset`` becomes a :class:`BatchLoader` with the caller's batch size
(training: shuffled, epoch e by a generator seeded from ``(seed, e)``); anything else (a
``DataLoader``, a list of batches, any re-iterable) is used as given, its batches read by
:func:`read_batch`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from tacitbayes.errors import DataError, InputError

__all__ = [
    "describe_inputs",
    "model_input_errors",
    "Batch",
    "BatchLoader",
    "Inputs",
    "KeyedLoader",
    "as_loader",
    "call_model",
    "cat_inputs",
    "check_loader",
    "count_examples",
    "iter_batches",
    "loader_for_epoch",
    "map_inputs",
    "minibatches",
    "model_output",
    "move_inputs",
    "n_batches",
    "n_examples",
    "peek_batch",
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
    _check_finite(x, y)
    return Batch(x, y)


def _check_finite(inputs: Inputs, target: Tensor) -> None:
    """DataError if a floating input or target holds NaN or ±inf (it would poison every sum)."""
    named = [("inputs", t) for t in _tensors(inputs)] + [("targets", target)]
    for what, t in named:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise DataError(f"the batch's {what} hold {bad} NaN or infinite values")


def _bare_inputs(data: Sequence[Any]) -> bool:
    """Whether a list of ≥ 3 tensors of one shape and dtype is a list of input batches, not (x, y, *extra)."""
    first = data[0]
    return (
        len(data) >= 3
        and isinstance(first, Tensor)
        and all(
            isinstance(t, Tensor) and t.shape == first.shape and t.dtype == first.dtype
            for t in data
        )
    )


def check_loader(data: Any, what: str = "data") -> Iterable[Any]:
    """A re-iterable of batches: a single batch becomes a one-batch list; iterators are refused."""
    if isinstance(data, Mapping) or (
        isinstance(data, (tuple, list))
        and len(data) >= 2
        and isinstance(data[1], Tensor)
        and isinstance(data[0], (Tensor, Mapping))
        and not _bare_inputs(data)
    ):
        return [data]
    if isinstance(data, Tensor) or not isinstance(data, Iterable):
        raise InputError(f"{what} must be a batch or a re-iterable of batches; {BATCH_HELP}")
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, Tensor) for t in data):
        raise InputError(f"{what} yields bare tensors (inputs without targets); {BATCH_HELP}")
    if iter(data) is data:
        raise InputError(
            f"{what} is a one-shot iterator; pass something that can be iterated more than "
            "once (a DataLoader or a list of batches)"
        )
    return data


class _OnePass:
    """The batches of one pass that was started to look at its first batch (re-iterable once)."""

    def __init__(self, first: Any, rest: Iterator[Any]) -> None:
        self._parts: tuple[Any, Iterator[Any]] | None = (first, rest)

    def __iter__(self) -> Iterator[Any]:
        if self._parts is None:
            raise InputError("this loader was peeked at and can be read only once")
        first, rest = self._parts
        self._parts = None
        yield first
        yield from rest


def peek_batch(data: Iterable[Any], what: str = "data") -> tuple[Batch, Iterable[Any]]:
    """(the first batch, read by :func:`read_batch`; a loader giving that same pass in full, once).

    Looking at the first batch costs no extra pass over the data: the pass it starts is
    the one the returned loader gives.
    """
    it = iter(check_loader(data, what))
    try:
        first = next(it)
    except StopIteration:
        raise InputError(f"{what} holds no batch") from None
    return read_batch(first), _OnePass(first, it)


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
    for i, batch in enumerate(data):
        try:
            read = read_batch(batch)
        except DataError as exc:
            raise DataError(f"batch {i}: {exc}") from None
        yield to_model(read, device, dtype)


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


# Messages of torch's RuntimeErrors that mean "these inputs do not fit this model".
_MISMATCH = (
    "shapes cannot be multiplied",
    "must have the same dtype",
    "same device",
    "expected scalar type",
    "size mismatch",
    "Expected input batch_size",
    "must match the size of tensor",
    "Input type (",
    "but got input of size",
    "Given groups=",
    "Expected floating point type",
    "should be the same",
    "Expected 3D (unbatched) or 4D (batched) input",
    "Expected 2D (unbatched) or 3D (batched) input",
)


def describe_inputs(inputs: Inputs) -> str:
    """ "shape (16, 7), torch.int64, on cpu" (per key for keyword inputs)."""
    if isinstance(inputs, Tensor):
        return f"shape {tuple(inputs.shape)}, {inputs.dtype}, on {inputs.device}"
    return "; ".join(f"{k}: {describe_inputs(v)}" for k, v in inputs.items())


@contextmanager
def model_input_errors(inputs: Inputs) -> Iterator[None]:
    """Turn torch's shape, dtype and device mismatch errors of a forward pass into an InputError naming the inputs."""
    try:
        yield
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if not any(pattern in first for pattern in _MISMATCH):
            raise
        raise InputError(
            f"the model cannot take these inputs ({describe_inputs(inputs)}): {first}; give "
            "inputs of the shape, dtype and device the model was built for"
        ) from exc


def call_model(model: Callable[..., Any], inputs: Inputs) -> Tensor:
    """model(x) for a Tensor input, model(**x) for keyword inputs; the logits of the output."""
    with model_input_errors(inputs):
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


# ---------------------------------------------------------------------- the data rule


def minibatches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[Tensor, ...]]:
    """Yield minibatches; tensors of a TensorDataset are sliced directly (fast path)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    if isinstance(dataset, TensorDataset):
        n = len(dataset)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield tuple(t[idx] for t in dataset.tensors)
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
    yield from (tuple(batch) if isinstance(batch, list) else batch for batch in loader)


class BatchLoader:
    """Re-iterable minibatches of a Dataset; shuffled: epoch e permuted by a generator seeded (seed, e).

    ``for_epoch(e)`` gives the loader of epoch e (the training loops call it through
    :func:`loader_for_epoch`); unshuffled, every pass is in the data set's order.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 256,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"seed must be an integer, got {seed!r}")
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.seed, self.epoch = bool(shuffle), seed, int(epoch)

    def for_epoch(self, epoch: int) -> BatchLoader:
        """The same loader at epoch ``epoch`` (its own shuffle when shuffled)."""
        return BatchLoader(
            self.dataset, self.batch_size, shuffle=self.shuffle, seed=self.seed, epoch=epoch
        )

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        generator = None
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return minibatches(self.dataset, self.batch_size, shuffle=self.shuffle, generator=generator)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)  # type: ignore[arg-type]


FIT_BATCH_SIZE = 256  # a Dataset given to a posterior's fit or tuning: batches of 256, in order


def as_loader(
    data: Any, batch_size: int, *, shuffle: bool = False, seed: int = 0, what: str = "data"
) -> Iterable[Any]:
    """The one data rule: a map-style Dataset → BatchLoader(data, batch_size, shuffle, seed); else as given.

    A ``DataLoader``, a :class:`BatchLoader`, a list of batches or any other re-iterable
    of batches is used as given (checked by :func:`check_loader`; a single ``(x, y)``
    batch is a one-batch loader): its own batch size and shuffling apply.
    """
    if isinstance(data, (BatchLoader, DataLoader)):
        return data
    if isinstance(data, IterableDataset):
        raise InputError(
            f"{what} is an IterableDataset: wrap it in a torch DataLoader with the batch size "
            "you want (an iterable data set cannot be shuffled here)"
        )
    if isinstance(data, Dataset):
        return BatchLoader(data, batch_size, shuffle=shuffle, seed=seed)
    return check_loader(data, what)


def loader_for_epoch(loader: Iterable[Any], epoch: int) -> Iterable[Any]:
    """The batches of epoch ``epoch``: a BatchLoader's epoch shuffle; any other loader as it is."""
    return loader.for_epoch(epoch) if isinstance(loader, BatchLoader) else loader


def n_batches(loader: Iterable[Any]) -> int:
    """``len(loader)``, or the batches counted in one pass when the loader has no length."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return sum(1 for _ in loader)


def count_examples(loader: Iterable[Any]) -> int:
    """N, the examples of one pass: ``len(dataset)`` of a BatchLoader, else counted in one pass."""
    if isinstance(loader, BatchLoader):
        return len(loader.dataset)  # type: ignore[arg-type]
    return sum(int(read_batch(batch).target.shape[0]) for batch in loader)
