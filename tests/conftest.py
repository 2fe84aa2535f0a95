"""Shared fixtures: small synthetic IDX data sets written to a temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tacitbayes.data import write_idx
from tacitbayes.data.sources import IDX_NAMES


def write_fake_idx_dataset(
    directory: Path,
    n_train: int = 120,
    n_test: int = 40,
    images_dtype: type = np.uint8,
    label_values: np.ndarray | None = None,
    seed: int = 0,
) -> Path:
    """Write the four (Fashion-)MNIST IDX files with random 28x28 images."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28)).astype(images_dtype)
        labels = np.arange(n, dtype=np.uint8) % 10
        if label_values is not None and split == "train":
            labels = label_values.astype(np.uint8)
        write_idx(directory / f"{IDX_NAMES[split + '_images']}.gz", images)
        write_idx(directory / f"{IDX_NAMES[split + '_labels']}.gz", labels)
    return directory


@pytest.fixture
def fake_idx_dir(tmp_path: Path) -> Path:
    """A directory holding a small, valid, random IDX data set."""
    return write_fake_idx_dataset(tmp_path / "fake")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny problems: one thread avoids OpenMP oversubscription slowdowns on busy machines."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)
