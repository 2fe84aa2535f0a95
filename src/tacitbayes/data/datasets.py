"""Data sets as normalised tensors with fixed train/validation/test splits, shift and OOD sets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from tacitbayes.batches import BatchLoader, minibatches  # noqa: F401  (tacitbayes.data exports them)
from tacitbayes.data import sources
from tacitbayes.data.shifts import rotate
from tacitbayes.devices import dataset_to
from tacitbayes.errors import InputError

DATASETS = ("digits", "fashion-mnist", "mnist")
OOD_PAIRS = {"digits": "photo-patches", "fashion-mnist": "mnist", "mnist": "fashion-mnist"}
DEFAULT_ANGLES = (15.0, 30.0, 45.0, 60.0, 75.0, 90.0)


@dataclass
class DataBundle:
    """Train/validation/test splits of one data set, with its rotation shift and OOD set.

    Inputs are float32 tensors of shape (N, 1, H, W), normalised as (x - mean) / std
    with the training set's mean and std; labels are int64.
    """

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    ood: torch.Tensor
    ood_name: str
    mean: float
    std: float
    n_classes: int = 10
    angles: tuple[float, ...] = field(default=DEFAULT_ANGLES)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one input."""
        return tuple(self.train.tensors[0].shape[1:])  # type: ignore[return-value]

    def to(self, device: str | torch.device) -> DataBundle:
        """A copy with the three splits and the OOD set on ``device``."""
        return replace(
            self,
            train=dataset_to(self.train, device),
            val=dataset_to(self.val, device),
            test=dataset_to(self.test, device),
            ood=self.ood.to(device),
        )

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Map raw [0, 1] images to the network's input scale."""
        return (raw - self.mean) / self.std

    def rotated_test(self, degrees: float) -> TensorDataset:
        """The test set rotated by ``degrees`` (rotation applied to the raw images)."""
        x, y = self.test.tensors
        raw = x * self.std + self.mean
        return TensorDataset(self.normalize(rotate(raw, degrees)), y)


def _to_images(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).unsqueeze(1)


def _split_indices(n: int, n_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_holdout:]), np.sort(perm[:n_holdout])


def _raw_arrays(name: str, data_dir: str | Path | None) -> tuple[np.ndarray, ...]:
    """Return (train_x, train_y, test_x, test_y) in [0, 1] for a named data set."""
    if name == "digits":
        x, y = sources.digits()
        rest, test = _split_indices(len(x), 360, seed=12345)
        return x[rest], y[rest], x[test], y[test]
    if name == "fashion-mnist":
        (trx, try_), (tex, tey) = sources.fashion_mnist(data_dir)
        return trx, try_, tex, tey
    if name == "mnist":
        directory = Path(data_dir) if data_dir is not None else None
        if directory is not None and sources.find_idx(directory, sources.IDX_NAMES["train_images"]):
            trx, try_ = sources.read_idx_pair(directory, "train", "mnist", sources.MNIST_HINT)
            tex, tey = sources.read_idx_pair(directory, "test", "mnist", sources.MNIST_HINT)
            return trx, try_, tex, tey
        x, y = sources.mnist(data_dir)  # the 10,000-digit test set (IDX or npm): split it
        rest, test = _split_indices(len(x), len(x) // 5, seed=12345)
        return x[rest], y[rest], x[test], y[test]
    raise InputError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


def _ood_images(name: str, n: int, size: int, ood_data_dir: str | Path | None) -> np.ndarray:
    if name == "digits":
        return sources.photo_patches(n, size=size, seed=7)
    if name == "fashion-mnist":
        x, _ = sources.mnist(ood_data_dir)
    else:
        (_, _), (x, _) = sources.fashion_mnist(ood_data_dir)
    return x[:n]


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    val_size: int | None = None,
    n_train: int | None = None,
    seed: int = 0,
    ood: bool = True,
    ood_data_dir: str | Path | None = None,
) -> DataBundle:
    """Load a data set with a seeded train/validation split, its shift and its OOD set.

    ``n_train`` keeps a seeded subset of the training split (for fast experiments).
    The validation split holds ``val_size`` training images (default: 10%, at most 5,000).
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if data_dir is not None:
        sources.require_directory(data_dir, "data directory")
    trx, try_, tex, tey = _raw_arrays(name, data_dir)
    if val_size is None:
        val_size = min(len(trx) // 10, 5000)
    if not 0 < val_size < len(trx):
        raise InputError(f"val_size must be in (0, {len(trx)}), got {val_size}")
    train_idx, val_idx = _split_indices(len(trx), val_size, seed)
    if n_train is not None:
        if not 0 < n_train <= len(train_idx):
            raise InputError(f"n_train must be in [1, {len(train_idx)}], got {n_train}")
        keep = np.random.default_rng(seed + 1).permutation(len(train_idx))[:n_train]
        train_idx = np.sort(train_idx[keep])
    mean = float(trx[train_idx].mean())
    std = float(trx[train_idx].std()) or 1.0
    norm = lambda a: (_to_images(a) - mean) / std  # noqa: E731
    ood_raw = (
        _ood_images(name, len(tex), trx.shape[-1], ood_data_dir)
        if ood
        else np.zeros((0,) + trx.shape[1:])
    )
    return DataBundle(
        name=name,
        train=TensorDataset(norm(trx[train_idx]), torch.from_numpy(try_[train_idx])),
        val=TensorDataset(norm(trx[val_idx]), torch.from_numpy(try_[val_idx])),
        test=TensorDataset(norm(tex), torch.from_numpy(tey)),
        ood=norm(ood_raw),
        ood_name=OOD_PAIRS[name] if ood else "",
        mean=mean,
        std=std,
    )
