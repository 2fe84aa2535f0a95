"""Tests for tacitbayes.functional: parameter dicts, flattening, subsets and f(params, x)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tacitbayes.errors import InputError
from tacitbayes.functional import (
    FunctionalModel,
    eval_mode,
    flatten,
    functionalize,
    last_layer_names,
    layer_names,
    model_params,
    n_params,
    resolve_param_names,
    unflatten,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(32, 3)).double()


def test_flatten_unflatten_roundtrip_and_order() -> None:
    model = _mlp()
    params = model_params(model)
    assert list(params) == [n for n, _ in model.named_parameters()]
    vec = flatten(params)
    assert vec.shape == (n_params(model),) == (5 * 7 + 7 + 7 * 3 + 3,)
    expected = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(vec, expected)
    back = unflatten(vec, params)
    assert all(torch.equal(back[k], params[k]) for k in params)
    # 1-D vectors are split into views.
    assert back["0.weight"].data_ptr() == vec.data_ptr()


def test_unflatten_keeps_leading_batch_dims() -> None:
    params = model_params(_mlp())
    block = torch.randn(4, n_params(params), dtype=torch.float64)
    out = unflatten(block, params)
    assert out["0.weight"].shape == (4, 7, 5)
    assert torch.equal(out["2.bias"][1], unflatten(block[1], params)["2.bias"])


def test_unflatten_rejects_wrong_length() -> None:
    params = model_params(_mlp())
    with pytest.raises(InputError, match="66"):
        unflatten(torch.zeros(65, dtype=torch.float64), params)
    with pytest.raises(InputError):
        flatten({})


def test_model_params_are_detached_aliases() -> None:
    model = _mlp()
    params = model_params(model, ["2.weight"])
    assert list(params) == ["2.weight"]
    t = params["2.weight"]
    assert not t.requires_grad
    assert t.data_ptr() == model[2].weight.data_ptr()
    with torch.no_grad():
        model[2].weight.add_(1.0)
    assert torch.equal(t, model[2].weight.detach())


def test_resolve_param_names_orders_and_validates() -> None:
    model = _mlp()
    assert resolve_param_names(model, ["2.bias", "0.weight"]) == ("0.weight", "2.bias")
    assert resolve_param_names(model, "2.bias") == ("2.bias",)
    with pytest.raises(InputError, match=r"valid names are .*0\.weight"):
        resolve_param_names(model, ["0.wieght"])
    with pytest.raises(InputError, match="more than once"):
        resolve_param_names(model, ["0.bias", "0.bias"])
    with pytest.raises(InputError, match="empty"):
        resolve_param_names(model, [])
    model[0].weight.requires_grad_(False)
    assert resolve_param_names(model) == ("0.bias", "2.weight", "2.bias")


def test_last_layer_and_layer_names() -> None:
    assert last_layer_names(_mlp()) == ["2.weight", "2.bias"]
    assert last_layer_names(_cnn()) == ["3.weight", "3.bias"]
    assert last_layer_names(nn.Linear(3, 2)) == ["weight", "bias"]
    assert layer_names(_cnn(), ["0"]) == ["0.weight", "0.bias"]
    assert layer_names(_cnn(), "3.bias") == ["3.bias"]
    assert last_layer_names(nn.Sequential(nn.Conv2d(1, 1, 1))) == ["0.weight", "0.bias"]
    with pytest.raises(InputError, match="no parameters"):
        last_layer_names(nn.Sequential(nn.ReLU()))
    with pytest.raises(InputError, match="submodules with parameters"):
        layer_names(_mlp(), ["1"])


def test_functional_model_matches_module_and_respects_fixed_params() -> None:
    model = _mlp()
    x = torch.randn(4, 5, dtype=torch.float64)
    fm = functionalize(model, last_layer_names(model))
    assert fm.param_names == ("2.weight", "2.bias")
    assert fm.n_params == 24
    params = fm.params()
    assert torch.allclose(fm(params, x), model(x))
    shifted = {k: v + 1.0 for k, v in params.items()}
    hidden = torch.tanh(model[0](x))  # (W + 1) h + (b + 1) = W h + b + Σh + 1
    assert torch.allclose(fm(shifted, x), model(x) + hidden.sum(1, keepdim=True) + 1)
    with torch.no_grad():  # fixed parameters are read from the module at call time
        model[0].bias.add_(0.5)
    assert torch.allclose(fm(params, x), model(x))


def test_functional_model_uses_eval_mode_and_restores_flags() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 2)
    ).double()
    model.train()
    model[1].running_mean.fill_(0.3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fm = FunctionalModel(model)
    x = torch.randn(8, 5, dtype=torch.float64)
    out1, out2 = fm(fm.params(), x), fm(fm.params(), x)
    assert torch.equal(out1, out2)  # no dropout noise
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    model.eval()
    assert torch.allclose(out1, model(x))
    model[3].train()  # mixed flags are restored exactly
    fm(fm.params(), x)
    assert [m.training for m in model.modules()] == [False, False, False, False, True]


def test_eval_mode_restores_flags_on_error() -> None:
    model = _mlp().train()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert all(m.training for m in model.modules())


def test_functional_model_rejects_non_module() -> None:
    with pytest.raises(InputError, match="nn.Module"):
        FunctionalModel(lambda x: x)  # type: ignore[arg-type]
