"""Every posterior on the models users bring: a BatchNorm ResNet, a LayerNorm ViT and a small
transformer with token embeddings fed by Hugging Face-style dict batches."""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import tacitbayes as tb
from tacitbayes.batches import KeyedLoader
from tacitbayes.curvature import KFAC, ggn_diagonal
from tacitbayes.errors import InputError
from tacitbayes.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, SEQ, CLASSES = 12, 5, 3


class TinyTextClassifier(nn.Module):
    """Token embedding, positional embedding, LayerNorm, masked self-attention, mean pooling."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(0.1 * torch.randn(1, SEQ, dim))
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, CLASSES)
        self.dim = dim

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> SimpleNamespace:
        """Hugging Face style: keyword inputs, an output object with ``.logits``."""
        h = self.embed(input_ids) + self.pos
        q, k, v = self.qkv(self.norm(h)).chunk(3, dim=-1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.dim)
        keep = attention_mask[..., None, :] > 0
        scores = torch.where(keep, scores, torch.full_like(scores, -1e9))
        h = h + self.proj(torch.softmax(scores, -1) @ v)
        weights = attention_mask[..., None].to(h.dtype)
        pooled = (h * weights).sum(-2) / weights.sum(-2)
        return SimpleNamespace(logits=self.head(pooled))


class TextSet(Dataset):
    """Random token sequences with padding masks; items are dicts, the target under "labels"."""

    def __init__(self, n: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=gen)
        lengths = torch.randint(2, SEQ + 1, (n,), generator=gen)
        self.mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
        self.labels = torch.randint(0, CLASSES, (n,), generator=gen)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": self.mask[i],
            "labels": self.labels[i],
        }


class CountingLoader:
    """A re-iterable loader that counts its passes."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches, self.passes = batches, 0

    def __iter__(self) -> Iterator[Any]:
        self.passes += 1
        yield from self.batches


def image_batches(n: int, batch: int, dtype: torch.dtype) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 8, 8, generator=gen, dtype=dtype)
    y = torch.randint(0, 10, (n,), generator=gen)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def text_batches(n: int, batch: int) -> list[dict[str, Tensor]]:
    data = TextSet(n)
    return list(DataLoader(data, batch_size=batch))


def make(name: str, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, list[Any]]:
    """A small model in ``dtype`` and its batches (float32 images: the inputs are cast)."""
    torch.manual_seed(0)
    if name == "text":
        return TinyTextClassifier().to(dtype), text_batches(12, 4)
    if name == "resnet_bn":
        model = build_model("resnet", (1, 8, 8), 10, channels=(4, 8), blocks=1, norm="batch")
        model.train()  # give BatchNorm running statistics that are not the identity
        with torch.no_grad():
            for x, _ in image_batches(24, 8, torch.float32):
                model(x)
        model.eval()
    else:
        model = build_model("vit", (1, 8, 8), 10, dim=8, depth=1, heads=2)
    return model.to(dtype), image_batches(12, 4, torch.float32)


def first_inputs(batches: list[Any]) -> Any:
    b = batches[0]
    if isinstance(b, dict):
        return {k: v for k, v in b.items() if k != "labels"}
    return b[0]


def n_classes(name: str) -> int:
    return CLASSES if name == "text" else 10


MODELS = ["resnet_bn", "vit", "text"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("structure", ["kron", "diag", "last_layer"])
def test_laplace_on_every_model_reads_the_loader_once(name: str, structure: str) -> None:
    model, batches = make(name)
    loader = CountingLoader(batches)
    la = tb.Laplace(model, "classification", structure=structure).fit(loader)
    assert loader.passes == 1
    assert la.n_data == 12
    la.optimize_prior_precision()
    probs = la.predict(first_inputs(batches), n_samples=4)
    assert probs.shape == (4, n_classes(name)) and probs.dtype == torch.float64
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, dtype=torch.float64))
    assert torch.isfinite(la.log_marginal_likelihood())


@pytest.mark.parametrize("name", MODELS)
def test_projected_posterior_on_every_model(name: str) -> None:
    model, batches = make(name)
    loader = CountingLoader(batches)
    post = tb.ProjectedPosterior(model, "classification").fit(loader)
    assert loader.passes == 2  # the row count, then the kernel factors
    assert post.solver_used == "gram" and post.n_fit == 12
    assert post.null_space_residual(n_samples=4) < 1e-6
    probs = post.predict(first_inputs(batches), n_samples=4)
    assert probs.shape == (4, n_classes(name))
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("name", MODELS)
def test_variational_model_on_every_model(name: str) -> None:
    model, batches = make(name)
    vnet = tb.VariationalModel(model, init=False)
    x = first_inputs(batches)
    y = batches[0]["labels"] if name == "text" else batches[0][1]
    vnet.train()
    loss = vnet.expected_loss(x, y, n_samples=2)
    loss.backward()
    assert torch.isfinite(loss)
    probs = vnet.predict(x, n_samples=4)
    assert probs.shape == (4, n_classes(name))
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, dtype=torch.float64))


def test_dict_loaders_give_the_curvature_of_tuple_loaders() -> None:
    torch.manual_seed(0)
    model = TinyTextClassifier().double()
    data = TextSet(16)
    ordered = text_batches(16, 4)
    shuffled = DataLoader(data, batch_size=4, shuffle=True, num_workers=2)
    # the same examples as (inputs, target) tuples with keyword inputs
    tuples = [({k: b[k] for k in ("input_ids", "attention_mask")}, b["labels"]) for b in ordered]
    ref = KFAC(model, "cross_entropy", tuples, reduction="sum")
    got = KFAC(model, "cross_entropy", shuffled, reduction="sum")
    assert ref.blocks == got.blocks and got.n_data == 16
    torch.testing.assert_close(got.to_dense(), ref.to_dense(), rtol=1e-10, atol=1e-12)
    d_ref = ggn_diagonal(model, "cross_entropy", tuples, reduction="sum")
    d_got = ggn_diagonal(model, "cross_entropy", shuffled, reduction="sum")
    torch.testing.assert_close(d_got, d_ref, rtol=1e-10, atol=1e-12)
    dense = tb.curvature.GGN(model, "cross_entropy", ordered, reduction="sum").to_dense()
    torch.testing.assert_close(d_ref, dense.diagonal(), rtol=1e-9, atol=1e-12)
    # other keys: a KeyedLoader names the target and the (positional) input
    images = [{"image": x, "label": y} for x, y in image_batches(8, 4, torch.float64)]
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double()
    keyed = KFAC(net, "cross_entropy", KeyedLoader(images, target="label", inputs="image"))
    plain = KFAC(net, "cross_entropy", image_batches(8, 4, torch.float64))
    torch.testing.assert_close(keyed.to_dense(), plain.to_dense())
    with pytest.raises(InputError, match="no target 'labels'"):
        KFAC(net, "cross_entropy", images)


def test_float32_data_on_a_float64_model_and_back() -> None:
    model, batches = make("vit", torch.float64)  # float32 images, float64 weights
    la = tb.Laplace(model, "classification", structure="diag").fit(batches)
    assert la.curvature.diagonal.dtype == torch.float64
    model32, _ = make("vit", torch.float32)
    b64 = [(x.double(), y) for x, y in batches]
    la32 = tb.Laplace(model32, "classification", structure="diag").fit(b64)
    assert la32.curvature.diagonal.dtype == torch.float32
    torch.testing.assert_close(
        la32.curvature.diagonal.double(), la.curvature.diagonal, rtol=1e-3, atol=1e-6
    )
