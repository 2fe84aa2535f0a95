"""The loaders users bring, and the reference each one is held to.

Every loader of :data:`LOADERS` reads the rows of a :class:`~.models.Case`. Its reference
is the plain list of ``(x, y)`` tuples (:func:`tuple_loader`) of the same rows in the same
order, batched alike:

* a posterior's fit (:func:`fit_batches`): the library reads a DataLoader with a random
  sampler in dataset order (``tacitbayes.batches.fixed_order``), so the reference is the
  data set's order; ``drop_last=True`` keeps the full batches only;
* a training loop (:func:`train_batches`): the rows in the order the loader yields them
  in that pass, found by iterating a twin loader (same sampler, same settings) over the
  row indices after the same ``torch.manual_seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from .models import Case


class RowDataset(Dataset):
    """Map-style rows of a case: ``(x_i, y_i)``, a dict with ``"labels"``, or the index ``i``."""

    def __init__(self, case: Case, form: str) -> None:
        self.case, self.form = case, form

    def __len__(self) -> int:
        return self.case.n

    def __getitem__(self, i: int) -> Any:
        if self.form == "index":
            return i
        x, y = self.case.rows(torch.tensor(i))
        if self.form == "tuple":
            return x, y
        if isinstance(x, Tensor):  # dict batches of a tensor-input model: forward(x=...)
            return {"x": x, "labels": y}
        return {**x, "labels": y}


class GeneratorLoader:
    """A re-iterable whose ``__iter__`` is a generator over fixed (x, y) batches (no ``__len__``)."""

    def __init__(self, case: Case) -> None:
        self.case = case

    def __iter__(self) -> Iterator[tuple[Any, Tensor]]:
        n, size = self.case.n, self.case.batch_size
        for start in range(0, n, size):
            yield self.case.rows(torch.arange(start, min(n, start + size)))


def dataset_batches(case: Case, drop_last: bool = False) -> list[Tensor]:
    """Row indices of the batches of the data set in order (full batches only with drop_last)."""
    n, size = case.n, case.batch_size
    out = [torch.arange(s, min(n, s + size)) for s in range(0, n, size)]
    return [b for b in out if len(b) == size] if drop_last else out


def tuple_loader(case: Case, batches: list[Tensor]) -> list[tuple[Any, Tensor]]:
    """The reference: a list of (x, y) tuples, one per batch of row indices."""
    return [case.rows(index) for index in batches]


@dataclass(frozen=True)
class LoaderSpec:
    """How to build one kind of loader over a case, and which rows it holds."""

    name: str
    build: Callable[[Case, str], Any]  # (case, form) -> loader; form "tuple"/"dict"/"index"
    is_dataloader: bool = True
    drop_last: bool = False

    def make(self, case: Case, form: str | None = None) -> Any:
        return self.build(case, form or case.form)

    def fit_batches(self, case: Case) -> list[Tensor]:
        """The reference rows of a fit: the data set's order, full batches only with drop_last."""
        return dataset_batches(case, self.drop_last)

    def train_batches(self, case: Case, seed: int) -> list[Tensor]:
        """The rows of one pass in the order a training loop sees them after torch.manual_seed(seed)."""
        if not self.is_dataloader:
            return dataset_batches(case, self.drop_last)
        torch.manual_seed(seed)
        return [torch.as_tensor(b) for b in self.build(case, "index")]


def _dl(**kwargs: Any) -> Callable[[Case, str], DataLoader]:
    def build(case: Case, form: str) -> DataLoader:
        dataset = RowDataset(case, form)
        extra = dict(kwargs)
        if extra.pop("random_sampler", False):
            extra["sampler"] = RandomSampler(dataset)
        return DataLoader(dataset, batch_size=case.batch_size, **extra)

    return build


def _generator(case: Case, form: str) -> Any:
    return GeneratorLoader(case)


def _extra(case: Case, form: str) -> list[tuple[Any, Tensor, Tensor]]:
    """(x, y, example indices) tuples."""
    return [(*case.rows(index), index) for index in dataset_batches(case)]


def _dict(case: Case, form: str) -> DataLoader:
    return _dl(shuffle=False)(case, "index" if form == "index" else "dict")


LOADERS = {
    spec.name: spec
    for spec in (
        LoaderSpec("dataloader", _dl(shuffle=False)),
        LoaderSpec("dataloader-shuffle", _dl(shuffle=True)),
        LoaderSpec("dataloader-workers2-random-sampler", _dl(random_sampler=True, num_workers=2)),
        LoaderSpec("dataloader-drop-last", _dl(shuffle=False, drop_last=True), drop_last=True),
        LoaderSpec("generator-backed", _generator, is_dataloader=False),
        LoaderSpec("dict-batches", _dict),
        LoaderSpec("tuple-with-extra", _extra, is_dataloader=False),
    )
}
