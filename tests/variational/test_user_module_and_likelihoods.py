"""VariationalModel never touches the caller's module; predict and IBVI for regression and binary."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tacitbayes.data import load_dataset
from tacitbayes.errors import InputError
from tacitbayes.models import build_model
from tacitbayes.training import TrainConfig, evaluate_accuracy, train_map
from tacitbayes.variational import IBVIConfig, VariationalModel, train_ibvi

pytestmark = pytest.mark.usefixtures("one_thread")


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_wrapping_a_trained_model_leaves_it_untouched() -> None:
    """The reported bug: wrapping re-initialised the user's trained network in place."""
    data = load_dataset("digits", ood=False)
    torch.manual_seed(0)
    net = build_model("mlp", data.input_shape, 10, width=64)
    train_map(net, data.train, TrainConfig(epochs=10, progress=False))
    accuracy, before = evaluate_accuracy(net, data.test), _state(net)
    assert accuracy > 0.85
    for init in (True, False):
        vnet = VariationalModel(net, init=init, layers=["5"], rank=2)
        assert vnet.model is not net
        assert evaluate_accuracy(net, data.test) == accuracy
        assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    # init=False starts from the trained weights; training the wrapper leaves net alone too
    assert evaluate_accuracy(vnet.mean_model(), data.test) == accuracy
    train_ibvi(vnet, data.train, IBVIConfig(epochs=1, progress=False))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert not torch.equal(vnet.model[5].weight, net[5].weight)


def test_init_is_an_explicit_choice() -> None:
    net = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="init"):
        VariationalModel(net)  # type: ignore[call-arg]
    with pytest.raises(InputError, match="init must be True"):
        VariationalModel(net, init=1)  # type: ignore[arg-type]
    torch.manual_seed(0)
    fresh = VariationalModel(net, init=True)
    assert not torch.equal(fresh.model.weight, net.weight)  # re-initialised copy
    assert torch.equal(VariationalModel(net, init=False).model.weight, net.weight)


def test_predict_regression_gives_mean_and_variance() -> None:
    """The reported bug: a 2-output regression net got softmax rows summing to 1."""
    torch.manual_seed(0)
    vnet = VariationalModel(nn.Linear(3, 2).double(), init=True, rank=2)
    x = torch.randn(5, 3, dtype=torch.float64)
    samples = [vnet.sample(torch.Generator().manual_seed(k)) for k in range(6)]
    outs = torch.stack([vnet.functional(s, x) for s in samples])
    mean, var = vnet.predict(x, samples=samples, likelihood="regression")
    torch.testing.assert_close(mean, outs.mean(0))
    torch.testing.assert_close(var, outs.var(0, unbiased=False))
    assert not torch.allclose(mean.sum(-1), torch.ones(5, dtype=torch.float64))
    _, noisy = vnet.predict(x, samples=samples, likelihood="regression", sigma_noise=0.5)
    torch.testing.assert_close(noisy, var + 0.25)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    drawn = vnet.predict(x, 6, generator=g1, likelihood="regression")[0]
    torch.testing.assert_close(drawn, vnet.predict(x, 6, generator=g2, likelihood="regression")[0])
    with pytest.raises(InputError, match="temperature applies"):
        vnet.predict(x, temperature=2.0, likelihood="regression")
    with pytest.raises(InputError, match="sigma_noise applies"):
        vnet.predict(x, sigma_noise=0.5)
    with pytest.raises(InputError, match="unknown likelihood"):
        vnet.predict(x, likelihood="poisson")


def test_predict_binary_gives_two_columns_from_the_sigmoid() -> None:
    torch.manual_seed(0)
    vnet = VariationalModel(nn.Linear(3, 1), init=True, rank=2)
    x = torch.randn(4, 3)
    samples = [vnet.sample(torch.Generator().manual_seed(k)) for k in range(5)]
    p = torch.stack([torch.sigmoid(vnet.functional(s, x) / 2.0) for s in samples]).mean(0)
    probs = vnet.predict(x, samples=samples, temperature=2.0, likelihood="binary")
    assert probs.shape == (4, 2)
    torch.testing.assert_close(probs, torch.cat([1 - p, p], dim=-1))
    with pytest.raises(InputError, match="one output"):
        VariationalModel(nn.Linear(3, 2), init=True).predict(x, 2, likelihood="binary")


def _regression(n: int = 240) -> tuple[TensorDataset, TensorDataset]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen)
    y = x @ torch.randn(4, 2, generator=gen) + 0.05 * torch.randn(n, 2, generator=gen)
    return TensorDataset(x[:200], y[:200]), TensorDataset(x[200:], y[200:])


def test_train_ibvi_regression_with_mse_and_a_dataloader() -> None:
    train, val = _regression()
    torch.manual_seed(0)
    vnet = VariationalModel(nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2)), init=True)
    loader = DataLoader(
        train, batch_size=20, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    config = IBVIConfig(epochs=15, lr=0.02, loss="mse", progress=False)
    result = train_ibvi(vnet, loader, config, val_set=DataLoader(val, batch_size=16))
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < 0.3 * first["train_loss"]
    assert set(last) == {"epoch", "train_loss", "val_loss_mean"}  # no accuracy for regression
    assert last["val_loss_mean"] < first["val_loss_mean"]
    x, y = val.tensors
    mean, var = vnet.predict(x, 16, likelihood="regression", sigma_noise=0.1)
    assert mean.shape == var.shape == (40, 2) and bool((var > 0.01 - 1e-6).all())
    assert float((mean - y).pow(2).mean()) < 0.5 * float(y.pow(2).mean())


def test_train_ibvi_binary_cross_entropy_on_one_logit() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 2, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).float()
    torch.manual_seed(0)
    vnet = VariationalModel(nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1)), init=True)
    batches = [(x[i : i + 25], y[i : i + 25]) for i in range(0, 250, 25)]  # a list of batches
    config = IBVIConfig(epochs=10, lr=0.05, loss="binary_cross_entropy", progress=False)
    result = train_ibvi(vnet, batches, config, val_set=TensorDataset(x[250:], y[250:]))
    assert result.history[-1]["val_accuracy_mean"] > 0.85
    assert "val_loss_mean" in result.history[-1]
    probs = vnet.predict(x[250:], 8, likelihood="binary")
    assert probs.shape == (50, 2)
    assert float((probs.argmax(-1) == y[250:].long()).float().mean()) > 0.85
