"""SharpnessTracker against dense Hessians: sharpness, loss, accuracy, gradient, preconditioning."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from tacitbayes.curvature import DenseOperator
from tacitbayes.dynamics import PreconditionedOperator, SharpnessTracker
from tacitbayes.errors import InputError
from tacitbayes.optim import IVON, VariationalGD

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(n: int = 20) -> tuple[nn.Module, tuple[Tensor, Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(2)
    return model, (
        torch.randn(n, 4, generator=gen, dtype=DT),
        torch.randint(0, 3, (n,), generator=gen),
    )


def _mse(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (model(x) - nn.functional.one_hot(y, 3).to(DT)).square().sum(-1).mean()


def _dense(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient and Hessian of the mean MSE loss in the flat named_parameters order (autograd)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat: Tensor) -> Tensor:
        parts, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = shape.numel()
            parts[name] = flat[start : start + size].reshape(shape)
            start += size
        out = functional_call(model, parts, (x,))
        return 0.5 * (out - nn.functional.one_hot(y, 3).to(DT)).square().sum(-1).mean()

    return torch.func.grad(loss)(flat0), torch.func.hessian(loss)(flat0)


def test_sharpness_loss_accuracy_and_gradient_match_dense() -> None:
    model, (x, y) = _problem()
    tracker = SharpnessTracker(model, "mse", (x, y), every=1, n_eigs=3, tol=1e-10)
    rec = tracker.record(0)
    grad, hess = _dense(model, x, y)
    evals, evecs = torch.linalg.eigh(hess)
    assert rec["sharpness"] == pytest.approx(float(evals[-1]), rel=1e-8)
    assert rec["eigenvalues"] == pytest.approx(evals.flip(0)[:3].tolist(), rel=1e-8)
    assert rec["loss"] == pytest.approx(float(_mse(model, x, y).detach()), rel=1e-12)
    acc = float((model(x).argmax(-1) == y).double().mean())
    assert rec["accuracy"] == pytest.approx(acc)
    assert rec["grad_sq_norm"] == pytest.approx(float(grad.square().sum()), rel=1e-10)
    assert rec["grad_top_sq"] == pytest.approx(float((grad @ evecs[:, -1]) ** 2), rel=1e-6)
    assert rec["n_params"] == hess.shape[0]


def test_records_every_k_steps_and_follows_training() -> None:
    model, (x, y) = _problem()
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]  # a list of batches works too
    tracker = SharpnessTracker(model, "mse", batches, every=3, tol=1e-8)
    opt = VariationalGD(model.parameters(), lr=0.2, sigma=0.01, seed=0)
    for step in range(7):
        tracker.maybe_record(step)
        with opt.sampled_params(train=True):
            _mse(model, x, y).backward()
        opt.step()
    steps, sharp = tracker.series("sharpness")
    assert steps == [0, 3, 6]
    _, hess = _dense(model, x, y)  # the model moved: the last record was at step 6, not now
    assert sharp[-1] != pytest.approx(float(torch.linalg.eigvalsh(hess)[-1]), rel=1e-9)
    tracker.record(7)
    assert tracker.history[-1]["sharpness"] == pytest.approx(
        float(torch.linalg.eigvalsh(hess)[-1]), rel=1e-7
    )
    with pytest.raises(InputError, match="no recorded quantity"):
        tracker.series("nope")


def test_preconditioned_sharpness_matches_dense() -> None:
    model, (x, y) = _problem()
    opt = IVON(model.parameters(), lr=0.05, ess=20.0, hess_init=0.5, beta2=0.5, seed=0)
    for _ in range(3):  # make h non-uniform
        with opt.sampled_params(train=True):
            _mse(model, x, y).backward()
        opt.step()
    d = torch.cat([(opt.state[p]["hess"] + 1e-4).reshape(-1) for p in model.parameters()])
    assert float(d.std()) > 0.01
    tracker = SharpnessTracker(model, "mse", (x, y), optimizer=opt, tol=1e-10)
    rec = tracker.record(0)
    _, hess = _dense(model, x, y)
    s = d.rsqrt()
    expected = torch.linalg.eigvalsh(s[:, None] * hess * s[None, :])[-1]
    assert rec["preconditioned_sharpness"] == pytest.approx(float(expected), rel=1e-7)


def test_preconditioned_operator_blocks_and_errors() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5, 5, generator=gen, dtype=DT)
    op = DenseOperator(a @ a.T)
    d = torch.rand(5, generator=gen, dtype=DT) + 0.5
    pre = PreconditionedOperator(op, d)
    dense = torch.diag(d.rsqrt()) @ (a @ a.T) @ torch.diag(d.rsqrt())
    v = torch.randn(5, 3, generator=gen, dtype=DT)
    assert torch.allclose(pre @ v, dense @ v) and torch.allclose(pre @ v[:, 0], dense @ v[:, 0])
    with pytest.raises(InputError, match="positive"):
        PreconditionedOperator(op, -d)
    with pytest.raises(InputError, match="length"):
        PreconditionedOperator(op, d[:3])
    model, data = _problem()
    with pytest.raises(InputError, match="IVON"):
        SharpnessTracker(model, "mse", data, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(InputError, match="every"):
        SharpnessTracker(model, "mse", data, every=0)
