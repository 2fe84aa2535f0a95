"""The laplace-torch-style calls give exactly the native calls' results; bad combinations fail."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

from tacitbayes.errors import InputError
from tacitbayes.posteriors.glm import glm_predictive, laplace_bridge, probit
from tacitbayes.posteriors.laplace import Laplace
from tacitbayes.posteriors.laplace_tuning import predictive_nll
from tacitbayes.posteriors.projected import ProjectedPosterior

pytestmark = pytest.mark.usefixtures("one_thread")

MAPPING = [("all", "diag", "diag"), ("all", "kron", "kron"), ("last_layer", "full", "last_layer")]


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, list[tuple[Tensor, Tensor]], Tensor, Tensor]:
    """An MLP 64→32→10 trained for 150 full-batch Adam steps on 600 digits (about a second)."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    x_train, y_train = x[:600], y[:600]
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_train), y_train).backward()
        opt.step()
    loader = [(x_train[i : i + 200], y_train[i : i + 200]) for i in range(0, 600, 200)]
    return model, loader, x[600:700], y[600:700]


@pytest.mark.parametrize("subset, hessian, native", MAPPING)
def test_laplace_torch_calls_equal_the_native_calls(digits, subset, hessian, native) -> None:
    model, loader, x, y = digits
    la = Laplace(model, "classification", subset_of_weights=subset, hessian_structure=hessian)
    assert la.structure == native
    la.fit(loader)
    la.optimize_prior_precision(method="marglik")
    probs = la(x, pred_type="glm", link_approx="probit")

    ref = Laplace(model, "classification", structure=native)
    ref.fit(loader)
    ref.optimize_prior_precision("marglik")
    assert torch.equal(la.prior_precision, ref.prior_precision)
    mean, cov = ref.glm_predictive(x)
    torch.testing.assert_close(probs, probit(mean, cov), rtol=0, atol=0)
    delta = ref._deltas(None)  # the generic route: Σ applied to per-example Jacobian rows
    generic = glm_predictive(
        model, x, lambda V: ref.curvature.covariance_apply(V, delta), ref.param_names
    )
    torch.testing.assert_close(generic[1], cov, rtol=1e-3, atol=1e-5)  # float32 rounding
    torch.testing.assert_close(la(x, link_approx="bridge"), laplace_bridge(mean, cov))
    assert probs.shape == (100, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(100))
    assert float((probs.argmax(-1) == y).float().mean()) > 0.85
    # Monte Carlo: the native predict, linearised ("glm") or not ("nn"), same seeded samples
    torch.testing.assert_close(la(x, link_approx="mc", n_samples=8), ref.predict(x, 8))
    nn_probs = la(x, pred_type="nn", link_approx="mc", n_samples=8)
    torch.testing.assert_close(nn_probs, ref.predict(x, 8, linearized=False))


def test_structure_keywords_that_do_not_map_fail(digits) -> None:
    model = digits[0]
    for subset, hessian in [("last_layer", "kron"), ("all", "full"), ("last_layer", "diag")]:
        with pytest.raises(InputError, match="structure='kron'"):  # the message lists the map
            Laplace(model, subset_of_weights=subset, hessian_structure=hessian)
    with pytest.raises(InputError, match="laplace-torch's default"):
        Laplace(model, hessian_structure="diag")  # subset_of_weights defaults to last_layer
    with pytest.raises(InputError, match="contradicts"):
        Laplace(model, structure="diag", subset_of_weights="all", hessian_structure="kron")
    with pytest.raises(InputError, match="not supported"):
        Laplace(model, subset_of_weights="subnetwork", hessian_structure="full")
    assert Laplace(model, subset_of_weights="all").structure == "kron"
    assert Laplace(model, hessian_structure="full").structure == "last_layer"
    assert Laplace(model, structure="kron", subset_of_weights="all").structure == "kron"
    assert Laplace(model).structure == "kron"  # the native default is unchanged
    assert Laplace(model, "classification", "diag").structure == "diag"


def test_prediction_combinations_that_do_not_exist_fail(digits) -> None:
    model, loader, x, _ = digits
    la = Laplace(model, structure="diag").fit(loader)
    for pred_type, link in [("nn", "probit"), ("nn", "bridge"), ("glm", "bridge_norm")]:
        with pytest.raises(InputError, match="valid \\(pred_type, link_approx\\)"):
            la(x, pred_type=pred_type, link_approx=link)
    with pytest.raises(InputError, match="pred_type must be one of"):
        la(x, pred_type="linear")
    torch.manual_seed(1)
    reg = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    xr = torch.randn(30, 3)
    lr = Laplace(reg, "regression", structure="kron", sigma_noise=0.3).fit([(xr, reg(xr).detach())])
    with pytest.raises(InputError, match="likelihood='regression'"):
        lr(xr, link_approx="bridge")
    mean, var = lr(xr)  # closed form, the shapes of predict
    ref_mean, ref_var = lr.predict(xr)
    assert mean.shape == ref_mean.shape and var.shape == ref_var.shape
    _, cov = lr.glm_predictive(xr)
    torch.testing.assert_close(var, cov.diagonal(dim1=1, dim2=2) + 0.09)
    torch.testing.assert_close((ref_mean, ref_var), (mean, var))  # predict: exact by default
    mc = lr.predict(xr, 4, exact=False)  # Monte Carlo, as la(x, link_approx="mc")
    torch.testing.assert_close(lr(xr, link_approx="mc", n_samples=4), mc)


