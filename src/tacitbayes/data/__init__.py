"""Data sets (digits, fashion-mnist, mnist), splits, rotation shift, OOD pairs and task sequences."""

from tacitbayes.data.datasets import (
    DATASETS,
    OOD_PAIRS,
    BatchLoader,
    DataBundle,
    load_dataset,
    minibatches,
)
from tacitbayes.data.idx import read_idx, write_idx
from tacitbayes.data.shifts import rotate
from tacitbayes.data.tasks import Task, rotated_tasks, split_tasks

__all__ = [
    "DATASETS",
    "OOD_PAIRS",
    "BatchLoader",
    "DataBundle",
    "Task",
    "load_dataset",
    "minibatches",
    "read_idx",
    "rotate",
    "rotated_tasks",
    "split_tasks",
    "write_idx",
]
