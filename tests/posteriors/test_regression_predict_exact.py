"""Laplace.predict for regression: exact moments (f(θ*, x), diag JΣJᵀ + σ²) by default, Monte Carlo on request."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_diabetes
from torch import Tensor, nn

from tacitbayes.errors import InputError
from tacitbayes.posteriors import Laplace

pytestmark = pytest.mark.usefixtures("one_thread")

Split = tuple[Tensor, Tensor, Tensor, Tensor]


@pytest.fixture(scope="module")
def diabetes() -> tuple[nn.Module, Split]:
    """sklearn's diabetes data, standardised (train statistics), and a 10-32-1 MLP at its MAP."""
    data = load_diabetes()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.float32)[:, None]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:350], perm[350:]
    mx, sx = x[train].mean(0), x[train].std(0)
    my, sy = y[train].mean(), y[train].std()
    x, y = (x - mx) / sx, (y - my) / sy
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.mse_loss(model(x[train]), y[train]).backward()
        opt.step()
    return model, (x[train], y[train], x[test], y[test])


@pytest.mark.parametrize("structure", ["diag", "kron", "last_layer"])
def test_default_predict_is_the_exact_linearised_predictive(
    diabetes: tuple[nn.Module, Split], structure: str
) -> None:
    """predict(x) = (f(θ*, x), diag JΣJᵀ + σ²) to 1e-6; its test MSE is MAP's, Monte Carlo's is not."""
    model, (xtr, ytr, xte, yte) = diabetes
    la = Laplace(model, "regression", structure=structure).fit([(xtr, ytr)])
    with torch.no_grad():
        f_map = model(xte)
    mean, var = la.predict(xte)
    _, cov = la.glm_predictive(xte)
    glm_var = cov.diagonal(dim1=1, dim2=2) + la.sigma_noise**2
    assert mean.shape == var.shape == (len(xte), 1)
    torch.testing.assert_close(mean, f_map, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var, glm_var, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(la(xte, pred_type="glm"), (mean, var), rtol=1e-6, atol=1e-6)
    mse_map = float((f_map - yte).square().mean())
    assert float((mean - yte).square().mean()) == pytest.approx(mse_map, rel=1e-6)
    # exact=False: the Monte Carlo moments of 32 samples (the mean is not MAP's output)
    mc_mean, mc_var = la.predict(xte, exact=False)
    assert not torch.allclose(mc_mean, f_map, rtol=1e-6, atol=1e-6)
    assert bool((mc_var >= la.sigma_noise**2).all())
    # the weight-space predictive (linearized=False) stays Monte Carlo
    nn_mean, _ = la.predict(xte, linearized=False)
    assert not torch.allclose(nn_mean, f_map, rtol=1e-6, atol=1e-6)


def test_exact_must_be_a_bool_and_classification_ignores_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(20, 3), torch.randint(0, 3, (20,))
    la = Laplace(model, "classification", structure="diag").fit([(x, y)])
    torch.testing.assert_close(la.predict(x, exact=False), la.predict(x), rtol=0, atol=0)
    with pytest.raises(InputError, match="exact must be True or False"):
        la.predict(x, exact="yes")  # type: ignore[arg-type]
