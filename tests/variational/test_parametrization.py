"""SP / NTK / μP: init scales and learning-rate multipliers match METHODS.md §2."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tacitbayes.errors import InputError
from tacitbayes.variational import (
    VariationalModel,
    init_std,
    layer_infos,
    param_groups,
    parametrize,
)
from tacitbayes.variational.parametrization import optimizer_rule

pytestmark = pytest.mark.usefixtures("one_thread")


D_IN, WIDTH, D_OUT = 20, 256, 5


def mlp() -> nn.Sequential:
    """Input (20→256), hidden (256→256), output (256→5) layers at indices 0, 2, 4."""
    return nn.Sequential(
        nn.Linear(D_IN, WIDTH),
        nn.ReLU(),
        nn.Linear(WIDTH, WIDTH),
        nn.ReLU(),
        nn.Linear(WIDTH, D_OUT),
    )


# (layer, fan_in, fan_out) of mlp()
LAYERS = {"0": (D_IN, WIDTH), "2": (WIDTH, WIDTH), "4": (WIDTH, D_OUT)}

# The table of METHODS.md §2, written out per layer: (weight multiplier, bias multiplier).
EXPECTED_LR = {
    ("sp", "sgd"): {"0": (1, 1), "2": (1, 1), "4": (1, 1)},
    ("sp", "adam"): {"0": (1, 1), "2": (1, 1), "4": (1, 1)},
    ("mup", "sgd"): {"0": (WIDTH, WIDTH), "2": (1, WIDTH), "4": (1 / WIDTH, D_OUT)},
    ("mup", "adam"): {"0": (1, 1), "2": (1 / WIDTH, 1), "4": (1 / WIDTH, 1)},
    ("ntk", "sgd"): {"0": (1 / D_IN, 1), "2": (1 / WIDTH, 1), "4": (1 / WIDTH, 1)},
    ("ntk", "adam"): {
        "0": (1 / math.sqrt(D_IN), 1),
        "2": (1 / math.sqrt(WIDTH), 1),
        "4": (1 / math.sqrt(WIDTH), 1),
    },
}
EXPECTED_STD = {
    "sp": {"0": 1 / math.sqrt(D_IN), "2": 1 / math.sqrt(WIDTH), "4": 1 / math.sqrt(WIDTH)},
    "ntk": {"0": 1 / math.sqrt(D_IN), "2": 1 / math.sqrt(WIDTH), "4": 1 / math.sqrt(WIDTH)},
    "mup": {"0": 1 / math.sqrt(D_IN), "2": 1 / math.sqrt(WIDTH), "4": 1 / WIDTH},
}


def _lr_of(groups: list[dict]) -> dict[int, float]:
    return {id(p): g["lr"] for g in groups for p in g["params"]}


def test_roles_and_fans():
    infos = layer_infos(mlp())
    assert [(i.name, i.role) for i in infos.values()] == [
        ("0", "input"),
        ("2", "hidden"),
        ("4", "output"),
    ]
    assert {n: (i.fan_in, i.fan_out) for n, i in infos.items()} == LAYERS
    conv = layer_infos(nn.Sequential(nn.Conv2d(3, 8, 5, groups=1), nn.Conv2d(8, 4, 3, groups=2)))
    assert (conv["0"].fan_in, conv["0"].fan_out) == (3 * 25, 8 * 25)
    assert (conv["1"].fan_in, conv["1"].fan_out) == (4 * 9, 4 * 9)


@pytest.mark.parametrize("parametrization", ["sp", "ntk", "mup"])
def test_init_scales(parametrization):
    torch.manual_seed(0)
    net = parametrize(mlp(), parametrization)
    infos = layer_infos(net)
    for name, layer in net.named_children():
        if not isinstance(layer, nn.Linear):
            continue
        expected = EXPECTED_STD[parametrization][name]
        assert init_std(infos[name], parametrization) == pytest.approx(expected)
        assert float(layer.weight.detach().std()) == pytest.approx(expected, rel=0.1)
        assert float(layer.weight.detach().mean()) == pytest.approx(0.0, abs=0.2 * expected)
        assert torch.all(layer.bias == 0)


@pytest.mark.parametrize("parametrization", ["sp", "ntk", "mup"])
@pytest.mark.parametrize("rule", ["sgd", "adam"])
def test_lr_multipliers_deterministic(parametrization, rule):
    net = mlp()
    lr = 0.3
    lrs = _lr_of(param_groups(net, parametrization, optimizer=rule, lr=lr))
    for name, (w_mult, b_mult) in EXPECTED_LR[parametrization, rule].items():
        layer = net.get_submodule(name)
        assert lrs[id(layer.weight)] == pytest.approx(lr * w_mult)
        assert lrs[id(layer.bias)] == pytest.approx(lr * b_mult)
    assert len(lrs) == len(list(net.parameters()))


@pytest.mark.parametrize("parametrization", ["sp", "mup"])
@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_variational_groups_and_factor_rate(parametrization, opt_cls):
    rank = 4
    vnet = VariationalModel(
        mlp(), layers=["0", "4"], rank=rank, parametrization=parametrization, init=True
    )
    opt = vnet.optimizer(opt_cls, lr=0.01)
    rule = "adam" if opt_cls is torch.optim.Adam else "sgd"
    lrs = _lr_of(opt.param_groups)
    assert len(lrs) == len(list(vnet.parameters())) == 6 + 4
    table = EXPECTED_LR[parametrization, rule]
    for name in ("0", "2", "4"):
        layer = vnet.model.get_submodule(name)
        assert lrs[id(layer.weight)] == pytest.approx(0.01 * table[name][0])
        assert lrs[id(layer.bias)] == pytest.approx(0.01 * table[name][1])
    # factors: (0.weight, 0.bias, 4.weight, 4.bias) learn at their mean's rate × 1/R
    means = [("0", 0), ("0", 1), ("4", 0), ("4", 1)]
    for factor, (name, kind) in zip(vnet.factors, means, strict=True):
        assert lrs[id(factor)] == pytest.approx(0.01 * table[name][kind] / rank)
    # init of the means follows the parametrization too
    assert float(vnet.model.get_submodule("4").weight.detach().std()) == pytest.approx(
        EXPECTED_STD[parametrization]["4"], rel=0.15
    )


def test_optimizer_rule_and_schedule_key():
    assert optimizer_rule(torch.optim.Adam) == optimizer_rule(torch.optim.AdamW) == "adam"
    assert optimizer_rule(torch.optim.SGD) == "sgd"
    groups = param_groups(mlp(), "mup", "sgd", lr=0.1)
    assert all(g["lr"] == pytest.approx(0.1 * g["lr_multiplier"]) for g in groups)
    opt = torch.optim.SGD(groups, lr=0.1)  # torch keeps the extra key for schedules
    assert all("lr_multiplier" in g for g in opt.param_groups)


class _NTKNet(nn.Module):
    """The NTK parametrization literally: v ~ N(0, 1), forward multiplier 1/√fan_in."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.vs = nn.ParameterList(
            nn.Parameter(torch.randn(o, i, dtype=torch.float64))
            for i, o in zip(widths[:-1], widths[1:], strict=True)
        )
        self.bs = nn.ParameterList(
            nn.Parameter(torch.randn(o, dtype=torch.float64) * 0.1) for o in widths[1:]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, (v, b) in enumerate(zip(self.vs, self.bs, strict=True)):
            x = x @ v.T / math.sqrt(v.shape[1]) + b
            x = torch.tanh(x) if k < len(self.vs) - 1 else x
        return x


@pytest.mark.parametrize("rule", ["sgd", "adam"])
def test_ntk_equivalent_form_follows_ntk_trajectory(rule):
    """SP weights w = v/√fan_in with the NTK multipliers reproduce training of the NTK network."""
    torch.manual_seed(0)
    widths = [6, 32, 32, 3]
    ntk = _NTKNet(widths)
    net = nn.Sequential(
        nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)
    ).double()
    with torch.no_grad():
        for layer, v, b in zip(net[::2], ntk.vs, ntk.bs, strict=True):
            layer.weight.copy_(v / math.sqrt(v.shape[1]))
            layer.bias.copy_(b)
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    lr, wd = 0.5 if rule == "sgd" else 0.01, 1e-3 if rule == "sgd" else 0.0
    cls = torch.optim.SGD if rule == "sgd" else torch.optim.Adam
    extra = {"momentum": 0.9} if rule == "sgd" else {"eps": 1e-30}
    opt_ntk = cls(ntk.parameters(), lr=lr, weight_decay=wd, **extra)
    opt_sp = cls(param_groups(net, "ntk", rule, lr=lr, weight_decay=wd), lr=lr, **extra)
    for _ in range(20):
        for model, opt in ((ntk, opt_ntk), (net, opt_sp)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for layer, v, b in zip(net[::2], ntk.vs, ntk.bs, strict=True):
        torch.testing.assert_close(layer.weight, v / math.sqrt(v.shape[1]), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(layer.bias, b, rtol=1e-9, atol=1e-9)


def test_single_layer_and_bad_names():
    (info,) = layer_infos(nn.Linear(4, 2)).values()
    assert info.role == "output" and info.name == ""
    with pytest.raises(InputError, match="unknown parametrization 'mu-p'.*sp, ntk, mup"):
        parametrize(mlp(), "mu-p")
    with pytest.raises(InputError, match="unknown optimizer rule"):
        param_groups(mlp(), "sp", optimizer="lbfgs")
    with pytest.raises(InputError, match="lr must be a positive"):
        param_groups(mlp(), "sp", lr=-1.0)
    with pytest.raises(InputError, match="expected an nn.Module"):
        layer_infos("not a model")  # type: ignore[arg-type]
