"""The projected posterior against dense projectors and the linear-Gaussian evidence."""

from __future__ import annotations

import math
import weakref

import pytest
import torch
from scipy.optimize import minimize_scalar
from torch import nn

from tacitbayes.errors import InputError
from tacitbayes.posteriors.projected import ProjectedPosterior

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(n: int = 10) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
    x = torch.randn(n, 4, dtype=DT)
    y = torch.randint(0, 3, (n,))
    return model, x, y


def _flat_fn(model: nn.Module, x: torch.Tensor):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def fn(theta: torch.Tensor) -> torch.Tensor:
        params = {
            n: t.reshape(s) for n, t, s in zip(names, theta.split(sizes), shapes, strict=True)
        }
        return torch.func.functional_call(model, params, (x,))

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return fn, theta


def _dense_projector(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    fn, theta = _flat_fn(model, x)
    jac = torch.autograd.functional.jacobian(lambda t: fn(t).reshape(-1), theta)
    return torch.eye(theta.numel(), dtype=DT) - torch.linalg.pinv(jac) @ jac


def _loader(
    x: torch.Tensor, y: torch.Tensor, size: int = 4
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _dense_loss_projector(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    fn, theta = _flat_fn(model, x)
    grads = torch.autograd.functional.jacobian(
        lambda t: nn.functional.cross_entropy(fn(t), y, reduction="none"), theta
    )
    return torch.eye(theta.numel(), dtype=DT) - torch.linalg.pinv(grads) @ grads


@pytest.mark.parametrize(
    "solver, options",
    [
        ("gram", {"tol": 1e-12}),
        ("gram_float32", {"tol": 1e-12}),
        ("nystrom", {"tol": 1e-12, "nystrom_rank": 9}),
        ("block", {"tol": 1e-12}),
        ("krylov", {"tol": 1e-12, "max_iters": 500}),
        ("alternating", {"tol": 1e-12, "n_sweeps": 200}),
    ],
)
@pytest.mark.parametrize("loss_projected", [False, True])
def test_samples_match_the_dense_projector(
    solver: str, options: dict, loss_projected: bool
) -> None:
    # Inputs in 30 dimensions keep the row spaces of the two batches far from parallel, so
    # alternating projections converge in a few sweeps (they crawl when the batches' row
    # spaces nearly align: the rate is the squared cosine of their smallest principal angle).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 40), nn.Tanh(), nn.Linear(40, 3)).to(DT)
    x, y = torch.randn(10, 30, dtype=DT), torch.randint(0, 3, (10,))
    post = ProjectedPosterior(
        model, solver=solver, loss_projected=loss_projected, projection_batch_size=5, **options
    ).fit(_loader(x, y))
    dense = _dense_loss_projector(model, x, y) if loss_projected else _dense_projector(model, x)
    projected = post.projected_noise(6)
    expected = dense @ post._eps[:, :6]
    assert post.solver_used == solver and post.n_fit == 10
    assert float((projected - expected).norm() / expected.norm()) < 1e-6
    assert post.null_space_residual() < 1e-6
    assert post.infos[0].max_residual < 1e-6 and post.infos[0].data_passes > 0


def test_auto_solver_follows_the_memory_budget() -> None:
    model, x, y = _problem()
    rows = 10 * 3
    assert ProjectedPosterior(model).fit(_loader(x, y)).solver_used == "gram"
    small = ProjectedPosterior(model, memory_budget=2 * 8 * rows * rows - 1).fit(_loader(x, y))
    assert small.solver_used == "gram_float32"  # 4·rows² bytes and the float32 factors fit
    smaller = ProjectedPosterior(model, memory_budget=4 * rows * rows).fit(_loader(x, y))
    assert smaller.solver_used == "block"
    with pytest.raises(InputError, match="memory_budget"):
        ProjectedPosterior(model, solver="gram_float32", memory_budget=1000).fit(_loader(x, y))
    with pytest.raises(InputError, match="memory_budget"):
        ProjectedPosterior(model, solver="gram", memory_budget=1000).fit(_loader(x, y))


@pytest.mark.parametrize("loss_projected", [False, True])
def test_sample_free_covariance_equals_the_dense_formula(loss_projected: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 40), nn.Tanh(), nn.Linear(40, 3)).to(DT)
    x, y = torch.randn(10, 30, dtype=DT), torch.randint(0, 3, (10,))
    post = ProjectedPosterior(model, loss_projected=loss_projected, prior_precision=2.0)
    post.fit(_loader(x, y))
    x_test = torch.randn(5, 30, dtype=DT)
    dense = _dense_loss_projector(model, x, y) if loss_projected else _dense_projector(model, x)
    fn, theta = _flat_fn(model, x_test)
    jac = torch.autograd.functional.jacobian(lambda t: fn(t).reshape(-1), theta).reshape(5, 3, -1)
    expected = torch.einsum("nip,pq,njq->nij", jac, dense, jac) / 2.0
    covariance = post.linearized_covariance(x_test)
    torch.testing.assert_close(
        covariance, expected, rtol=1e-8, atol=1e-8 * float(expected.abs().max())
    )
    # the Monte Carlo variance of the linearised logits agrees within 4 standard errors
    n_samples = 400
    outputs = post.sample_outputs(x_test, n_samples=n_samples)
    centred = outputs - model(x_test).detach()
    sampled = centred.pow(2).mean(0)  # the mean is known: f(θ*, x)
    standard_error = centred.pow(2).std(0) / math.sqrt(n_samples)
    exact = torch.diagonal(expected, dim1=1, dim2=2)
    assert bool(((sampled - exact).abs() <= 4 * standard_error + 1e-12).all())


class CountingLoader:
    """A re-iterable loader that counts how many of its batches are alive at once."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, size: int) -> None:
        self.x, self.y, self.size = x, y, size
        self.alive = 0
        self.most_alive = 0
        self.passes = 0

    def _track(self, tensor: torch.Tensor) -> torch.Tensor:
        self.alive += 1
        self.most_alive = max(self.most_alive, self.alive)

        def release(_: object) -> None:
            self.alive -= 1

        weakref.finalize(tensor, release, None)
        return tensor

    def __iter__(self):
        self.passes += 1
        for i in range(0, len(self.x), self.size):
            yield self._track(self.x[i : i + self.size].clone()), self.y[i : i + self.size]


@pytest.mark.parametrize("solver", ["gram", "nystrom", "block", "krylov"])
def test_streaming_fit_equals_in_memory_fit_and_holds_few_batches(solver: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 40), nn.Tanh(), nn.Linear(40, 3)).to(DT)
    x, y = torch.randn(24, 30, dtype=DT), torch.randint(0, 3, (24,))
    options = {"solver": solver, "tol": 1e-10, "nystrom_rank": 12, "max_iters": 500}
    loader = CountingLoader(x, y, 4)
    streamed = ProjectedPosterior(model, **options).fit(loader)
    streamed.projected_noise(5)
    assert loader.passes >= 2 and loader.most_alive <= 2
    in_memory = ProjectedPosterior(model, **options).fit([(x, y)])
    torch.testing.assert_close(streamed.projected_noise(5), in_memory.projected_noise(5))
    alpha = streamed.optimize_prior_precision("validation", val_loader=CountingLoader(x, y, 6))
    expected = in_memory.optimize_prior_precision("validation", val_loader=[(x, y)])
    assert alpha == pytest.approx(expected, rel=1e-9)


def test_an_unfinished_projection_warns() -> None:
    model, x, y = _problem()
    post = ProjectedPosterior(model, solver="krylov", max_iters=1).fit(_loader(x, y))
    with pytest.warns(RuntimeWarning, match="residual"):
        post.projected_noise(2)


def test_krylov_history_tracks_the_null_space_residual() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 40), nn.Tanh(), nn.Linear(40, 3)).to(DT)
    x, y = torch.randn(10, 30, dtype=DT), torch.randint(0, 3, (10,))
    post = ProjectedPosterior(model, solver="krylov", tol=1e-2, max_iters=500).fit(_loader(x, y))
    post.projected_noise(4)
    info = post.infos[0]
    assert len(info.history) == info.iterations and info.data_passes == info.iterations + 1
    assert info.history[0] > info.history[-1] and info.history[-1] <= 1e-2
    # the recurrence's last value is the residual measured afresh with the Jacobian
    assert info.history[-1] == pytest.approx(info.max_residual, rel=1e-6)


def test_linearised_samples_reproduce_the_training_predictions() -> None:
    model, x, y = _problem()
    post = ProjectedPosterior(model, tol=1e-12, max_iters=500, prior_precision=0.01).fit(
        _loader(x, y)
    )
    outputs = post.sample_outputs(x, n_samples=8)
    with torch.no_grad():
        f0 = model(x)
    assert float((outputs - f0).abs().max()) < 1e-8 * float(f0.abs().max()) * 100
    unprojected_shift = float((post._eps[:, 0] / 0.1).norm())  # the samples do move the weights
    assert float((post.sample(1)[0] - post._theta).norm()) > 0.1 * unprojected_shift
    test_x = torch.randn(5, 4, dtype=DT)
    with torch.no_grad():
        assert float((post.sample_outputs(test_x, 8) - model(test_x)).abs().max()) > 1e-3
    probs = post.predict(test_x, n_samples=8)
    assert probs.shape == (5, 3) and torch.allclose(probs.sum(1), torch.ones(5, dtype=DT))


def test_loss_projected_subspace_contains_the_null_space() -> None:
    model, x, y = _problem()
    post = ProjectedPosterior(model, loss_projected=True, tol=1e-12, max_iters=500).fit(
        _loader(x, y)
    )
    dense = _dense_projector(model, x)
    v = dense @ torch.randn(dense.shape[0], 3, dtype=DT, generator=torch.Generator().manual_seed(1))
    projected_v, _ = post.project(v)
    assert (
        float((projected_v - v).norm() / v.norm()) < 1e-8
    )  # null(J) ⊆ null(∇ℓ): 𝒫_L leaves it alone
    # and 𝒫_L ε lies in the null space of the per-example loss gradients
    fn, theta = _flat_fn(model, x)
    grads = torch.autograd.functional.jacobian(
        lambda t: nn.functional.cross_entropy(fn(t), y, reduction="none"), theta
    )
    samples = post.projected_noise(4)
    assert float((grads @ samples).norm() / (grads @ post._eps[:, :4]).norm()) < 1e-8
    assert post.trace_projector(4) > dense.trace()  # a strictly larger subspace


def test_state_dict_round_trip() -> None:
    model, x, y = _problem()
    post = ProjectedPosterior(model, tol=1e-10).fit(_loader(x, y))
    post.optimize_prior_precision()
    probs = post.predict(x, n_samples=5)
    fresh = ProjectedPosterior(model)
    fresh.load_state_dict(post.state_dict())
    assert fresh.prior_precision == post.prior_precision
    assert torch.equal(fresh.predict(x, n_samples=5), probs)
    other, _, _ = _problem()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(InputError, match="not the θ"):
        ProjectedPosterior(other).load_state_dict(post.state_dict())


def test_evidence_prior_precision_is_the_exact_evidence_maximiser() -> None:
    # Linear-Gaussian model y = Xθ + noise, n < d, prior N(0, α⁻¹I): the exact evidence is
    # log N(y; 0, σ²I + XXᵀ/α). With the range of J fully determined (σ → 0) it is maximised
    # at α = n/‖θ*‖² = rank(J)/‖θ*‖², θ* the minimum-norm interpolant: not at ‖θ*‖²/rank(J).
    torch.manual_seed(3)
    n, d, sigma = 12, 40, 1e-4
    X = torch.randn(n, d, dtype=DT)
    y = X @ (3.0 * torch.randn(d, dtype=DT)) + sigma * torch.randn(n, dtype=DT)
    model = nn.Linear(d, 1, bias=False).to(DT)
    with torch.no_grad():
        model.weight.copy_((torch.linalg.pinv(X) @ y)[None])
    post = ProjectedPosterior(model, "regression", tol=1e-12, max_iters=500).fit([(X, y[:, None])])
    ours = post.evidence_prior_precision(n_samples=200)
    assert abs(post.trace_projector(200) - (d - n)) < 3.0  # Hutchinson: tr𝒫 = d − n

    def neg_evidence(log_alpha: float) -> float:
        cov = sigma**2 * torch.eye(n, dtype=DT) + X @ X.T / math.exp(log_alpha)
        dist = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=DT), cov)
        return -float(dist.log_prob(y))

    best = math.exp(minimize_scalar(neg_evidence, bounds=(-15, 15), method="bounded").x)
    theta_sq = float(model.weight.detach().pow(2).sum())
    assert abs(ours / best - 1) < 0.15
    assert abs((theta_sq / n) / best - 1) > 0.5  # the reciprocal expression is far off


def test_validation_tuning_and_bad_inputs() -> None:
    model, x, y = _problem(16)
    post = ProjectedPosterior(model, tol=1e-8).fit(_loader(x[:10], y[:10]))
    alpha = post.optimize_prior_precision(
        "validation", val_loader=_loader(x[10:], y[10:]), n_samples=4
    )
    assert alpha > 0 and post.prior_precision == alpha
    with pytest.raises(InputError, match="unknown solver"):
        ProjectedPosterior(model, solver="magic")
    with pytest.raises(InputError, match="unknown likelihood"):
        ProjectedPosterior(model, "ranking")
    with pytest.raises(InputError, match="fit"):
        ProjectedPosterior(model).predict(x)
    with pytest.raises(InputError, match="positive"):
        ProjectedPosterior(model, prior_precision=-1.0)
    with pytest.raises(InputError, match="unknown method"):
        post.optimize_prior_precision("magic")
    with pytest.raises(InputError, match="val_loader"):
        post.optimize_prior_precision("validation")


@pytest.mark.parametrize("solver", ["gram", "nystrom"])
def test_kernel_factors_split_under_a_small_working_budget(
    solver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tacitbayes.budget

    model, x, y = _problem(10)
    proj = _dense_projector(model, x)
    monkeypatch.setattr(tacitbayes.budget, "WORKING_BYTES", 1)  # one example per piece
    post = ProjectedPosterior(model, solver=solver, tol=1e-9, nystrom_rank=12)
    post.fit(_loader(x, y))
    projected = post.projected_noise(3)
    eps = post._eps[:, :3]
    assert torch.allclose(projected, proj @ eps, atol=1e-6)
