"""Tests for the Jacobian, GGN and Hessian operators against dense autograd ground truth."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from tacitbayes.curvature import GGN, DenseOperator, Hessian, Jacobian, ggn_diagonal
from tacitbayes.curvature.losses import get_loss
from tacitbayes.errors import InputError
from tacitbayes.functional import last_layer_names

pytestmark = pytest.mark.usefixtures("one_thread")


DT = torch.float64
N = 6
MODELS = ["mlp_tanh", "mlp_relu", "cnn"]
LOSSES = ["cross_entropy", "mse"]


# --------------------------------------------------------------------------- fixtures


def make_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "mlp_tanh":
        model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    elif name == "mlp_relu":
        model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    else:
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(32, 3))
    return model.double()


def make_data(name: str, loss: str, n: int = N, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (n, 1, 6, 6) if name == "cnn" else (n, 5)
    x = torch.randn(shape, generator=gen, dtype=DT)
    if loss == "cross_entropy":
        y = torch.randint(0, 3, (n,), generator=gen)
    else:
        y = torch.randn(n, 3, generator=gen, dtype=DT)
    return x, y


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# --------------------------------------------------------------------------- ground truth


def _flat_fn(model: nn.Module, names: list[str] | None):
    names = names or [n for n, _ in model.named_parameters()]
    live = dict(model.named_parameters())
    shapes = [live[n].shape for n in names]
    sizes = [live[n].numel() for n in names]
    theta0 = torch.cat([live[n].detach().reshape(-1) for n in names])

    def call(theta: Tensor, x: Tensor) -> Tensor:
        free = {n: t.reshape(s) for n, t, s in zip(names, theta.split(sizes), shapes, strict=True)}
        rest = {k: v.detach() for k, v in live.items() if k not in free}
        return functional_call(model, {**rest, **free}, (x,))

    return theta0, call


def _ref_loss(f: Tensor, y: Tensor, loss: str) -> Tensor:
    """Per-example losses written independently of tacitbayes.curvature.losses."""
    if loss == "cross_entropy":
        return nn.functional.cross_entropy(f, y, reduction="none")
    return 0.5 * ((f - y) ** 2).sum(-1)


def ref_output_hessians(f: Tensor, y: Tensor, loss: str) -> Tensor:
    """Λ_n = ∂²ℓ_n/∂f² by autograd, one example at a time, shape (N, O, O)."""

    def one(fn: Tensor, yn: Tensor) -> Tensor:
        return torch.autograd.functional.hessian(
            lambda z: _ref_loss(z[None], yn[None], loss)[0], fn
        )

    return torch.stack([one(fn, yn) for fn, yn in zip(f, y, strict=True)])


def dense_jacobian(model: nn.Module, x: Tensor, names: list[str] | None = None) -> Tensor:
    theta0, call = _flat_fn(model, names)
    model.eval()
    return torch.autograd.functional.jacobian(lambda t: call(t, x).reshape(-1), theta0)


def dense_ggn(model, x, y, loss, names=None, reduction="mean") -> Tensor:
    jac = dense_jacobian(model, x, names).reshape(x.shape[0], 3, -1)
    f = model(x).detach()
    lam = ref_output_hessians(f, y, loss)
    g = torch.einsum("nop,noq,nqr->pr", jac, lam, jac)
    return g / x.shape[0] if reduction == "mean" else g


def dense_hessian(model, x, y, loss, names=None, reduction="mean") -> Tensor:
    theta0, call = _flat_fn(model, names)
    model.eval()

    def total(theta: Tensor) -> Tensor:
        ell = _ref_loss(call(theta, x), y, loss)
        return ell.mean() if reduction == "mean" else ell.sum()

    return torch.autograd.functional.hessian(total, theta0)


# --------------------------------------------------------------------------- Jacobian


@pytest.mark.parametrize("name", MODELS)
def test_jacobian_products_match_dense(name: str) -> None:
    model = make_model(name)
    x, _ = make_data(name, "mse")
    ref = dense_jacobian(model, x)
    jac = Jacobian(model, x, chunk_size=4)
    assert jac.shape == ref.shape == (N * 3, ref.shape[1])
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(jac.shape[1], generator=gen, dtype=DT)
    u = torch.randn(jac.shape[0], generator=gen, dtype=DT)
    vb = torch.randn(jac.shape[1], 5, generator=gen, dtype=DT)
    ub = torch.randn(jac.shape[0], 5, generator=gen, dtype=DT)
    assert rel_err(jac @ v, ref @ v) < 1e-8
    assert rel_err(jac.T @ u, ref.T @ u) < 1e-8
    assert rel_err(jac @ vb, ref @ vb) < 1e-8
    assert rel_err(jac.T @ ub, ref.T @ ub) < 1e-8
    assert rel_err(jac.to_dense(), ref) < 1e-8
    assert rel_err(jac.T.to_dense(), ref.T) < 1e-8
    assert jac.T.T is jac
    # Example-major rows: reshape (N, O) gives per-example outputs.
    assert torch.allclose((jac @ v).reshape(N, 3)[2], (ref @ v).reshape(N, 3)[2])


# --------------------------------------------------------------------------- GGN and Hessian


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", MODELS)
def test_ggn_matches_dense(name: str, loss: str) -> None:
    model = make_model(name)
    x, y = make_data(name, loss)
    ref = dense_ggn(model, x, y, loss)
    ggn = GGN(model, loss, (x, y))
    assert ggn.shape == ref.shape and ggn.n_data == N
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(ggn.shape[1], generator=gen, dtype=DT)
    block = torch.randn(ggn.shape[1], 4, generator=gen, dtype=DT)
    assert rel_err(ggn @ v, ref @ v) < 1e-8
    assert rel_err(ggn @ block, ref @ block) < 1e-8
    assert rel_err(ggn.to_dense(), ref) < 1e-8
    assert ggn.T is ggn


@pytest.mark.parametrize("mode", Hessian.MODES)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", MODELS)
def test_hessian_matches_dense(name: str, loss: str, mode: str) -> None:
    model = make_model(name)
    x, y = make_data(name, loss)
    ref = dense_hessian(model, x, y, loss)
    hess = Hessian(model, loss, (x, y), mode=mode, chunk_size=3)
    gen = torch.Generator().manual_seed(4)
    v = torch.randn(hess.shape[1], generator=gen, dtype=DT)
    block = torch.randn(hess.shape[1], 4, generator=gen, dtype=DT)
    assert rel_err(hess @ v, ref @ v) < 1e-8
    assert rel_err(hess @ block, ref @ block) < 1e-8
    assert rel_err(hess.to_dense(), ref) < 1e-8


@pytest.mark.parametrize("loss", LOSSES)
def test_gradient_and_loss_value(loss: str) -> None:
    model = make_model("mlp_tanh")
    x, y = make_data("mlp_tanh", loss)
    hess = Hessian(model, loss, [(x[:2], y[:2]), (x[2:], y[2:])], reduction="sum")
    model.zero_grad()
    ref_loss = _ref_loss(model(x), y, loss).sum()
    ref_loss.backward()
    ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert rel_err(hess.gradient(), ref) < 1e-10
    assert torch.allclose(hess.loss_value(), ref_loss.detach())


@pytest.mark.parametrize("loss", LOSSES)
def test_batches_accumulate_like_one_batch(loss: str) -> None:
    model = make_model("mlp_tanh")
    x, y = make_data("mlp_tanh", loss, n=9)
    batches = [(x[:2], y[:2]), (x[2:7], y[2:7]), [x[7:], y[7:]]]
    v = torch.randn(66, dtype=DT, generator=torch.Generator().manual_seed(5))
    for cls in (GGN, Hessian):
        for reduction in ("mean", "sum"):
            whole = cls(model, loss, (x, y), reduction=reduction)
            split = cls(model, loss, batches, reduction=reduction)
            assert rel_err(split @ v, whole @ v) < 1e-10
            assert split.n_data == 9
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    assert rel_err(GGN(model, loss, loader) @ v, GGN(model, loss, (x, y)) @ v) < 1e-10


@pytest.mark.parametrize("loss", LOSSES)
def test_reduction_sum_is_n_times_mean(loss: str) -> None:
    model = make_model("mlp_relu")
    x, y = make_data("mlp_relu", loss)
    v = torch.randn(66, dtype=DT, generator=torch.Generator().manual_seed(6))
    for cls in (GGN, Hessian):
        mean = cls(model, loss, (x, y)) @ v
        total = cls(model, loss, (x, y), reduction="sum") @ v
        assert rel_err(total, N * mean) < 1e-12
    dsum = ggn_diagonal(model, loss, (x, y), reduction="sum")
    assert rel_err(dsum, N * ggn_diagonal(model, loss, (x, y))) < 1e-12


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", ["mlp_tanh", "cnn"])
def test_cached_hessian_is_exact_and_follows_updates(name: str, loss: str) -> None:
    model = make_model(name)
    x, y = make_data(name, loss)
    hess = Hessian(model, loss, (x, y), chunk_size=3)  # a single batch: cached by default
    assert hess.caches_graph
    gen = torch.Generator().manual_seed(9)
    v = torch.randn(hess.shape[1], generator=gen, dtype=DT)
    block = torch.randn(hess.shape[1], 4, generator=gen, dtype=DT)
    ref = dense_hessian(model, x, y, loss)
    assert rel_err(hess @ v, ref @ v) < 1e-10
    graphs = hess._graphs
    assert rel_err(hess @ block, ref @ block) < 1e-10
    assert hess._graphs is graphs  # the second product reused the retained graph
    # In-place updates (an optimiser step, a change of the data) rebuild the cache.
    model.zero_grad()
    _ref_loss(model(x), y, loss).sum().backward()
    torch.optim.SGD(model.parameters(), lr=0.3).step()
    ref = dense_hessian(model, x, y, loss)
    assert rel_err(hess @ v, ref @ v) < 1e-10
    assert rel_err(hess @ block, ref @ block) < 1e-10
    with torch.no_grad():
        x.mul_(1.5)
    ref = dense_hessian(model, x, y, loss, reduction="mean")
    assert rel_err(hess @ block, ref @ block) < 1e-10
    # Writes through .data bypass version counters: clear_cache() makes them seen.
    model[0].weight.data.add_(0.2)
    hess.clear_cache()
    assert rel_err(hess @ v, dense_hessian(model, x, y, loss) @ v) < 1e-10
    # Against the uncached product, and for reduction="sum".
    plain = Hessian(model, loss, (x, y), cache_graph=False)
    assert not plain.caches_graph and rel_err(hess @ block, plain @ block) < 1e-12
    summed = Hessian(model, loss, [(x, y)], reduction="sum")
    assert rel_err(summed @ v, N * (plain @ v)) < 1e-12


def test_cached_hessian_batches_fixed_params_and_options() -> None:
    model = make_model("mlp_tanh")
    x, y = make_data("mlp_tanh", "cross_entropy", n=9)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    assert not Hessian(model, "cross_entropy", batches).caches_graph
    hess = Hessian(model, "cross_entropy", batches, cache_graph=True)
    v = torch.randn(66, dtype=DT, generator=torch.Generator().manual_seed(10))
    assert rel_err(hess @ v, dense_hessian(model, x, y, "cross_entropy") @ v) < 1e-10
    assert hess.n_data == 9 and len(hess._graphs[1]) == 2
    # A last-layer Hessian reads the first layer as a fixed parameter: updating it counts.
    names = last_layer_names(model)
    sub = Hessian(model, "cross_entropy", (x, y), names)
    u = torch.randn(sub.shape[0], 3, dtype=DT)
    sub @ u
    with torch.no_grad():
        model[0].weight.mul_(-0.5)
    full = dense_hessian(model, x, y, "cross_entropy")
    assert rel_err(sub @ u, full[-sub.shape[0] :, -sub.shape[0] :] @ u) < 1e-10
    assert rel_err(hess @ v, full @ v) < 1e-10
    with pytest.raises(InputError, match="cache_graph"):
        Hessian(model, "mse", (x, y), mode="forward-over-reverse", cache_graph=True)
    with pytest.raises(InputError, match="cache_graph"):
        Hessian(model, "mse", (x, y), cache_graph=1)
    assert not Hessian(model, "mse", (x, y), mode="forward-over-reverse").caches_graph


def test_block_products_equal_columnwise_products() -> None:
    model = make_model("cnn")
    x, y = make_data("cnn", "cross_entropy")
    block = torch.randn(119, 6, dtype=DT, generator=torch.Generator().manual_seed(7))
    for op in (
        GGN(model, "cross_entropy", (x, y), chunk_size=4),
        Hessian(model, "cross_entropy", (x, y)),
        Jacobian(model, x, chunk_size=5),
    ):
        cols = torch.stack([op @ c for c in block.T], dim=1)
        assert rel_err(op @ block, cols) < 1e-12
        assert (op @ block[:, :0]).shape == (op.shape[0], 0)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", MODELS)
def test_ggn_diagonal_is_exact(name: str, loss: str) -> None:
    model = make_model(name)
    x, y = make_data(name, loss)
    ref = dense_ggn(model, x, y, loss).diagonal()
    assert rel_err(ggn_diagonal(model, loss, (x, y)), ref) < 1e-8
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    assert rel_err(ggn_diagonal(model, loss, batches, chunk_size=3), ref) < 1e-8


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", ["mlp_tanh", "cnn"])
def test_param_subset_gives_sub_block(name: str, loss: str) -> None:
    model = make_model(name)
    x, y = make_data(name, loss)
    names = last_layer_names(model)
    full_ggn, full_hess = dense_ggn(model, x, y, loss), dense_hessian(model, x, y, loss)
    n_last = 3 * model[-1].in_features + 3
    idx = slice(full_ggn.shape[0] - n_last, None)  # last layer = trailing parameters
    assert rel_err(GGN(model, loss, (x, y), names).to_dense(), full_ggn[idx, idx]) < 1e-8
    assert rel_err(Hessian(model, loss, (x, y), names).to_dense(), full_hess[idx, idx]) < 1e-8
    assert rel_err(ggn_diagonal(model, loss, (x, y), names), full_ggn.diagonal()[idx]) < 1e-8
    jac = Jacobian(model, x, names).to_dense()
    assert rel_err(jac, dense_jacobian(model, x)[:, idx]) < 1e-8
    # A first-layer subset works the same way.
    first = [n for n, _ in model.named_parameters()][:2]
    n_first = sum(p.numel() for p in list(model.parameters())[:2])
    sub = GGN(model, loss, (x, y), first).to_dense()
    assert rel_err(sub, full_ggn[:n_first, :n_first]) < 1e-8


def test_training_flag_and_state_unchanged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 3)
    ).double()
    model[1].running_mean.normal_()
    x, y = make_data("mlp_tanh", "cross_entropy")
    for flag in (True, False):
        model.train(flag)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        ggn = GGN(model, "cross_entropy", (x, y))
        hess = Hessian(model, "cross_entropy", (x, y))
        v = torch.randn(ggn.shape[0], dtype=DT)
        ggn @ v, hess @ v, ggn.diagonal(), Jacobian(model, x) @ v
        assert all(m.training == flag for m in model.modules())
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    # Curvature is that of the eval-mode network (BatchNorm on running statistics, no dropout).
    model.train()
    ref = dense_ggn(model, x, y, "cross_entropy")
    model.train()
    assert rel_err(GGN(model, "cross_entropy", (x, y)).to_dense(), ref) < 1e-8


def test_mse_integer_targets_are_one_hot() -> None:
    model = make_model("mlp_tanh")
    x, labels = make_data("mlp_tanh", "cross_entropy")
    onehot = nn.functional.one_hot(labels, 3).to(DT)
    a = Hessian(model, "mse", (x, labels), reduction="sum")
    b = Hessian(model, "mse", (x, onehot), reduction="sum")
    v = torch.randn(66, dtype=DT)
    assert rel_err(a @ v, b @ v) < 1e-12
    assert torch.allclose(a.loss_value(), _ref_loss(model(x), onehot, "mse").sum())


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_hessian_factor_and_product(loss: str) -> None:
    gen = torch.Generator().manual_seed(8)
    f = torch.randn(4, 3, generator=gen, dtype=DT)
    y = torch.tensor([0, 2, 1, 2]) if loss == "cross_entropy" else torch.randn(4, 3, dtype=DT)
    lf = get_loss(loss)
    y = lf.prepare_target(y, 4, 3, DT)
    lam = lf.hessian(f, y)
    ref = ref_output_hessians(f, y, loss)
    assert rel_err(lam, ref) < 1e-12
    s = lf.hessian_sqrt(f, y)
    assert rel_err(s @ s.transpose(-1, -2), ref) < 1e-12
    u = torch.randn(2, 4, 3, generator=gen, dtype=DT)
    assert rel_err(lf.hessian_matvec(f, y, u), torch.einsum("nab,knb->kna", ref, u)) < 1e-12
    assert torch.allclose(lf.value(f, y), _ref_loss(f, y, loss))


def test_dense_operator() -> None:
    m = torch.randn(4, 3, dtype=DT)
    op = DenseOperator(m)
    v, u = torch.randn(3, dtype=DT), torch.randn(4, 2, dtype=DT)
    assert torch.allclose(op @ v, m @ v) and torch.allclose(op.T @ u, m.T @ u)
    assert torch.equal(op.to_dense(), m) and not op.symmetric


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_input_error() -> None:
    model = make_model("mlp_tanh")
    x, y = make_data("mlp_tanh", "cross_entropy")
    with pytest.raises(InputError, match=r"cross_entropy.*mse"):
        GGN(model, "nll", (x, y))
    with pytest.raises(InputError, match="0.wieght"):
        Hessian(model, "mse", (x, y), param_names=["0.wieght"])
    with pytest.raises(InputError, match="valid names"):
        Jacobian(model, x, param_names=["bogus"])
    with pytest.raises(InputError, match="reduction"):
        GGN(model, "mse", (x, y), reduction="max")
    with pytest.raises(InputError, match="mode"):
        Hessian(model, "mse", (x, y), mode="finite-difference")
    with pytest.raises(InputError, match="chunk_size"):
        GGN(model, "mse", (x, y), chunk_size=0)
    with pytest.raises(InputError, match="iterated more than once"):
        GGN(model, "mse", iter([(x, y)]))
    with pytest.raises(InputError, match="no batch"):
        GGN(model, "mse", [])

    ggn = GGN(model, "cross_entropy", (x, y))
    with pytest.raises(InputError, match=r"\(66,\)"):
        ggn @ torch.zeros(65, dtype=DT)
    with pytest.raises(InputError, match="dtype"):
        ggn @ torch.zeros(66)
    with pytest.raises(InputError):
        ggn @ torch.zeros(66, 2, 2, dtype=DT)
    jac = Jacobian(model, x)
    with pytest.raises(InputError, match=str(N * 3)):
        jac.T @ torch.zeros(66, dtype=DT)

    with pytest.raises(InputError, match="integer class labels"):
        GGN(model, "cross_entropy", (x, y.to(DT))) @ torch.zeros(66, dtype=DT)
    with pytest.raises(InputError, match=r"\[0, 2\]"):
        GGN(model, "cross_entropy", (x, y + 3)) @ torch.zeros(66, dtype=DT)
    with pytest.raises(InputError, match="mse targets"):
        Hessian(model, "mse", (x, torch.zeros(N, 4, dtype=DT))) @ torch.zeros(66, dtype=DT)
    with pytest.raises(InputError, match="same number of examples"):
        GGN(model, "mse", (x, y[:3]))
