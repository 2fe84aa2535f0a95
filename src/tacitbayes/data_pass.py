"""The one data pass of a fit: every pass reads each batch once, in one fixed order, checked.

A fit that reads its loader several times (the projected posterior's kernel products, its
residuals and evidence) needs the same rows in the same order on every pass. A
``DataLoader`` with a random sampler is read in order (:func:`fixed_order`); any other
loader is fingerprinted on its first pass and refused in one line the first time a later
pass differs (:class:`DataPass`). Batches are read by :func:`tacitbayes.batches.read_batch`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
)

from tacitbayes.batches import (
    FIT_BATCH_SIZE,
    Batch,
    as_loader,
    cat_inputs,
    read_batch,
    slice_inputs,
    to_model,
)
from tacitbayes.distributed import is_distributed, shard
from tacitbayes.errors import DataError, InputError

__all__ = ["PASS_HELP", "DataPass", "data_pass", "fingerprint", "fixed_order"]

PASS_HELP = (
    "a fit reads the data several times and needs the same rows in the same order on every "
    "pass: pass a loader with a fixed order and content (shuffle=False, no random "
    "transforms), or a torch DataLoader (a random sampler is then read in order)"
)


def fixed_order(loader: Iterable[Any]) -> Iterable[Any]:
    """A DataLoader with a random sampler as the same DataLoader read in order; anything else as given.

    RandomSampler (without replacement, the whole data set) becomes a SequentialSampler,
    SubsetRandomSampler its indices in their given order; the data set, batch size,
    drop_last, collate function and workers are kept. Other samplers are kept, and a
    :class:`DataPass` refuses them if their batches change between passes.
    """
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader
    batch_sampler = loader.batch_sampler
    if type(batch_sampler) is not BatchSampler:
        return loader
    sampler = batch_sampler.sampler
    if type(sampler) is RandomSampler and not sampler.replacement:
        if sampler.num_samples != len(sampler.data_source):  # type: ignore[arg-type]
            return loader
        ordered: Sampler[int] | Sequence[int] = SequentialSampler(loader.dataset)  # type: ignore[arg-type]
    elif type(sampler) is SubsetRandomSampler:
        ordered = list(sampler.indices)
    else:
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=batch_sampler.batch_size,
        sampler=ordered,  # type: ignore[arg-type]
        drop_last=batch_sampler.drop_last,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
    )


def fingerprint(batch: Batch) -> Tensor:
    """Position-weighted float64 sums of every tensor of a batch: equal for equal batches, changed by a reorder."""
    tensors = [batch.target] + (
        [batch.inputs] if isinstance(batch.inputs, Tensor) else list(batch.inputs.values())
    )
    parts = []
    for t in tensors:
        flat = t.detach().reshape(-1).to(torch.float64)
        weights = (
            torch.arange(flat.numel(), dtype=torch.float64, device=flat.device) * 0.6180339887498949
        ) % 1.0
        parts.append(
            torch.stack(
                [flat.new_tensor(float(flat.numel())), flat.sum(), (flat * (weights + 0.5)).sum()]
            )
        )
    return torch.cat(parts).cpu()


class DataPass:
    """The one data pass of a fit: every pass reads each batch once, in the same order, checked.

    ``data`` is anything :func:`as_loader` takes (a Dataset is batched by
    ``FIT_BATCH_SIZE``, in order). A DataLoader with a random sampler is read in a fixed
    order (:func:`fixed_order`). Under torch.distributed each rank reads its shard
    (:func:`tacitbayes.distributed.shard`). ``batch_size`` re-batches the examples into
    batches of that many (the last one smaller). Every batch is read by :func:`read_batch`
    and, by :meth:`batches`, moved to a device once. The first pass records a
    :func:`fingerprint` of each batch; a later pass whose batches differ (a sampler or
    transform that changes between passes, a generator that yields other data) raises
    DataError in one line, before a mismatched batch reaches a consumer. ``checked=False``
    skips that check, for consumers whose passes are order-free sums meant to follow
    in-place changes of the data (the GGN and Hessian operators).
    """

    def __init__(
        self,
        data: Any,
        *,
        batch_size: int | None = None,
        checked: bool = True,
        what: str = "the loader",
    ) -> None:
        if isinstance(data, DataPass):
            data = data.source
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.what = what
        self.source = fixed_order(as_loader(data, FIT_BATCH_SIZE, what=what))
        self.local = shard(self.source)
        self.presharded = is_distributed() and self.local is self.source
        self.batch_size, self.checked = batch_size, bool(checked)
        self.passes = 0
        self._prints: list[Tensor] | None = None

    def _read(self) -> Iterator[Batch]:
        for i, raw in enumerate(self.local):
            try:
                yield read_batch(raw)
            except DataError as exc:
                raise DataError(f"batch {i}: {exc}") from None

    def _rebatched(self) -> Iterator[Batch]:
        if self.batch_size is None:
            yield from self._read()
            return
        size, xs, ys, held = self.batch_size, [], [], 0
        for x, y in self._read():
            xs.append(x)
            ys.append(y)
            held += len(y)
            while held >= size:
                x_all, y_all = cat_inputs(xs), torch.cat(ys)
                yield Batch(slice_inputs(x_all, 0, size), y_all[:size])
                xs, ys = [slice_inputs(x_all, size, len(y_all))], [y_all[size:]]
                held -= size
        if held:
            yield Batch(cat_inputs(xs), torch.cat(ys))

    def __iter__(self) -> Iterator[Batch]:
        """One pass: this rank's batches, read once each, checked against the first pass."""
        if not self.checked:
            self.passes += 1
            yield from self._rebatched()
            return
        first = self._prints is None
        prints: list[Tensor] = []
        self.passes += 1
        count = 0
        for i, batch in enumerate(self._rebatched()):
            mark = fingerprint(batch)
            if first:
                prints.append(mark)
            elif i >= len(self._prints) or not torch.allclose(  # type: ignore[arg-type]
                mark,
                self._prints[i],
                rtol=1e-9,
                atol=0.0,  # type: ignore[index]
            ):
                raise DataError(
                    f"{self.what} gave other data in batch {i} of pass {self.passes} than in "
                    f"pass 1; {PASS_HELP}"
                )
            count += 1
            yield batch
        if first:
            self._prints = prints
        elif count != len(self._prints):  # type: ignore[arg-type]
            raise DataError(
                f"{self.what} gave {count} batches in pass {self.passes} and "
                f"{len(self._prints)} in pass 1; {PASS_HELP}"  # type: ignore[arg-type]
            )

    def batches(
        self, device: torch.device | str, dtype: torch.dtype | None = None
    ) -> Iterator[Batch]:
        """One pass with every batch moved by :func:`to_model` (floating inputs cast to ``dtype``)."""
        for batch in self:
            yield to_model(batch, device, dtype)


def data_pass(data: Any, what: str = "the loader") -> DataPass:
    """``data`` as a :class:`DataPass` (a DataPass is returned as it is, its fingerprints kept)."""
    return data if isinstance(data, DataPass) else DataPass(data, what=what)
