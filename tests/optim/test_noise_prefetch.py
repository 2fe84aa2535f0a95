"""Noise drawn ahead on a worker thread: bit-identical to drawing on demand, whatever is interleaved."""

from __future__ import annotations

import copy

import torch
from torch import nn

from tacitbayes.optim import IVON, VariationalGD
from tacitbayes.optim.noise_prefetch import PrefetchedNoise


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _pair(make) -> tuple[nn.Module, torch.optim.Optimizer, nn.Module, torch.optim.Optimizer]:  # noqa: ANN001
    """The same optimizer twice: drawing ahead (own generator) and on demand (a given one)."""
    a, b = _model(), _model()
    ahead = make(a.parameters(), seed=5)
    on_demand = make(b.parameters(), generator=torch.Generator().manual_seed(5))
    assert ahead._noise is not None and on_demand._noise is None
    return a, ahead, b, on_demand


def _steps(model: nn.Module, opt, n: int, x: torch.Tensor, y: torch.Tensor) -> None:  # noqa: ANN001
    for _ in range(n):
        for _ in range(opt.mc_samples):
            with opt.sampled_params(train=True):
                nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_ivon_with_noise_drawn_ahead_is_bit_identical_under_interleaved_uses() -> None:
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))

    def make(params, **kw):  # noqa: ANN001, ANN202
        return IVON(params, lr=0.05, ess=100.0, hess_init=0.5, mc_samples=2, **kw)

    a, ahead, b, on_demand = _pair(make)
    for model, opt in ((a, ahead), (b, on_demand)):
        _steps(model, opt, 3, x, y)
    # the generator shows the state of on-demand draws (the block in flight is rewound)
    assert torch.equal(ahead.generator.get_state(), on_demand.generator.get_state())
    preds = [opt.sampled_predict(m, x, n_samples=3) for m, opt in ((a, ahead), (b, on_demand))]
    assert torch.equal(preds[0], preds[1])  # predictions draw from the same stream
    states = [opt.state_dict() for opt in (ahead, on_demand)]
    assert torch.equal(states[0]["sampler"]["rng_state"], states[1]["sampler"]["rng_state"])
    for model, opt in ((a, ahead), (b, on_demand)):
        _steps(model, opt, 2, x, y)
    # a resumed copy of the state continues exactly
    c = _model()
    c.load_state_dict(a.state_dict())
    resumed = make(c.parameters(), seed=123)
    resumed.load_state_dict(copy.deepcopy(ahead.state_dict()))  # torch shares tensors otherwise
    for model, opt in ((a, ahead), (b, on_demand), (c, resumed)):
        _steps(model, opt, 2, x, y)
    for p, q, r in zip(a.parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(p, q) and torch.equal(p, r)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        for key in ("momentum", "hess"):
            assert torch.equal(ahead.state[p][key], on_demand.state[q][key])


def test_vgd_and_a_parameter_group_added_midway() -> None:
    x, y = torch.randn(12, 6), torch.randint(0, 3, (12,))

    def make(params, **kw):  # noqa: ANN001, ANN202
        params = list(params)
        return VariationalGD(params[:2], lr=0.1, sigma=0.05, **kw), params[2:]

    a, b = _model(), _model()
    ahead, rest_a = make(a.parameters(), seed=9)
    on_demand, rest_b = make(b.parameters(), generator=torch.Generator().manual_seed(9))
    for model, opt in ((a, ahead), (b, on_demand)):
        _steps(model, opt, 2, x, y)
    ahead.add_param_group({"params": rest_a})
    on_demand.add_param_group({"params": rest_b})
    for model, opt in ((a, ahead), (b, on_demand)):
        _steps(model, opt, 3, x, y)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_settle_rewinds_the_generator_and_a_new_shape_is_drawn_fresh() -> None:
    gen = torch.Generator().manual_seed(3)
    noise = PrefetchedNoise(gen)
    params = [torch.zeros(4, 5), torch.zeros(7)]
    replay = torch.Generator().manual_seed(3)
    for _ in range(3):
        got = noise.take(params)
        for t, p in zip(got, params, strict=True):
            assert torch.equal(t, torch.randn(p.shape, generator=replay))
    noise.settle()
    assert torch.equal(gen.get_state(), replay.get_state())
    other = [torch.zeros(2, 2)]
    assert torch.equal(noise.take(other)[0], torch.randn(2, 2, generator=replay))
    noise.reset()
    assert torch.equal(gen.get_state(), replay.get_state())
