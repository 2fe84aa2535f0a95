"""The Bernoulli loss (one logit) against dense autograd: GGN, Hessian, diagonal, KFAC, MC Fisher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from tacitbayes.curvature import GGN, KFAC, Hessian, ggn_diagonal
from tacitbayes.curvature.losses import get_loss
from tacitbayes.errors import InputError

DT = torch.float64


def _setup(n: int = 7) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=gen, dtype=DT)
    y = torch.randint(0, 2, (n,), generator=gen)
    return model, x, y


def _flat(model: nn.Module):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def call(t: Tensor, x: Tensor) -> Tensor:
        params = {n: c.reshape(s) for n, c, s in zip(names, t.split(sizes), shapes, strict=True)}
        return functional_call(model, params, (x,))

    return theta, call


def _dense_ggn(model: nn.Module, x: Tensor) -> Tensor:
    theta, call = _flat(model)
    jac = jacrev(lambda t: call(t, x).reshape(-1))(theta)  # (N, P)
    p = torch.sigmoid(call(theta, x).reshape(-1))
    return jac.T @ ((p * (1 - p))[:, None] * jac)


def _dense_hessian(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    theta, call = _flat(model)

    def loss(t: Tensor) -> Tensor:
        f = call(t, x).reshape(-1)
        return F.binary_cross_entropy_with_logits(f, y.to(DT), reduction="sum")

    return torch.autograd.functional.hessian(loss, theta)


def test_loss_pieces_match_autograd() -> None:
    loss = get_loss("binary_cross_entropy")
    f = torch.tensor([[-3.0], [0.2], [5.0]], dtype=DT, requires_grad=True)
    y = loss.prepare_target(torch.tensor([0, 1, 1]), 3, 1, DT)
    value = loss.value(f, y)
    ref = -(y * F.logsigmoid(f) + (1 - y) * F.logsigmoid(-f)).sum(-1)
    torch.testing.assert_close(value, ref)
    (g,) = torch.autograd.grad(value.sum(), f, create_graph=True)
    torch.testing.assert_close(loss.output_gradient(f, y), g)
    (h,) = torch.autograd.grad(g.sum(), f)  # one output: the Hessian is diagonal
    torch.testing.assert_close(loss.hessian(f, y).reshape(-1), h.reshape(-1))


def test_ggn_hessian_and_diagonal_match_dense() -> None:
    model, x, y = _setup()
    ggn_ref, hess_ref = _dense_ggn(model, x), _dense_hessian(model, x, y)
    data = (x, y)
    ggn = GGN(model, "binary_cross_entropy", data, reduction="sum")
    torch.testing.assert_close(ggn.to_dense(), ggn_ref)
    hess = Hessian(model, "binary_cross_entropy", data, reduction="sum")
    torch.testing.assert_close(hess.to_dense(), hess_ref)
    diag = ggn_diagonal(model, "binary_cross_entropy", data, reduction="sum")
    torch.testing.assert_close(diag, torch.diagonal(ggn_ref))
    kfac = KFAC(model, "binary_cross_entropy", data, reduction="sum")
    one = KFAC(model, "binary_cross_entropy", (x[:1], y[:1]), reduction="sum")
    ref_one = _dense_ggn(model, x[:1])
    # a layer's weight and bias form one block, and for one example KFAC is exact on it
    owner = [n.rsplit(".", 1)[0] for n, p in model.named_parameters() for _ in range(p.numel())]
    same = torch.tensor([[a == b for b in owner] for a in owner])
    torch.testing.assert_close(one.to_dense(), ref_one * same)
    with torch.no_grad():
        ref_loss = F.binary_cross_entropy_with_logits(
            model(x).reshape(-1), y.to(DT), reduction="sum"
        )
    assert kfac.loss_sum == pytest.approx(float(ref_loss))


def test_monte_carlo_fisher_is_unbiased() -> None:
    model, x, y = _setup()
    exact = ggn_diagonal(model, "binary_cross_entropy", (x, y), reduction="sum")
    mc = ggn_diagonal(
        model, "binary_cross_entropy", (x, y), reduction="sum", mc_samples=20000, seed=2
    )
    assert float((mc - exact).norm() / exact.norm()) < 0.03


def test_bad_targets_and_shapes_are_refused() -> None:
    with pytest.raises(
        InputError, match="binary"
    ):  # one logit under cross_entropy: say what to use
        get_loss("cross_entropy").prepare_target(torch.tensor([0, 1]), 2, 1, DT)
    loss = get_loss("binary_cross_entropy")
    with pytest.raises(InputError, match="one output"):
        loss.prepare_target(torch.tensor([0, 1]), 2, 2, DT)
    with pytest.raises(InputError, match="0 or 1"):
        loss.prepare_target(torch.tensor([0.0, 0.5]), 2, 1, DT)
    with pytest.raises(InputError, match="shape"):
        loss.prepare_target(torch.zeros(2, 3), 2, 1, DT)
