"""VariationalModel: any Linear/Conv2d network, the prior at init, sampling, prediction, state."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tacitbayes.errors import InputError
from tacitbayes.variational import (
    IBVIConfig,
    VariationalModel,
    fit_temperature,
    init_std,
    layer_infos,
    train_ibvi,
)
from tacitbayes.variational.model import _LowRankSample

pytestmark = pytest.mark.usefixtures("one_thread")


def user_net() -> nn.Sequential:
    """A user's own network (not a tacitbayes model): conv, pool, linear layers."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 16),
        nn.Tanh(),
        nn.Linear(16, 3),
    )


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(12, 1, 8, 8, generator=gen), torch.randint(0, 3, (12,), generator=gen)


def test_wraps_user_sequential_with_conv(batch):
    x, y = batch
    torch.manual_seed(0)
    vnet = VariationalModel(user_net(), rank=3, init=True)
    assert vnet.layers == ("0", "6")  # default: first and last Linear/Conv2d
    assert vnet.var_names == ["0.weight", "0.bias", "6.weight", "6.bias"]
    assert vnet.factor("0").shape == (4 * 9 + 4, 3)
    assert vnet.factor("6").shape == (16 * 3 + 3, 3)
    loss = vnet.expected_loss(x, y, n_samples=2)
    loss.backward()
    names = {n for n, p in vnet.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert names == {n for n, _ in vnet.named_parameters()}  # μ, S and the deterministic layer
    probs = vnet.predict(x, n_samples=5)
    assert probs.shape == (12, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(12))
    assert torch.all(probs >= 0)
    # samples differ, the mean network does not move
    assert not torch.allclose(vnet(x), vnet(x))
    mean_net = vnet.mean_model()
    torch.testing.assert_close(mean_net(x), vnet.model(x))
    assert mean_net is not vnet.model


def test_sample_dict_and_module_agree(batch):
    x, _ = batch
    vnet = VariationalModel(user_net(), layers=["4"], rank=2, init=True)
    params = vnet.sample(torch.Generator().manual_seed(1))
    assert list(params) == [n for n, _ in vnet.model.named_parameters()]
    assert all(not t.requires_grad for t in params.values())
    net = vnet.sample_model(torch.Generator().manual_seed(1))
    assert isinstance(net, nn.Sequential)
    torch.testing.assert_close(net(x), vnet.functional(params, x))
    live = dict(vnet.model.named_parameters())
    assert torch.equal(params["0.weight"], live["0.weight"])  # deterministic layer untouched
    assert not torch.equal(params["4.weight"], live["4.weight"])
    with torch.no_grad():
        same = vnet.predict(x, samples=[params, params])
        torch.testing.assert_close(same, torch.softmax(net(x), -1))


def test_bad_layer_names_raise():
    net = user_net()
    with pytest.raises(InputError, match=r"'1' \(ReLU\).*valid names are \['0', '4', '6'\]"):
        VariationalModel(net, layers=["0", "1"], init=True)
    with pytest.raises(InputError, match=r"'fc' \(not a submodule\)"):
        VariationalModel(net, layers=["fc"], init=True)
    with pytest.raises(InputError, match="more than once"):
        VariationalModel(net, layers=["4", "4"], init=True)
    with pytest.raises(InputError, match="no nn.Linear or nn.Conv2d"):
        VariationalModel(nn.Sequential(nn.ReLU()), init=True)
    with pytest.raises(InputError, match="unknown covariance"):
        VariationalModel(net, covariance="full", init=True)
    with pytest.raises(InputError, match="rank must be"):
        VariationalModel(net, rank=0, init=True)
    with pytest.raises(InputError, match="not a variational layer"):
        VariationalModel(net, layers=["4"], init=True).factor("6")


def test_layers_empty_is_deterministic(batch):
    x, _ = batch
    vnet = VariationalModel(user_net(), layers=[], parametrization="mup", init=True)
    assert len(vnet.factors) == 0
    torch.testing.assert_close(vnet(x), vnet.model(x))


def test_prior_at_init_low_rank():
    """E[SSᵀ] = s²I: averaged over independent inits of a small layer."""
    torch.manual_seed(0)
    rank, draws = 4, 1500
    acc = torch.zeros(5 * 3 + 3, 5 * 3 + 3, dtype=torch.float64)
    for _ in range(draws):
        vnet = VariationalModel(nn.Linear(5, 3).double(), rank=rank, init=True)
        S = vnet.factor("").detach()
        acc += S @ S.T
    s2 = init_std(layer_infos(vnet.model)[""], "sp") ** 2
    torch.testing.assert_close(
        acc / draws, s2 * torch.eye(18, dtype=torch.float64), atol=0.06 * s2, rtol=0
    )
    # one big layer: SSᵀ ≈ s²I on its diagonal already
    big = VariationalModel(nn.Linear(400, 50), rank=8, init=True)
    S = big.factor("").detach()
    s2 = 1 / 400
    assert float((S * S).sum(1).mean()) == pytest.approx(s2, rel=0.02)


def test_samples_have_covariance_SSt():
    torch.manual_seed(1)
    vnet = VariationalModel(nn.Linear(3, 2).double(), rank=3, init=True)
    S, mu = vnet.factor("").detach(), vnet.mean("").detach()
    gen = torch.Generator().manual_seed(2)
    draws = torch.stack(
        [torch.cat([t.reshape(-1) for t in vnet.sample(gen).values()]) for _ in range(3000)]
    )
    cov = torch.cov(draws.T)
    torch.testing.assert_close(draws.mean(0), mu, atol=0.04, rtol=0)
    torch.testing.assert_close(cov, S @ S.T, atol=0.04, rtol=0)


def test_diagonal_covariance(batch):
    x, y = batch
    torch.manual_seed(0)
    vnet = VariationalModel(user_net(), covariance="diagonal", init=True)
    s = init_std(vnet.infos["6"], "sp")
    torch.testing.assert_close(vnet.factor("6"), torch.full((51,), s))
    vnet.expected_loss(x, y).backward()
    assert all(f.grad is not None for f in vnet.factors)
    groups = vnet.optimizer(torch.optim.SGD, lr=0.1).param_groups
    assert {g["lr"] for g in groups} == {0.1}  # SP, diagonal: ×1 everywhere


def test_low_rank_sample_gradient_matches_autograd():
    mu = torch.randn(7, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m, f: _LowRankSample.apply(m, f, z), (mu, ft))


def test_state_dict_round_trip(batch):
    x, _ = batch
    torch.manual_seed(0)
    vnet = VariationalModel(user_net(), rank=2, parametrization="mup", init=True)
    vnet.temperature.fill_(1.7)
    torch.manual_seed(5)
    other = VariationalModel(user_net(), rank=2, parametrization="mup", init=True)
    other.load_state_dict(vnet.state_dict())
    assert float(other.temperature) == pytest.approx(1.7)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(vnet.predict(x, 4, generator=g1), other.predict(x, 4, generator=g2))
    with pytest.raises(InputError, match="saved with settings"):
        VariationalModel(user_net(), rank=2, parametrization="sp", init=True).load_state_dict(
            vnet.state_dict()
        )


def test_init_false_keeps_weights():
    net = user_net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    vnet = VariationalModel(net, init=False)
    for n, p in vnet.model.named_parameters():
        assert torch.equal(p, before[n])


def test_predict_and_loss_input_checks(batch):
    x, y = batch
    vnet = VariationalModel(user_net(), init=True)
    with pytest.raises(InputError, match="temperature must be positive"):
        vnet.predict(x, temperature=0.0)
    with pytest.raises(InputError, match="n_samples"):
        vnet.expected_loss(x, y, n_samples=0)
    with pytest.raises(InputError, match="unknown loss"):
        vnet.expected_loss(x, y, loss="hinge")
    with pytest.raises(InputError, match="rows"):
        vnet.expected_loss(x, y[:3])


def test_train_and_temperature_on_blobs():
    """A few epochs on separable blobs: the expected loss falls; T minimises validation NLL."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 10, generator=gen) * 3
    labels = torch.randint(0, 3, (300,), generator=gen)
    inputs = centers[labels] + torch.randn(300, 10, generator=gen)
    net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    torch.manual_seed(0)
    vnet = VariationalModel(net, rank=4, init=True)
    train = TensorDataset(inputs[:200], labels[:200])
    result = train_ibvi(vnet, train, IBVIConfig(epochs=8, batch_size=32, lr=0.05, progress=False))
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    vx, vy = inputs[200:], labels[200:]
    temp = fit_temperature(
        vnet, vx, vy, n_samples=8, prior_std=None, generator=torch.Generator().manual_seed(1)
    )
    assert float(vnet.temperature) == pytest.approx(temp)

    def nll(t: float) -> float:
        probs = vnet.predict(vx, 8, t, generator=torch.Generator().manual_seed(1))
        return float(-probs.gather(1, vy[:, None]).log().mean())

    assert nll(temp) <= min(nll(1.0), nll(temp * 2), nll(temp / 2)) + 1e-6
    # the log-normal prior on T pulls the estimate towards 1, the more so the fewer examples
    gen = torch.Generator().manual_seed(1)
    shrunk = fit_temperature(vnet, vx[:20], vy[:20], 8, prior_std=0.1, generator=gen)
    gen = torch.Generator().manual_seed(1)
    free = fit_temperature(vnet, vx[:20], vy[:20], 8, prior_std=None, generator=gen)
    assert abs(math.log(shrunk)) < abs(math.log(free))
    with pytest.raises(InputError, match="unknown optimizer"):
        train_ibvi(vnet, train, IBVIConfig(optimizer="lbfgs"))


def test_train_ibvi_records_validation_accuracy_and_is_seeded() -> None:
    from tacitbayes.data import load_dataset
    from tacitbayes.models import build_model
    from tacitbayes.variational.training import IBVIConfig, train_ibvi

    data = load_dataset("digits", ood=False, n_train=200)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        vnet = VariationalModel(build_model("mlp", data.input_shape, 10, width=16), init=True)
        runs.append(
            train_ibvi(vnet, data.train, IBVIConfig(epochs=2, progress=False), val_set=data.val)
        )
    assert [h["epoch"] for h in runs[0].history] == [1, 2]
    assert all(0 <= h["val_accuracy_mean"] <= 1 for h in runs[0].history)
    assert runs[0].history == runs[1].history  # seeded: identical runs


def test_dropout_fires_in_train_mode_only(batch):
    """Train mode: same draw z, different dropout masks; predict is eval mode, deterministic."""
    x, _ = batch
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(p=0.5), nn.Linear(32, 3))
    vnet = VariationalModel(net, rank=2, init=True)
    net = vnet.model  # the wrapper's own copy
    vnet.train()
    out1 = vnet(x, torch.Generator().manual_seed(7))
    out2 = vnet(x, torch.Generator().manual_seed(7))  # same variational noise
    assert not torch.allclose(out1, out2)
    params = vnet.sample(torch.Generator().manual_seed(7))
    p1 = vnet.predict(x, samples=[params])
    p2 = vnet.predict(x, samples=[params])
    torch.testing.assert_close(p1, p2, rtol=0, atol=0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(vnet.predict(x, 4, generator=g1), vnet.predict(x, 4, generator=g2))
    assert vnet.training and net[2].training
    vnet.eval()  # eval mode: the forward pass is a function of z alone
    out3 = vnet(x, torch.Generator().manual_seed(7))
    torch.testing.assert_close(out3, vnet(x, torch.Generator().manual_seed(7)))
    torch.testing.assert_close(torch.softmax(out3, -1), p1)


def test_batchnorm_running_stats_move_in_training_not_in_predict():
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(32, 6, generator=gen) * 3 + 2
    labels = torch.randint(0, 3, (32,), generator=gen)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    vnet = VariationalModel(net, rank=2, init=True)
    bn = vnet.model[1]
    vnet.eval()  # the caller's mode, restored by train_ibvi
    before = bn.running_mean.clone()
    config = IBVIConfig(epochs=1, batch_size=16, lr=0.01, progress=False)
    train_ibvi(vnet, TensorDataset(inputs, labels), config)
    assert not torch.allclose(bn.running_mean, before)
    assert int(bn.num_batches_tracked) == 2
    assert not vnet.training and not any(m.training for m in vnet.modules())
    # expected_loss + backward in train mode moves them too; predict does not
    vnet.train()
    after_train = bn.running_mean.clone()
    vnet.expected_loss(inputs, labels).backward()
    assert not torch.allclose(bn.running_mean, after_train)
    frozen = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    vnet.predict(inputs, n_samples=3)
    assert torch.equal(bn.running_mean, frozen[0]) and torch.equal(bn.running_var, frozen[1])
    assert int(bn.num_batches_tracked) == frozen[2]


def test_predict_restores_training_flags(batch):
    x, _ = batch
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.5), nn.Linear(16, 3))
    vnet = VariationalModel(net, rank=2, init=True)
    net = vnet.model  # the wrapper's own copy
    vnet.train()
    net[2].eval()  # mixed flags must come back exactly
    flags = [m.training for m in vnet.modules()]
    vnet.predict(x, n_samples=2)
    assert [m.training for m in vnet.modules()] == flags
    vnet.eval()
    vnet.predict(x, n_samples=2)
    assert not any(m.training for m in vnet.modules())
    # train_ibvi restores mixed flags too
    vnet.train()
    net[2].eval()
    y = torch.randint(0, 3, (len(x),))
    train_ibvi(vnet, TensorDataset(x, y), IBVIConfig(epochs=1, batch_size=6, progress=False))
    assert [m.training for m in vnet.modules()] == flags