@pytest.mark.filterwarnings("ignore:Laplace prior precision:RuntimeWarning")
def test_optimize_prior_precision_honours_the_predictive(digits) -> None:
    model, loader, x, y = digits
    val = [(x, y)]
    la = Laplace(model, subset_of_weights="last_layer", hessian_structure="full").fit(loader)
    with pytest.raises(InputError, match="does not predict"):
        la.optimize_prior_precision(method="marglik", pred_type="glm")
    with pytest.raises(InputError, match="contradicts"):
        la.optimize_prior_precision("validation", val, pred_type="glm", linearized=False)
    with pytest.raises(InputError, match="valid"):
        la.optimize_prior_precision("validation", val, pred_type="nn", link_approx="probit")
    grid = [0.1, 1.0, 10.0, 100.0, 1000.0]
    chosen = la.optimize_prior_precision(
        method="validation", val_loader=val, grid=grid, pred_type="glm", link_approx="probit"
    )
    nll = []
    for delta in grid:  # the closed-form probit NLL by hand
        la.prior_precision = delta
        probs = la(x, link_approx="probit")
        nll.append(-float(probs.gather(1, y[:, None]).log().mean()))
    assert la.tuning["nll"] == pytest.approx(nll, rel=1e-6)
    assert float(chosen) == grid[min(range(len(grid)), key=nll.__getitem__)]
    # the default validation predictive is still Monte Carlo
    mc = predictive_nll(la, val, n_samples=8, prior_precision=1.0)
    assert math.isfinite(mc) and mc != pytest.approx(nll[1], rel=1e-9)


def test_projected_posterior_call(digits) -> None:
    model, loader, x, y = digits
    small = [(xb[:40], yb[:40]) for xb, yb in loader]  # 120 examples: the gram solver
    post = ProjectedPosterior(model, "classification", prior_precision=5.0).fit(small)
    assert post.solver_used == "gram"
    cov = post.linearized_covariance(x[:20])
    chunked = post.linearized_covariance(x[:20], max_bytes=1)  # one input at a time
    torch.testing.assert_close(chunked, cov, rtol=1e-5, atol=1e-6 * float(cov.abs().max()))
    mean = model(x[:20]).detach()
    probs = post(x[:20])
    torch.testing.assert_close(probs, probit(mean, cov.to(mean.dtype)))
    torch.testing.assert_close(
        post(x[:20], link_approx="bridge"), laplace_bridge(mean, cov.float())
    )
    torch.testing.assert_close(post(x[:20], link_approx="mc", n_samples=4), post.predict(x[:20], 4))
    with pytest.raises(InputError, match="valid"):
        post(x[:20], pred_type="nn", link_approx="probit")
    krylov = ProjectedPosterior(model, solver="krylov", max_iters=5).fit(small)
    with pytest.raises(InputError, match="link_approx='mc'"):
        krylov(x[:20])


def test_projected_posterior_regression_is_closed_form() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).to(torch.float64)
    x = torch.randn(20, 3, dtype=torch.float64)
    y = model(x).detach() + 0.1 * torch.randn(20, 2, dtype=torch.float64)
    post = ProjectedPosterior(model, "regression", sigma_noise=0.2, prior_precision=3.0)
    post.fit([(x, y)])
    x_test = torch.randn(6, 3, dtype=torch.float64)
    mean, var = post(x_test)
    cov = post.linearized_covariance(x_test)
    torch.testing.assert_close(mean, model(x_test).detach())
    torch.testing.assert_close(var, cov.diagonal(dim1=1, dim2=2) + 0.04)
    with pytest.raises(InputError, match="likelihood='regression'"):
        post(x_test, link_approx="bridge")


def test_binary_probit_is_bernoulli() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    x = torch.randn(40, 3)
    la = Laplace(model, "binary", subset_of_weights="all", hessian_structure="kron")
    la.fit([(x, (x[:, 0] > 0).float())])
    mean, cov = la.glm_predictive(x[:5])
    probs = la(x[:5])
    assert probs.shape == (5, 2)
    p = torch.sigmoid(mean / torch.sqrt(1 + math.pi / 8 * cov[:, :, 0]))
    torch.testing.assert_close(probs, torch.cat([1 - p, p], -1))
    assert la(x[:5], link_approx="mc", n_samples=4).shape == (5, 2)
    with pytest.raises(InputError, match="likelihood='binary'"):
        la(x[:5], link_approx="bridge")
