"""DataJacobian (the stacked training-set Jacobian) against dense autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tacitbayes.curvature.data_jacobian import DataJacobian
from tacitbayes.errors import InputError

DT = torch.float64


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(DT)
    x, y = torch.randn(9, 5, dtype=DT), torch.randint(0, 3, (9,))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def call(t: torch.Tensor) -> torch.Tensor:
        params = {n: v.reshape(s) for n, v, s in zip(names, t.split(sizes), shapes, strict=True)}
        return torch.func.functional_call(model, params, (x,))

    return model, x, y, theta, call


def test_products_and_gram_match_dense() -> None:
    model, x, y, theta, call = _setup()
    dense = torch.autograd.functional.jacobian(lambda t: call(t).reshape(-1), theta)
    jac = DataJacobian(model, [(x[:4], y[:4]), (x[4:], y[4:])])
    assert jac.shape == dense.shape and jac.n_batches == 2 and jac.batch_rows == [12, 15]
    v = torch.randn(theta.numel(), 3, dtype=DT)
    u = torch.randn(dense.shape[0], 3, dtype=DT)
    torch.testing.assert_close(jac @ v, dense @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jac.T @ u, dense.T @ u, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jac @ v[:, 0], dense @ v[:, 0], rtol=1e-10, atol=1e-12)
    block = dense[12:]
    torch.testing.assert_close(jac.batch_gram(1), block @ block.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        jac.batch_gram(1, max_bytes=8 * 2 * theta.numel()), block @ block.T, rtol=1e-10, atol=1e-12
    )


def test_loss_outputs_give_per_example_loss_gradients() -> None:
    model, x, y, theta, call = _setup()
    dense = torch.autograd.functional.jacobian(
        lambda t: nn.functional.cross_entropy(call(t), y, reduction="none"), theta
    )
    jac = DataJacobian(model, [(x, y)], outputs="loss")
    assert jac.shape == (9, theta.numel()) and jac.n_outputs == 1
    v = torch.randn(theta.numel(), 2, dtype=DT)
    torch.testing.assert_close(jac @ v, dense @ v, rtol=1e-10, atol=1e-12)
    with pytest.raises(InputError, match="outputs"):
        DataJacobian(model, [(x, y)], outputs="features")
    with pytest.raises(InputError):
        DataJacobian(model, [])
