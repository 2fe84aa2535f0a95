"""IVON: the update equations of METHODS.md §3, sampling, convex convergence, state and protocol."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from tacitbayes.errors import InputError
from tacitbayes.optim import IVON, sampled_predict

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _data(n: int = 16, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen, dtype=DT), torch.randint(0, 3, (n,), generator=gen)


def _train(model: nn.Module, opt: IVON, x: Tensor, y: Tensor, steps: int) -> None:
    for _ in range(steps):
        for _ in range(opt.mc_samples):
            with opt.sampled_params(train=True):
                nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# --------------------------------------------------------------------------- the update


def _reference_ivon(mu, a, b, eps_steps, lr, ess, h0, beta1, beta2, wd, clip=None):
    """METHODS.md §3 written out for L(θ) = Σ ½aθ² + bθ (so ∇L(θ) = aθ + b), in float64."""
    g = torch.zeros_like(mu)
    h = torch.full_like(mu, h0)
    for t, eps_samples in enumerate(eps_steps, start=1):
        sigma = 1.0 / torch.sqrt(ess * (h + wd))
        ghats = [a * (mu + sigma * e) + b for e in eps_samples]
        hhats = [gh * e / sigma for gh, e in zip(ghats, eps_samples, strict=True)]
        ghat = torch.stack(ghats).mean(0)
        hhat = torch.stack(hhats).mean(0)
        g = beta1 * g + (1 - beta1) * ghat
        h = beta2 * h + (1 - beta2) * hhat + 0.5 * (1 - beta2) ** 2 * (h - hhat) ** 2 / (h + wd)
        direction = (g / (1 - beta1**t) + wd * mu) / (h + wd)
        if clip is not None:
            direction = direction.clamp(-clip, clip)
        mu = mu - lr * direction
    return mu, g, h


@pytest.mark.parametrize(
    "mc_samples, beta2, clip", [(1, 0.9, None), (3, 0.99, None), (2, 1.0, None), (2, 0.8, 0.05)]
)
def test_update_matches_the_equations(mc_samples: int, beta2: float, clip: float | None) -> None:
    gen = torch.Generator().manual_seed(3)
    shapes = [(3, 2), (4,)]
    params = [nn.Parameter(torch.randn(s, generator=gen, dtype=DT)) for s in shapes]
    a = [torch.rand(s, generator=gen, dtype=DT) * 3 + 0.1 for s in shapes]
    b = [torch.randn(s, generator=gen, dtype=DT) for s in shapes]
    mu0 = torch.cat([p.detach().reshape(-1) for p in params])
    hyper = dict(lr=0.05, ess=20.0, hess_init=0.7, beta1=0.8, beta2=beta2, weight_decay=0.03)
    opt = IVON(params, mc_samples=mc_samples, clip_radius=clip, seed=11, **hyper)
    replay = torch.Generator().manual_seed(11)
    eps_steps = []
    for _ in range(4):
        samples = []
        for _ in range(mc_samples):
            samples.append(
                torch.cat([torch.randn(s, generator=replay, dtype=DT).reshape(-1) for s in shapes])
            )
            with opt.sampled_params(train=True):
                loss = sum(
                    (0.5 * ai * p**2 + bi * p).sum() for p, ai, bi in zip(params, a, b, strict=True)
                )
                loss.backward()
        eps_steps.append(samples)
        opt.step()
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    mu, g, h = _reference_ivon(
        mu0, flat(a), flat(b), eps_steps, hyper["lr"], hyper["ess"], hyper["hess_init"],
        hyper["beta1"], beta2, hyper["weight_decay"], clip,
    )  # fmt: skip
    assert torch.allclose(_flat(nn.ParameterList(params)), mu, rtol=1e-12, atol=1e-13)
    assert torch.allclose(
        flat([opt.state[p]["momentum"] for p in params]), g, rtol=1e-12, atol=1e-13
    )
    assert torch.allclose(flat([opt.state[p]["hess"] for p in params]), h, rtol=1e-12, atol=1e-13)
    if beta2 == 1.0:
        assert all(torch.equal(opt.state[p]["hess"], torch.full_like(p, 0.7)) for p in params)


# --------------------------------------------------------------------------- sampling


def test_fixed_covariance_samples_with_the_prior_std() -> None:
    model = nn.Sequential(nn.Linear(40, 50)).double()
    ess, h0, wd = 250.0, 0.3, 0.05
    opt = IVON(
        model.parameters(), lr=0.1, ess=ess, hess_init=h0, weight_decay=wd, beta2=1.0, seed=0
    )
    expected = 1.0 / math.sqrt(ess * (h0 + wd))
    x, y = torch.randn(8, 40, dtype=DT), torch.randint(0, 50, (8,))
    for round_ in range(2):  # before any step (scalar path) and after steps (cached-tensor path)
        for std in opt.posterior_std().values():
            assert torch.allclose(std, torch.full_like(std, expected), rtol=1e-14, atol=0)
        mu = _flat(model)
        draws = []
        for _ in range(200):
            with opt.sampled_params():
                draws.append(_flat(model) - mu)
        assert torch.equal(_flat(model), mu)  # the mean is restored exactly
        draws = torch.stack(draws)
        assert abs(float(draws.std()) / expected - 1.0) < 0.01  # 200 × 2,050 draws
        assert abs(float(draws.mean())) < 0.01 * expected
        for _ in range(3):
            with opt.sampled_params(train=True):
                nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        hess = [opt.state[p]["hess"] for p in model.parameters()]
        assert all(torch.equal(hh, torch.full_like(hh, h0)) for hh in hess), round_


def test_sample_is_mean_plus_sigma_times_the_seeded_noise() -> None:
    model = _mlp()
    opt = IVON(model.parameters(), lr=0.1, ess=100.0, hess_init=0.5, seed=42)
    mu = [p.detach().clone() for p in model.parameters()]
    std = [opt.posterior_std()[p] for p in model.parameters()]
    replay = torch.Generator().manual_seed(42)
    with opt.sampled_params():
        for p, m, s in zip(model.parameters(), mu, std, strict=True):
            eps = torch.randn(p.shape, generator=replay, dtype=DT)
            assert torch.allclose(p, m + s * eps, rtol=0, atol=1e-15)


def test_mean_restored_after_an_exception_and_nothing_collected() -> None:
    model = _mlp()
    opt = IVON(model.parameters(), lr=0.1, ess=10.0, seed=0)
    before = _flat(model).clone()
    x, y = _data()
    with pytest.raises(RuntimeError, match="boom"), opt.sampled_params(train=True):
        nn.functional.cross_entropy(model(x), y).backward()
        raise RuntimeError("boom")
    assert torch.equal(_flat(model), before)
    with pytest.raises(InputError, match="no sampled gradient"):
        opt.step()


def test_the_mean_keeps_its_storage_and_a_sample_keeps_the_parameter_layout() -> None:
    """θ lives in a buffer the parameter points at inside the context; μ's own storage is
    never written, and the parameter points back at it on leaving."""
    conv = nn.Conv2d(3, 4, 3).double().to(memory_format=torch.channels_last)
    opt = IVON(conv.parameters(), lr=0.1, ess=10.0, seed=1)
    mu = conv.weight.detach().clone()
    ptr, strides = conv.weight.data_ptr(), conv.weight.stride()
    with opt.sampled_params(train=True):
        assert conv.weight.stride() == strides and conv.weight.data_ptr() != ptr
        assert not torch.equal(conv.weight, mu)
        conv(torch.randn(2, 3, 5, 5, dtype=DT)).sum().backward()
    assert conv.weight.data_ptr() == ptr and torch.equal(conv.weight, mu)
    assert conv.weight.grad is not None and conv.weight.grad.shape == mu.shape


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_sample_restore_and_step_on_the_device(device: str) -> None:
    """On the model's device: θ = μ + σ ⊙ ε with ε the seeded stream of a generator there,
    μ restored in its own storage, and a step that matches the eager update."""
    if device == "cuda":
        assert torch.cuda.is_available(), "the gpu tests need a CUDA device"
    x, y = (t.to(device) for t in _data())
    model = _mlp().to(device)
    gen = torch.Generator(device=device).manual_seed(7)
    replay = torch.Generator(device=device).manual_seed(7)
    opt = IVON(model.parameters(), lr=0.1, ess=50.0, hess_init=0.5, beta2=0.9, generator=gen)
    twin = copy.deepcopy(model)
    eager = IVON(twin.parameters(), lr=0.1, ess=50.0, hess_init=0.5, beta2=0.9, fused=False)
    eager.generator = torch.Generator(device=device).manual_seed(7)
    for _ in range(3):
        mu = [p.detach().clone() for p in model.parameters()]
        std = [opt.posterior_std()[p] for p in model.parameters()]
        ptrs = [p.data_ptr() for p in model.parameters()]
        with opt.sampled_params(train=True):
            for p, m, s in zip(model.parameters(), mu, std, strict=True):
                eps = torch.randn(p.shape, generator=replay, dtype=DT, device=device)
                torch.testing.assert_close(p, m + s * eps, rtol=0, atol=1e-14)
            nn.functional.cross_entropy(model(x), y).backward()
        assert [p.data_ptr() for p in model.parameters()] == ptrs
        assert all(torch.equal(p, m) for p, m in zip(model.parameters(), mu, strict=True))
        opt.step()
        with eager.sampled_params(train=True):
            nn.functional.cross_entropy(twin(x), y).backward()
        eager.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_parameter_converted_after_a_sample_gets_a_new_sample_buffer() -> None:
    model = _mlp().float()
    opt = IVON(model.parameters(), lr=0.1, ess=10.0, seed=0)
    with opt.sampled_params():
        pass
    model.double()  # the same Parameter objects, now float64
    mu = _flat(model).clone()
    with opt.sampled_params():
        assert all(p.dtype == DT for p in model.parameters())
        assert not torch.equal(_flat(model), mu)
    assert torch.equal(_flat(model), mu)


def test_backward_after_leaving_the_context_raises() -> None:
    """A graph built on θ cannot be backpropagated once the parameter holds μ again (it
    would read μ where the forward pass used θ)."""
    model = _mlp()
    opt = IVON(model.parameters(), lr=0.1, ess=10.0, seed=0)
    x, y = _data()
    with opt.sampled_params(train=True):
        loss = nn.functional.cross_entropy(model(x), y)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# --------------------------------------------------------------------------- convex problem


def test_logistic_regression_mean_near_map_and_variance_near_inverse_diag_hessian() -> None:
    """ess = N: E[ĥ] = diag E_q[∇²L̄] (Stein), so σ² → 1/(N (diag ∇²L̄(θ*) + δ)), μ → θ* + O(σ²)."""
    n, d, wd = 500, 4, 1e-2
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen, dtype=DT)
    x[:, 1] += 0.8 * x[:, 0]  # correlated features: diag(H⁻¹) ≠ 1/diag(H)
    w_true = torch.tensor([1.5, -1.0, 0.5, 0.0], dtype=DT)
    y = (torch.rand(n, generator=gen, dtype=DT) < torch.sigmoid(x @ w_true + 0.3)).to(DT)

    def mean_loss(theta: Tensor) -> Tensor:
        return nn.functional.binary_cross_entropy_with_logits(x @ theta[:d] + theta[d], y)

    objective = lambda t: mean_loss(t) + 0.5 * wd * t.square().sum()  # noqa: E731
    theta = torch.zeros(d + 1, dtype=DT)
    for _ in range(25):  # Newton on the MAP objective
        theta = theta - torch.linalg.solve(
            torch.func.hessian(objective)(theta), torch.func.grad(objective)(theta)
        )
    assert float(torch.func.grad(objective)(theta).norm()) < 1e-12
    hess = torch.func.hessian(mean_loss)(theta)
    var_pred = 1.0 / (n * (hess.diagonal() + wd))

    torch.manual_seed(0)
    model = nn.Linear(d, 1).double()
    opt = IVON(
        model.parameters(), lr=0.3, ess=n, hess_init=0.1, beta2=0.995, weight_decay=wd, seed=0
    )
    mus, hs = [], []
    steps, tail = 1500, 700
    for t in range(steps):
        with opt.sampled_params(train=True):
            loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
            loss.backward()
        opt.step()
        if t >= steps - tail:
            mus.append(torch.cat([model.weight.detach().reshape(-1), model.bias.detach()]))
            hs.append(
                torch.cat(
                    [opt.state[model.weight]["hess"].reshape(-1), opt.state[model.bias]["hess"]]
                )
            )
    std = opt.posterior_std()
    last = torch.cat([std[model.weight].reshape(-1), std[model.bias]]) ** 2
    assert torch.allclose(last, 1.0 / (n * (hs[-1] + wd)), rtol=1e-12)  # σ² = 1/(λ(h + δ))
    mu, var = torch.stack(mus).mean(0), 1.0 / (n * (torch.stack(hs).mean(0) + wd))
    assert ((mu - theta).abs() / var_pred.sqrt()).max() < 0.3
    assert ((var / var_pred) - 1).abs().max() < 0.1
    # the mean-field variance is the inverse of the diagonal, not the diagonal of the inverse
    diag_of_inverse = torch.linalg.inv(n * (hess + wd * torch.eye(d + 1, dtype=DT))).diagonal()
    assert ((diag_of_inverse / var_pred) - 1).abs().max() > 0.3


# --------------------------------------------------------------------------- state and protocol


def test_state_dict_round_trip_continues_identically() -> None:
    x, y = _data()
    model = _mlp()
    opt = IVON(
        model.parameters(), lr=0.05, ess=16.0, hess_init=0.5, beta2=0.99, mc_samples=2, seed=5
    )
    _train(model, opt, x, y, 3)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    assert {"step", "momentum", "hess"} <= set(saved_opt["state"][0])
    _train(model, opt, x, y, 4)
    reference = _flat(model).clone()

    model2 = _mlp(seed=9)
    model2.load_state_dict(saved_model)
    opt2 = IVON(
        model2.parameters(), lr=0.05, ess=16.0, hess_init=0.5, beta2=0.99, mc_samples=2, seed=77
    )
    opt2.load_state_dict(saved_opt)
    _train(model2, opt2, x, y, 4)
    assert torch.equal(_flat(model2), reference)


def test_parameters_without_gradient_are_untouched() -> None:
    model = _mlp()
    unused = nn.Parameter(torch.ones(5, dtype=DT))
    frozen = nn.Parameter(torch.full((2,), 3.0, dtype=DT), requires_grad=False)
    opt = IVON([*model.parameters(), unused, frozen], lr=0.1, ess=16.0, seed=0)
    x, y = _data()
    _train(model, opt, x, y, 3)
    assert torch.equal(unused, torch.ones(5, dtype=DT)) and unused.grad is None
    assert torch.equal(frozen, torch.full((2,), 3.0, dtype=DT))
    assert unused not in opt.state or not opt.state[unused]
    assert frozen not in opt.state or not opt.state[frozen]
    assert all(opt.state[p]["step"] == 3 for p in model.parameters())


def test_parameter_groups_have_their_own_hyperparameters() -> None:
    model = _mlp()
    first, second = model[0], model[2]
    opt = IVON(
        [
            {"params": first.parameters(), "ess": 400.0, "hess_init": 2.0},
            {"params": second.parameters(), "lr": 0.0005, "weight_decay": 0.5},
        ],
        lr=0.1,
        ess=25.0,
        hess_init=0.1,
        seed=0,
    )
    std = opt.posterior_std()
    assert torch.allclose(
        std[first.weight], torch.full_like(first.weight, (400 * (2.0 + 1e-4)) ** -0.5)
    )
    assert torch.allclose(std[second.weight], torch.full_like(second.weight, (25 * 0.6) ** -0.5))
    x, y = _data()
    before = [p.detach().clone() for p in model.parameters()]
    with opt.sampled_params(train=True):
        nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    # first step: g/(1 − β₁) = ĝ, h = h₀ (the Hessian moves by (1 − β₂)ĥ only)
    hyper = [(0.1, 1e-4, 2.0)] * 2 + [(0.0005, 0.5, 0.1)] * 2
    for p, b, g, (lr, wd, h0) in zip(model.parameters(), before, grads, hyper, strict=True):
        h = opt.state[p]["hess"]
        assert torch.allclose(p.detach(), b - lr * (g + wd * b) / (h + wd), rtol=1e-10, atol=1e-14)
        assert torch.allclose(h, torch.full_like(h, h0), rtol=1e-3)


def test_gradient_accumulation_inside_one_sample_equals_the_full_batch() -> None:
    x, y = _data(n=16)
    results = []
    for split in (False, True):
        model = _mlp()
        opt = IVON(model.parameters(), lr=0.1, ess=16.0, beta2=0.9, seed=3)
        for _ in range(3):
            with opt.sampled_params(train=True):
                if split:
                    for xb, yb in ((x[:8], y[:8]), (x[8:], y[8:])):
                        (0.5 * nn.functional.cross_entropy(model(xb), yb)).backward()
                else:
                    nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        results.append(_flat(model))
    assert torch.allclose(results[0], results[1], rtol=1e-12, atol=1e-14)


def test_closure_step_equals_the_context_protocol() -> None:
    x, y = _data()
    model_a, model_b = _mlp(), _mlp()
    opt_a = IVON(model_a.parameters(), lr=0.1, ess=16.0, mc_samples=3, beta2=0.9, seed=8)
    opt_b = IVON(model_b.parameters(), lr=0.1, ess=16.0, mc_samples=3, beta2=0.9, seed=8)
    _train(model_a, opt_a, x, y, 2)

    def closure() -> Tensor:
        opt_b.zero_grad()
        loss = nn.functional.cross_entropy(model_b(x), y)
        loss.backward()
        return loss

    for _ in range(2):
        loss = opt_b.step(closure)
    assert isinstance(loss, float) and math.isfinite(loss)
    assert torch.equal(_flat(model_a), _flat(model_b))


def test_grad_after_the_samples_is_their_average() -> None:
    model = nn.Linear(3, 1, bias=False).double()
    opt = IVON(model.parameters(), lr=0.1, ess=4.0, seed=0)
    grads = []
    for _ in range(3):
        with opt.sampled_params(train=True):
            model.weight.square().sum().backward()
            grads.append(model.weight.grad.clone())
    assert torch.allclose(model.weight.grad, torch.stack(grads).mean(0), rtol=1e-14)


def test_sampled_predict_averages_softmax() -> None:
    model = _mlp()
    x, _ = _data(n=5)
    opt = IVON(model.parameters(), lr=0.1, ess=8.0, seed=0)
    probs = opt.sampled_predict(model, x, n_samples=8)
    assert probs.shape == (5, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(5, dtype=DT))
    manual = []
    gen_a, gen_b = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for _ in range(4):
        with opt.sampled_params(generator=gen_a):
            manual.append(torch.softmax(model(x), -1))
    assert torch.allclose(
        opt.sampled_predict(model, x, 4, generator=gen_b), torch.stack(manual).mean(0)
    )
    assert torch.allclose(sampled_predict(opt, model, x, 2).sum(-1), torch.ones(5, dtype=DT))
    with pytest.raises(InputError):
        opt.sampled_predict(model, x, n_samples=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"ess": 0.0}, "ess"),
        ({"hess_init": 0.0}, "hess_init"),
        ({"beta1": 1.0}, "beta1"),
        ({"beta1": -0.1}, "beta1"),
        ({"beta2": 1.5}, "beta2"),
        ({"weight_decay": -1e-3}, "weight_decay"),
        ({"mc_samples": 0}, "mc_samples"),
        ({"clip_radius": 0.0}, "clip_radius"),
        ({"lr": float("nan")}, "lr"),
    ],
)
def test_bad_hyperparameters_raise(kwargs: dict, match: str) -> None:
    base = {"lr": 0.1, "ess": 10.0}
    with pytest.raises(InputError, match=match):
        IVON(_mlp().parameters(), **{**base, **kwargs})


def test_bad_group_and_misuse_raise() -> None:
    model = _mlp()
    with pytest.raises(InputError, match="beta2"):
        IVON([{"params": model.parameters(), "beta2": -0.5}], lr=0.1, ess=10.0)
    opt = IVON(model.parameters(), lr=0.1, ess=10.0)
    with pytest.raises(InputError, match="nested"), opt.sampled_params(), opt.sampled_params():
        pass
    with pytest.raises(InputError, match="no sampled gradient"):
        opt.step()
    with pytest.raises(InputError, match="inside"), opt.sampled_params():
        opt.step()


def test_a_context_between_the_sample_and_step_leaves_the_update_unchanged() -> None:
    """ĝ ⊙ ε of a single sample is formed by the update itself; a sampled_params context
    entered before step() (here a prediction with its own generator, which draws into the
    noise buffers) must form it first, from the sample's ε."""
    x, y = _data()
    states = []
    for predict in (False, True):
        model = _mlp()
        opt = IVON(model.parameters(), lr=0.1, ess=50.0, hess_init=0.5, beta2=0.9, seed=5)
        for _ in range(3):
            with opt.sampled_params(train=True):
                nn.functional.cross_entropy(model(x), y).backward()
            if predict:
                opt.sampled_predict(
                    model, x, n_samples=2, generator=torch.Generator().manual_seed(9)
                )
            opt.step()
        states.append(
            [(p.detach().clone(), opt.state[p]["hess"].clone()) for p in model.parameters()]
        )
    for (mu_a, h_a), (mu_b, h_b) in zip(*states, strict=True):
        assert torch.equal(mu_a, mu_b) and torch.equal(h_a, h_b)
