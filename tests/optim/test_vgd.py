"""Variational GD: the update m ← m − ρ·mean ∇ℓ(m + εᵢ), the sampling protocol and its state."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from tacitbayes.errors import InputError
from tacitbayes.optim import VariationalGD

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _data() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(10, 3, generator=gen, dtype=DT), torch.randn(10, 2, generator=gen, dtype=DT)


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (model(x) - y).square().sum(-1).mean()


@pytest.mark.parametrize("n_samples", [1, 3])
def test_update_is_the_mean_of_sampled_gradients(n_samples: int) -> None:
    x, y = _data()
    model = _mlp()
    ref = _mlp()
    opt = VariationalGD(model.parameters(), lr=0.07, sigma=0.05, n_samples=n_samples, seed=4)
    replay = torch.Generator().manual_seed(4)
    for _ in range(3):
        grads = []
        mean = [p.detach().clone() for p in ref.parameters()]
        for _ in range(n_samples):
            with torch.no_grad():
                for p, m in zip(ref.parameters(), mean, strict=True):
                    p.copy_(m + 0.05 * torch.randn(p.shape, generator=replay, dtype=DT))
            ref.zero_grad()
            _loss(ref, x, y).backward()
            grads.append([p.grad.clone() for p in ref.parameters()])
        with torch.no_grad():
            for i, (p, m) in enumerate(zip(ref.parameters(), mean, strict=True)):
                p.copy_(m - 0.07 * torch.stack([g[i] for g in grads]).mean(0))

        def closure() -> Tensor:
            loss = _loss(model, x, y)
            loss.backward()
            return loss

        opt.step(closure)
    assert torch.allclose(_flat(model), _flat(ref), rtol=1e-12, atol=1e-14)
    assert opt.n_samples == n_samples


def test_sigma_zero_is_plain_gradient_descent() -> None:
    x, y = _data()
    model_a, model_b = _mlp(), _mlp()
    vgd = VariationalGD(model_a.parameters(), lr=0.1, sigma=0.0)
    sgd = torch.optim.SGD(model_b.parameters(), lr=0.1)
    for _ in range(5):
        with vgd.sampled_params(train=True):
            _loss(model_a, x, y).backward()
        vgd.step()
        sgd.zero_grad()
        _loss(model_b, x, y).backward()
        sgd.step()
    assert torch.allclose(_flat(model_a), _flat(model_b), rtol=1e-13, atol=1e-15)


def test_samples_have_std_sigma_and_the_mean_is_restored() -> None:
    model = nn.Linear(30, 40).double()
    opt = VariationalGD(model.parameters(), lr=0.1, sigma=0.02, seed=0)
    mu = _flat(model).clone()
    draws = []
    for _ in range(100):
        with opt.sampled_params():
            draws.append(_flat(model) - mu)
    assert torch.equal(_flat(model), mu)
    assert abs(float(torch.stack(draws).std()) / 0.02 - 1) < 0.01
    assert all(torch.equal(s, torch.full_like(s, 0.02)) for s in opt.posterior_std().values())


def test_weight_decay_and_groups() -> None:
    model = _mlp()
    groups = [
        {"params": model[0].parameters(), "sigma": 0.0, "weight_decay": 0.1},
        {"params": model[2].parameters(), "lr": 1e-3},
    ]
    opt = VariationalGD(groups, lr=0.2, sigma=0.01)
    x, y = _data()
    before = [p.detach().clone() for p in model.parameters()]
    with opt.sampled_params(train=True):
        _loss(model, x, y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    expected = [b - 0.2 * (g + 0.1 * b) for b, g in zip(before[:2], grads[:2], strict=True)] + [
        b - 1e-3 * g for b, g in zip(before[2:], grads[2:], strict=True)
    ]
    for p, e in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(p.detach(), e, rtol=1e-12, atol=1e-15)


def test_state_dict_round_trip_continues_identically() -> None:
    x, y = _data()
    model = _mlp()
    opt = VariationalGD(model.parameters(), lr=0.05, sigma=0.1, n_samples=2, seed=1)

    def train(m: nn.Module, o: VariationalGD, steps: int) -> None:
        for _ in range(steps):
            for _ in range(o.n_samples):
                with o.sampled_params(train=True):
                    _loss(m, x, y).backward()
            o.step()

    train(model, opt, 3)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
    train(model, opt, 3)
    model2 = _mlp(seed=5)
    model2.load_state_dict(saved[0])
    opt2 = VariationalGD(model2.parameters(), lr=0.05, sigma=0.1, n_samples=2, seed=99)
    opt2.load_state_dict(saved[1])
    train(model2, opt2, 3)
    assert torch.equal(_flat(model2), _flat(model))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": 0.0}, "lr"),
        ({"sigma": -0.1}, "sigma"),
        ({"sigma": float("inf")}, "sigma"),
        ({"n_samples": 0}, "n_samples"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_bad_hyperparameters_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        VariationalGD(_mlp().parameters(), **{"lr": 0.1, "sigma": 0.1, **kwargs})
