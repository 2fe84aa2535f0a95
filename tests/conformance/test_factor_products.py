"""J V and Jᵀ U from held per-layer factors equal autograd's JVPs and VJPs.

On the conformance models (PyTorch's and Hugging Face's modules included), fed by a
torch DataLoader, for every row kind and for a subset of the parameters; a model the
factors do not describe keeps the autograd products, with a warning.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from tacitbayes.curvature.data_jacobian import OUTPUTS, DataJacobian

from .loaders import LOADERS
from .models import MODELS, case

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(model: nn.Module, loader, **kwargs) -> tuple[DataJacobian, DataJacobian]:
    plain = DataJacobian(model, loader, **kwargs)
    held = DataJacobian(model, loader, **kwargs)
    assert held.hold_factors(2**30)
    return plain, held


def _agree(plain: DataJacobian, held: DataJacobian) -> None:
    gen = torch.Generator().manual_seed(1)
    V = torch.randn(plain.shape[1], 3, generator=gen, dtype=plain.dtype)
    U = torch.randn(plain.shape[0], 3, generator=gen, dtype=plain.dtype)
    jv, jtu = plain.local_matmat(V), plain.local_rmatmat(U)
    torch.testing.assert_close(
        held.local_matmat(V), jv, rtol=1e-9, atol=1e-9 * float(jv.abs().max())
    )
    torch.testing.assert_close(
        held.local_rmatmat(U), jtu, rtol=1e-9, atol=1e-9 * float(jtu.abs().max())
    )
    # the operator's own products (J @ V, J.T @ U) go through the same path
    torch.testing.assert_close(held @ V, plain @ V, rtol=1e-9, atol=1e-9 * float(jv.abs().max()))


@pytest.mark.parametrize("name", MODELS)
def test_factor_products_equal_autograd_on_every_model(name: str) -> None:
    c = case(name)
    loader = LOADERS["dataloader"].make(c)
    for outputs in OUTPUTS:
        loss = c.loss if outputs != "logits" else "cross_entropy"
        _agree(*_pair(c.fresh_model(), loader, outputs=outputs, loss=loss))


def test_factor_products_on_a_parameter_subset() -> None:
    c = case("cnn-bn-residual")
    model = c.fresh_model()
    names = [n for n, _ in model.named_parameters()]
    subset = [names[0], names[-1], names[len(names) // 2]]
    loader = LOADERS["dataloader-shuffle"].make(c)
    _agree(*_pair(model, loader, outputs="ggn", param_names=subset))


def test_factors_over_the_memory_budget_are_memory_mapped_and_removed() -> None:
    import gc
    import os

    c = case("cnn-bn-residual")
    loader = LOADERS["dataloader"].make(c)
    plain = DataJacobian(c.fresh_model(), loader, outputs="ggn")
    jac = DataJacobian(c.fresh_model(), loader, outputs="ggn")
    assert jac.hold_factors(0, disk_bytes=2**30)
    store = jac.factors.store
    assert store is not None and store.nbytes == jac.factors.nbytes() > 0
    assert len(os.listdir(store.path)) == store.count > 0
    _agree(plain, jac)
    path = store.path
    del jac, store
    gc.collect()
    assert not os.path.exists(path)  # the files go with the factors
    assert not DataJacobian(c.fresh_model(), loader).hold_factors(0, disk_bytes=100)


def test_held_factors_stay_within_the_budget() -> None:
    c = case("mlp")
    jac = DataJacobian(c.fresh_model(), LOADERS["dataloader"].make(c))
    need = jac.factor_bytes()
    assert need > 0
    assert not jac.hold_factors(need - 1)
    assert jac.factors is None
    assert jac.hold_factors(need)
    assert jac.factors.nbytes() <= need


class _TiedOutsideTheLayer(nn.Module):
    """A Linear whose weight is also used outside its own call: the factors miss that use."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.fc(x))
        return self.head(h @ self.fc.weight)


def test_a_model_the_factors_do_not_describe_keeps_autograd() -> None:
    torch.manual_seed(0)
    model = _TiedOutsideTheLayer().double()
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,))
    plain = DataJacobian(model, [(x, y)])
    jac = DataJacobian(model, [(x, y)])
    with pytest.warns(RuntimeWarning, match="do not reproduce"):
        assert not jac.hold_factors(2**30)
    assert jac.factors is None
    V = torch.randn(jac.shape[1], 2, dtype=torch.float64)
    torch.testing.assert_close(jac.local_matmat(V), plain.local_matmat(V))


@pytest.mark.parametrize("solver", ["krylov", "nystrom"])
def test_projected_posterior_on_factor_products_equals_the_dense_projector(solver: str) -> None:
    import tacitbayes as tb

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=gen)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 10)).double()
    with torch.no_grad():
        model[2].weight.mul_(0.3)
    data = [(x[:5], y[:5]), (x[5:], y[5:])]
    dense = DataJacobian(model, data, outputs="ggn") @ torch.eye(190, dtype=torch.float64)
    projector = torch.eye(190, dtype=torch.float64) - torch.linalg.pinv(dense) @ dense
    post = tb.ProjectedPosterior(
        model, rows="ggn", solver=solver, tol=1e-9, max_iters=800, products="factors"
    ).fit(data)
    assert post._jac.factors is not None
    eps = torch.randn(190, 3, generator=gen, dtype=torch.float64)
    got, _ = post.project(eps)
    torch.testing.assert_close(got, projector @ eps, rtol=1e-6, atol=1e-6)


def test_projected_posterior_products_option_is_checked() -> None:
    import tacitbayes as tb
    from tacitbayes.errors import InputError

    c = case("mlp")
    with pytest.raises(InputError, match="products must be one of"):
        tb.ProjectedPosterior(c.fresh_model(), products="fast")
    post = tb.ProjectedPosterior(
        c.fresh_model(), products="factors", memory_budget=1000, disk_budget=0
    )
    with pytest.raises(InputError, match="over memory_budget"):
        post.fit(LOADERS["dataloader"].make(c))
    loader = LOADERS["dataloader"].make(c)
    auto = tb.ProjectedPosterior(c.fresh_model(), memory_budget=1000, disk_budget=0).fit(loader)
    assert auto._jac.factors is None  # over both budgets: autograd, as "auto" allows
    mapped = tb.ProjectedPosterior(c.fresh_model(), memory_budget=1000).fit(loader)
    assert mapped._jac.factors is not None and mapped._jac.factors.store is not None
