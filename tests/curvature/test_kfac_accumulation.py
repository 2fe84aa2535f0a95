"""KFAC's running sums over many batches: float32 factors equal a float64 accumulation to 1e-6."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from tacitbayes.curvature import KFAC
from tacitbayes.data.sources import fashion_mnist

# one thread: a multithreaded pass slows down many times over on a busy 2-core machine
pytestmark = pytest.mark.usefixtures("one_thread")

BATCH = 128  # 469 batches over the 60,000 training images


def _relative(x: Tensor, ref: Tensor) -> float:
    """‖x − ref‖_F / ‖ref‖_F in float64."""
    return float((x.double() - ref).norm() / ref.norm())


def test_float32_factors_over_all_fashion_mnist_match_a_float64_accumulation() -> None:
    """A, G of a float32 784-64-10 MLP over 469 batches = the float64 pass to 1e-6 relative.

    The float64 reference forms the same per-batch products from float64 copies of the
    model and the images and sums them in float64. Before the sums were kept in float64,
    the last layer's 10×10 G was off by 2.7e-5 relative (float32 ``addmm_`` over 469 batches).
    """
    (images, labels), _ = fashion_mnist()
    x = torch.from_numpy(images).reshape(len(images), -1)
    x = (x - x.mean()) / x.std()
    y = torch.from_numpy(labels)
    assert x.shape == (60_000, 784)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 64), nn.Tanh(), nn.Linear(64, 10))
    k32 = KFAC(model, "cross_entropy", DataLoader(TensorDataset(x, y), batch_size=BATCH))
    model64 = copy.deepcopy(model).double()
    data64 = DataLoader(TensorDataset(x.double(), y), batch_size=BATCH)
    k64 = KFAC(model64, "cross_entropy", data64)
    assert k32.n_data == k64.n_data == 60_000
    for name in ("0", "2"):
        for which, ours, ref in zip("AG", k32.factors[name], k64.factors[name], strict=True):
            assert ours.dtype == torch.float32  # consumers get the model's dtype
            err = _relative(ours, ref)
            assert err < 1e-6, f"layer {name} {which}: relative error {err:.2e}"
