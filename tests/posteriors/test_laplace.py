"""Laplace diag / kron / last_layer against dense computations on small float64 networks."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from tacitbayes.curvature import GGN, KFAC, Jacobian
from tacitbayes.errors import InputError
from tacitbayes.functional import flatten, last_layer_names, model_params, unflatten
from tacitbayes.posteriors import laplace_tuning
from tacitbayes.posteriors.laplace import Laplace
from tacitbayes.posteriors.laplace_curvature import module_groups

DT = torch.float64
STRUCTURES = ["diag", "kron", "last_layer"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_problem(kind: str) -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    """An MLP 5→6→3 or a tiny CNN (6×6 inputs), 12 examples in two batches."""
    torch.manual_seed(0)
    if kind == "mlp":
        model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
        x = torch.randn(12, 5, dtype=DT)
    else:
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
        x = torch.randn(12, 1, 6, 6, dtype=DT)
    model = model.to(DT)
    y = torch.randint(0, 3, (12,))
    return model, [(x[:7], y[:7]), (x[7:], y[7:])]


def dense_reference(
    model: nn.Module, data: list, structure: str, delta_groups: Tensor, scale: float = 1.0
) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """(P×P curvature sH, per-parameter δ, θ*, covered names) built densely."""
    if structure == "last_layer":
        names = last_layer_names(model)
        H = GGN(model, "cross_entropy", data, names, reduction="sum").to_dense()
        delta = delta_groups.expand(H.shape[0])
    else:
        names = [n for n, _ in model.named_parameters()]
        G = GGN(model, "cross_entropy", data, reduction="sum").to_dense()
        if structure == "diag":
            H = torch.diag(G.diagonal())
        else:
            H = KFAC(model, "cross_entropy", data, reduction="sum").to_dense()
        owners = [n.rsplit(".", 1)[0] for n in names]  # groups: owning modules, in order
        order = list(dict.fromkeys(owners))
        live = dict(model.named_parameters())
        index = torch.cat(
            [
                torch.full((live[n].numel(),), order.index(o))
                for n, o in zip(names, owners, strict=True)
            ]
        )
        assert module_groups(model, names)[0] == order
        delta = delta_groups.expand(len(order))[index]
    theta = flatten(model_params(model, names))
    return scale * H, delta, theta, names


def dense_lml(model: nn.Module, data: list, H: Tensor, delta: Tensor, theta: Tensor) -> Tensor:
    """−L(θ*) − ½Σδθ² + ½Σ log δ − ½ log det(H + diag δ)."""
    loss = sum(nn.functional.cross_entropy(model(x), y, reduction="sum") for x, y in data)
    _, logdet = torch.linalg.slogdet(H + torch.diag(delta))
    return -loss - 0.5 * (delta * theta**2).sum() + 0.5 * delta.log().sum() - 0.5 * logdet


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_log_marginal_likelihood_matches_dense(kind: str, structure: str) -> None:
    model, data = make_problem(kind)
    la = Laplace(model, "classification", structure).fit(data)
    priors = [torch.tensor(0.7, dtype=DT)]
    if structure != "last_layer":
        priors.append(torch.tensor([0.3, 2.5], dtype=DT))  # one per layer
    for delta_groups in priors:
        H, delta, theta, _ = dense_reference(model, data, structure, delta_groups)
        expected = dense_lml(model, data, H, delta, theta)
        got = la.log_marginal_likelihood(delta_groups)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_sampling_covariance_and_variance_match_dense(structure: str) -> None:
    model, data = make_problem("cnn")
    delta_groups = torch.tensor(0.5 if structure == "last_layer" else [0.5, 1.7], dtype=DT)
    la = Laplace(model, "classification", structure, prior_precision=delta_groups).fit(data)
    H, delta, _, _ = dense_reference(model, data, structure, delta_groups)
    cov = torch.linalg.inv(H + torch.diag(delta))
    eye = torch.eye(la.n_params, dtype=DT)
    groups = delta_groups.expand(len(la.groups))
    T = la.curvature.sample_transform(eye, groups)  # the exact sampling map
    torch.testing.assert_close(T @ T.T, cov, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(la.posterior_variance(), cov.diagonal(), rtol=1e-8, atol=1e-12)
    samples = la.sample(20000, torch.Generator().manual_seed(1))
    assert samples.shape == (20000, la.n_params)
    mc = torch.cov((samples - la.mean).T)
    # Gaussian samples: E‖Ŝ − Σ‖²_F ≈ (‖Σ‖²_F + (tr Σ)²) / n
    expected = ((cov.norm() ** 2 + cov.trace() ** 2) / 20000).sqrt()
    assert float((mc - cov).norm()) < 1.5 * float(expected)


@pytest.mark.parametrize("linearized", [True, False])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_predictive_matches_dense_jacobian(structure: str, linearized: bool) -> None:
    model, data = make_problem("mlp")
    la = Laplace(model, "classification", structure, prior_precision=0.8).fit(data)
    xq = torch.randn(4, 5, dtype=DT)
    deltas = la.sample_deltas(6, torch.Generator().manual_seed(3))
    f0 = model(xq).detach()
    if linearized:
        J = Jacobian(model, xq, la.param_names).to_dense()  # (N·O, P)
        logits = f0 + (J @ deltas.T).T.reshape(6, 4, 3)
    else:
        params = model_params(model, la.param_names)
        logits = torch.stack(
            [
                functional_call(
                    model, {k: params[k] + v for k, v in unflatten(d, params).items()}, (xq,)
                )
                for d in deltas
            ]
        ).detach()
    expected = torch.softmax(logits, -1).mean(0)
    gen = torch.Generator().manual_seed(3)
    got = la.predict(xq, n_samples=6, linearized=linearized, generator=gen)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert got.shape == (4, 3)
    # the default generator (seeded with `seed`) gives the same samples on every call
    torch.testing.assert_close(la.predict(xq), la.predict(xq), rtol=0, atol=0)


def test_subset_scaling_matches_scaled_dense() -> None:
    model, data = make_problem("mlp")
    la = Laplace(model, "classification", "diag").fit(data[:1], n_data=2 * 7)
    H, delta, theta, _ = dense_reference(model, data[:1], "diag", torch.tensor(1.0, dtype=DT))
    x, y = data[0]
    loss = 2 * nn.functional.cross_entropy(model(x), y, reduction="sum")
    _, logdet = torch.linalg.slogdet(2 * H + torch.diag(delta))
    expected = -loss - 0.5 * (delta * theta**2).sum() - 0.5 * logdet
    torch.testing.assert_close(la.log_marginal_likelihood(), expected, rtol=1e-10, atol=1e-10)
    assert la.n_data == 14


def test_regression_likelihood_constants() -> None:
    model, data = make_problem("mlp")
    data = [(x, torch.randn(len(x), 3, dtype=DT)) for x, _ in data]
    sigma = 0.6
    la = Laplace(model, "regression", "last_layer", 1.3, sigma_noise=sigma).fit(data)
    names = last_layer_names(model)
    H = GGN(model, "mse", data, names, reduction="sum").to_dense() / sigma**2
    theta = flatten(model_params(model, names))
    resid = sum(((model(x) - y) ** 2).sum() for x, y in data)
    loglik = -0.5 * resid / sigma**2 - 0.5 * 12 * 3 * math.log(2 * math.pi * sigma**2)
    P = H.shape[0]
    _, logdet = torch.linalg.slogdet(H + 1.3 * torch.eye(P, dtype=DT))
    expected = loglik - 0.65 * (theta**2).sum() + 0.5 * P * math.log(1.3) - 0.5 * logdet
    torch.testing.assert_close(la.log_marginal_likelihood(), expected, rtol=1e-10, atol=1e-9)
    mean, var = la.predict(data[0][0], n_samples=5)
    assert mean.shape == var.shape == (7, 3) and bool((var > sigma**2).all())


@pytest.mark.parametrize("structure", ["diag", "kron"])
def test_layerwise_marglik_reaches_a_stationary_point(structure: str) -> None:
    model, data = make_problem("mlp")
    la = Laplace(model, "classification", structure).fit(data)
    scalar = la.optimize_prior_precision()
    lml_scalar = la.log_marginal_likelihood()
    layerwise = la.optimize_prior_precision(prior_structure="layerwise", n_steps=300, lr=0.05)
    assert scalar.ndim == 0 and layerwise.shape == (2,)
    assert la.log_marginal_likelihood() >= lml_scalar
    log_delta = layerwise.log().requires_grad_(True)
    la.log_marginal_likelihood(log_delta.exp()).backward()
    assert float(log_delta.grad.abs().max()) < 1e-3


@pytest.mark.parametrize("structure", STRUCTURES)
def test_state_dict_round_trip(structure: str) -> None:
    model, data = make_problem("cnn")
    la = Laplace(model, "classification", structure, prior_precision=0.9).fit(data)
    la.optimize_prior_precision()
    buffer = io.BytesIO()
    torch.save(la.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    la2 = Laplace(model, "classification", structure).load_state_dict(state)
    x = data[0][0]
    assert torch.equal(la2.prior_precision, la.prior_precision)
    assert torch.equal(la2.log_marginal_likelihood(), la.log_marginal_likelihood())
    assert torch.equal(la2.predict(x), la.predict(x))
    assert torch.equal(la2.posterior_variance(), la.posterior_variance())
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(la2.sample(3, gen()), la.sample(3, gen()))


def test_validation_tuning_picks_the_grid_minimum() -> None:
    model, data = make_problem("mlp")
    la = Laplace(model, "classification", "kron").fit(data)
    grid = [0.1, 1.0, 10.0]
    chosen = la.optimize_prior_precision("validation", val_loader=data, grid=grid, n_samples=4)
    nll = la.tuning["nll"]
    assert la.tuning["grid"] == grid and float(chosen) == grid[nll.index(min(nll))]


@pytest.mark.parametrize("optimum", [1e5, 1e-5, 1e12])
def test_default_validation_grid_extends_past_an_edge(
    optimum: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = make_problem("mlp")
    la = Laplace(model, "classification", "diag").fit(data)
    fake = lambda la, loader, n, lin, v: abs(math.log10(v / optimum))  # noqa: E731
    monkeypatch.setattr(laplace_tuning, "predictive_nll", fake)
    chosen = float(la.optimize_prior_precision("validation", val_loader=data))
    grid = la.tuning["grid"]
    if optimum == 1e12:  # beyond the extension limit: stop after MAX_EXTENSION steps
        assert len(grid) == 13 + laplace_tuning.MAX_EXTENSION
        assert chosen == pytest.approx(1e3 * 10**4)
    else:
        assert chosen == pytest.approx(optimum)
        assert len(grid) == 13 + 4 + 1  # four improving steps, one that stops the search


def test_bad_inputs_raise_input_error() -> None:
    model, data = make_problem("mlp")
    with pytest.raises(InputError, match="unknown structure"):
        Laplace(model, "classification", "full")
    with pytest.raises(InputError, match="unknown likelihood"):
        Laplace(model, "poisson")
    with pytest.raises(InputError, match="sigma_noise"):
        Laplace(model, "classification", sigma_noise=0.5)
    with pytest.raises(InputError, match="prior_precision"):
        Laplace(model, prior_precision=-1.0)
    with pytest.raises(InputError, match="shape"):
        Laplace(model, "classification", "diag", prior_precision=torch.ones(3))
    la = Laplace(model, "classification", "kron")
    for call in (
        lambda: la.predict(data[0][0]),
        lambda: la.log_marginal_likelihood(),
        lambda: la.sample(2),
        lambda: la.state_dict(),
    ):
        with pytest.raises(InputError, match="fit"):
            call()
    with pytest.raises(InputError, match="one-shot"):
        la.fit(iter(data))
    la.fit(data)
    with pytest.raises(InputError, match="unknown method"):
        la.optimize_prior_precision("grid")
    with pytest.raises(InputError, match="val_loader"):
        la.optimize_prior_precision("validation")
    with pytest.raises(InputError, match="prior_structure"):
        la.optimize_prior_precision(prior_structure="full")
    with pytest.raises(InputError, match="n_samples"):
        la.predict(data[0][0], n_samples=0)
    with pytest.raises(InputError, match="structure"):
        Laplace(model, "classification", "diag").load_state_dict(la.state_dict())
    with torch.no_grad():
        model[0].weight.add_(0.1)
    with pytest.raises(InputError, match="changed since fit"):
        la.predict(data[0][0])
    big = nn.Sequential(nn.Linear(3, 200), nn.Linear(200, 101)).to(DT)
    with pytest.raises(InputError, match="dense curvature"):
        Laplace(big, "classification", "last_layer").fit(
            [(torch.randn(2, 3, dtype=DT), torch.tensor([0, 1]))]
        )
