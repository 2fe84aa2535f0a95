"""Data sets (digits, fashion-mnist, mnist), splits, rotation shift and OOD pairs."""

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

__all__ = [
    "DATASETS",
    "OOD_PAIRS",
    "BatchLoader",
    "DataBundle",
    "load_dataset",
    "minibatches",
    "read_idx",
    "rotate",
    "write_idx",
]
