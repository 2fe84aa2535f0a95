"""Task sequences for continual learning: class splits and rotations of one data set.

A split sequence gives task k the examples whose labels lie in ``class_groups[k]``
(split MNIST: ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))). A rotated sequence gives every
task all classes, with the inputs of all three splits rotated by that task's angle
(rotated MNIST; the rotation acts on the raw [0, 1] images, as in
:meth:`~tacitbayes.data.datasets.DataBundle.rotated_test`). Labels stay the data set's
global labels 0 … n_classes − 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch.utils.data import TensorDataset

from tacitbayes.data.datasets import DataBundle
from tacitbayes.data.shifts import rotate
from tacitbayes.devices import dataset_to
from tacitbayes.errors import InputError

__all__ = ["Task", "rotated_tasks", "split_tasks"]


@dataclass
class Task:
    """One task of a sequence: its name, its classes (global labels) and its three splits."""

    name: str
    classes: tuple[int, ...]
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset

    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"n_train": len(self.train), "n_val": len(self.val), "n_test": len(self.test)}

    def to(self, device: str | torch.device) -> Task:
        """A copy with the three splits on ``device``."""
        return replace(
            self,
            train=dataset_to(self.train, device),
            val=dataset_to(self.val, device),
            test=dataset_to(self.test, device),
        )


def _check_groups(class_groups: object, n_classes: int) -> list[tuple[int, ...]]:
    """Class groups as tuples of ints; InputError if empty, out of range or overlapping."""
    if isinstance(class_groups, (str, bytes)) or not isinstance(class_groups, Sequence):
        raise InputError("class_groups must be a sequence of class groups, e.g. ((0, 1), (2, 3))")
    if len(class_groups) == 0:
        raise InputError("class_groups is empty; give at least one group of classes")
    groups, seen = [], {}
    for k, group in enumerate(class_groups):
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence) or not group:
            raise InputError(f"class group {k} must be a non-empty sequence of class labels")
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in group):
            raise InputError(f"class group {k} must hold integer labels, got {list(group)}")
        bad = [c for c in group if not 0 <= c < n_classes]
        if bad:
            raise InputError(f"class group {k} has labels {bad} outside [0, {n_classes - 1}]")
        for c in group:
            if c in seen:
                where = "twice in it" if seen[c] == k else f"also in group {seen[c]}"
                raise InputError(f"class {c} of group {k} appears {where}; groups must be disjoint")
            seen[c] = k
        groups.append(tuple(group))
    return groups


def _subset(dataset: TensorDataset, classes: tuple[int, ...]) -> TensorDataset:
    """The examples of ``dataset`` whose label is in ``classes``."""
    x, y = dataset.tensors
    keep = torch.isin(y, torch.tensor(classes, dtype=y.dtype))
    return TensorDataset(x[keep], y[keep])


def split_tasks(bundle: DataBundle, class_groups: Sequence[Sequence[int]]) -> list[Task]:
    """Task k = the examples with labels in class_groups[k] (disjoint groups), every split filtered."""
    tasks = []
    for group in _check_groups(class_groups, bundle.n_classes):
        splits = [_subset(d, group) for d in (bundle.train, bundle.val, bundle.test)]
        name = "-".join(str(c) for c in group)
        empty = [s for s, d in zip(("train", "validation", "test"), splits, strict=True) if not d]
        if empty:
            raise InputError(f"task {name} has no {empty[0]} example in {bundle.name}")
        tasks.append(Task(name, group, *splits))
    return tasks


def _rotated(bundle: DataBundle, dataset: TensorDataset, degrees: float) -> TensorDataset:
    """``dataset`` with its raw images rotated by ``degrees`` and normalised again."""
    x, y = dataset.tensors
    return TensorDataset(bundle.normalize(rotate(x * bundle.std + bundle.mean, degrees)), y)


def rotated_tasks(bundle: DataBundle, angles: Sequence[float]) -> list[Task]:
    """Task k = all classes with every split's images rotated by angles[k] degrees."""
    if isinstance(angles, (str, bytes)) or not isinstance(angles, Sequence) or not angles:
        raise InputError("angles must be a non-empty sequence of rotation angles in degrees")
    ok = all(
        isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in angles
    )
    if not ok:
        raise InputError(f"angles must be finite numbers, got {list(angles)}")
    if len(set(angles)) != len(angles):
        raise InputError(f"angles must be distinct, got {list(angles)}")
    classes = tuple(range(bundle.n_classes))
    return [
        Task(
            f"rot{a:g}",
            classes,
            *(_rotated(bundle, d, float(a)) for d in (bundle.train, bundle.val, bundle.test)),
        )
        for a in angles
    ]
