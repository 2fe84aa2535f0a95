"""The last layer is the module that produces the output, found by tracing the forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from tacitbayes.errors import InputError
from tacitbayes.functional import find_last_layer, last_layer_names
from tacitbayes.posteriors.laplace import Laplace

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


class HeadFirst(nn.Module):
    """Creates ``head`` before ``fc`` but runs fc, then head: the last layer is ``head``."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.fc = nn.Linear(5, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.fc(x)))


class Tempered(nn.Module):
    """A head, then parameter-free ops: a fixed temperature, a reshape and a flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6, 3)
        self.body = nn.Sequential(nn.Linear(5, 6), nn.ReLU())
        self.register_buffer("temperature", torch.tensor(2.0))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.body(x)) / self.temperature
        return nn.functional.log_softmax(logits.reshape(len(x), 1, 3), -1).flatten(1)


class TwoHeads(nn.Module):
    """Two heads summed: neither runs after the other."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 4)
        self.left = nn.Linear(4, 3)
        self.right = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.body(x))
        return self.left(h) + self.right(h)


class Aside(nn.Module):
    """The last module to run (``probe``) does not reach the output."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(5, 3)
        self.probe = nn.Linear(5, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.head(x)
        self.probed = self.probe(x)
        return out


class Keyword(nn.Module):
    """Keyword inputs and an output object with ``.logits``; the head created first."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.embed = nn.Embedding(7, 4)

    def forward(self, input_ids: Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.head(self.embed(input_ids).mean(1)))


class CountingLoader:
    """A re-iterable loader that counts its passes."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches, self.passes = batches, 0

    def __iter__(self) -> Iterator[Any]:
        self.passes += 1
        yield from self.batches


def batches(n_in: int = 5, n: int = 10) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, n_in, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (n,), generator=gen)
    return [(x[:6], y[:6]), (x[6:], y[6:])]


def seeded(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().to(DT)


def test_head_created_first_is_still_the_last_layer() -> None:
    model, data = seeded(HeadFirst), batches()
    assert find_last_layer(model, data[0][0]) == "head"
    assert last_layer_names(model, data[0][0]) == ["head.weight", "head.bias"]
    loader = CountingLoader(data)
    la = Laplace(model, "classification", "last_layer").fit(loader)
    assert la.param_names == ("head.weight", "head.bias") and la.n_params == 15
    assert loader.passes == 1  # tracing reads the first batch of the fitting pass
    with pytest.raises(InputError, match="not an nn.Sequential"):
        last_layer_names(model)  # no inputs: creation order says nothing


def test_sequential_and_parameter_free_tail() -> None:
    seq = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.Softmax(-1)).to(DT)
    x = batches()[0][0]
    assert last_layer_names(seq) == last_layer_names(seq, x) == ["2.weight", "2.bias"]
    model = seeded(Tempered)
    assert last_layer_names(model, x) == ["head.weight", "head.bias"]
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(4, 3), nn.Flatten())
    assert find_last_layer(cnn, torch.randn(2, 1, 3, 4)) == "2"
    la = Laplace(model, "classification", "last_layer").fit(batches())
    assert la.param_names == ("head.weight", "head.bias")


def test_keyword_inputs_and_output_objects() -> None:
    model = seeded(Keyword)
    ids = torch.randint(0, 7, (4, 6))
    assert find_last_layer(model, {"input_ids": ids}) == "head"
    data = [{"input_ids": ids, "labels": torch.tensor([0, 1, 2, 0])}]
    la = Laplace(model, "classification", "last_layer").fit(data)
    assert la.param_names == ("head.weight", "head.bias")


def test_ambiguous_last_layers_raise() -> None:
    x = batches()[0][0]
    with pytest.raises(InputError, match=r"ambiguous.*'left', 'right'"):
        find_last_layer(seeded(TwoHeads), x)
    with pytest.raises(InputError, match=r"ambiguous.*'left', 'right'"):
        Laplace(seeded(TwoHeads), "classification", "last_layer").fit(batches())
    with pytest.raises(InputError, match="'probe' .* does not reach the output"):
        find_last_layer(seeded(Aside), x)


def test_a_named_layer_is_honoured() -> None:
    model, data = seeded(TwoHeads), batches()
    la = Laplace(model, "classification", "last_layer", last_layer_name="right").fit(data)
    assert la.param_names == ("right.weight", "right.bias")
    by_names = Laplace(model, "classification", "last_layer", param_names=["left.weight"])
    assert by_names.param_names == ("left.weight",)  # known before fit
    with pytest.raises(InputError, match="not both"):
        Laplace(model, "classification", "last_layer", param_names="left.bias", last_layer_name="x")
    with pytest.raises(InputError, match="structure='last_layer'"):
        Laplace(model, "classification", "kron", last_layer_name="right")
    with pytest.raises(InputError, match="no parameter lives under"):
        Laplace(model, "classification", "last_layer", last_layer_name="middle")
    with pytest.raises(InputError, match="call fit first"):
        _ = Laplace(model, "classification", "last_layer").n_params


def test_traced_posterior_equals_the_named_one() -> None:
    model, data = seeded(HeadFirst), batches()
    traced = Laplace(model, "classification", "last_layer", prior_precision=0.7).fit(data)
    named = Laplace(
        model, "classification", "last_layer", 0.7, param_names=["head.weight", "head.bias"]
    ).fit(data)
    assert traced.param_names == named.param_names
    torch.testing.assert_close(traced.curvature.hessian, named.curvature.hessian, rtol=0, atol=0)
    assert float(traced.log_marginal_likelihood()) == float(named.log_marginal_likelihood())
    torch.testing.assert_close(traced.posterior_variance(), named.posterior_variance())
    x = data[1][0]
    torch.testing.assert_close(traced.predict(x, n_samples=8), named.predict(x, n_samples=8))
    restored = Laplace(model, "classification", "last_layer", 0.7).load_state_dict(
        traced.state_dict()
    )
    assert restored.param_names == named.param_names
    torch.testing.assert_close(restored.predict(x, n_samples=8), named.predict(x, n_samples=8))
