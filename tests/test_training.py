"""MAP training: accuracy on digits, determinism, exact resume, non-finite loss handling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tacitbayes.data import load_dataset
from tacitbayes.errors import InputError, TrainingDivergedError
from tacitbayes.models import build_model
from tacitbayes.training import TrainConfig, evaluate_accuracy, learning_rate, train_map


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", ood=False)


def _model(seed: int = 0, width: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", (1, 8, 8), 10, width=width)


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 4, "progress": False, **kw})


def test_default_mlp_reaches_95_percent_on_digits(digits) -> None:
    model = _model(width=512)
    result = train_map(
        model, digits.train, TrainConfig(epochs=30, progress=False), val_set=digits.val
    )
    assert len(result.history) == 30 and "val_accuracy" in result.history[-1]
    assert evaluate_accuracy(model, digits.test) > 0.95
    assert not model.training


@pytest.mark.parametrize("optimizer, loss", [("sgd", "cross_entropy"), ("adam", "mse")])
def test_other_optimizers_and_losses_learn(digits, optimizer: str, loss: str) -> None:
    model = _model()
    lr = 0.05 if optimizer == "sgd" else 1e-3
    result = train_map(
        model, digits.train, _config(epochs=6, optimizer=optimizer, loss=loss, lr=lr)
    )
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert evaluate_accuracy(model, digits.test) > 0.8


def test_training_is_deterministic(digits) -> None:
    a, b = _model(), _model()
    train_map(a, digits.train, _config(epochs=2))
    train_map(b, digits.train, _config(epochs=2))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    c = _model()
    train_map(c, digits.train, _config(epochs=2, seed=1))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_resume_continues_exactly(digits, tmp_path: Path) -> None:
    full = _model()
    train_map(full, digits.train, _config(), checkpoint=tmp_path / "full.pt")
    interrupted = _model()
    short = tmp_path / "short.pt"
    stopper = _StopAfter(epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train_map(stopper.wrap(interrupted), digits.train, _config(), checkpoint=short)
    assert torch.load(short, weights_only=True)["epoch"] == 2
    resumed = _model(seed=123)  # weights come from the checkpoint, not from this init
    result = train_map(resumed, digits.train, _config(), checkpoint=short, resume=True)
    assert result.resumed_from == 2 and result.epochs_run == 2 and len(result.history) == 4
    assert result.step_seconds > 0  # the two epochs of this call
    for pa, pb in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(pa, pb)


class _StopAfter:
    """Wraps a model so that training is interrupted when epoch ``epochs`` + 1 begins."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def wrap(self, model: nn.Module) -> nn.Module:
        steps_per_epoch = -(-1294 // 128)
        calls = {"n": 0}

        def hook(module, args):
            if module.training:
                calls["n"] += 1
                if calls["n"] > self.epochs * steps_per_epoch:
                    raise KeyboardInterrupt

        model.register_forward_pre_hook(hook)
        return model


class _Exploding(nn.Module):
    """A model whose output turns NaN after ``after`` training forward passes."""

    def __init__(self, inner: nn.Module, after: int) -> None:
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return out * float("nan")
        return out


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(digits, tmp_path: Path) -> None:
    model = _Exploding(_model(), after=15)  # 11 steps per epoch: NaN in epoch 2
    ckpt = tmp_path / "map.pt"
    with pytest.raises(TrainingDivergedError, match="non-finite training loss at epoch 2"):
        train_map(model, digits.train, _config(), checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert [p.name for p in tmp_path.iterdir()] == ["map.pt"]  # no temporary file left


def test_bad_settings_raise(digits, tmp_path: Path) -> None:
    for bad in (
        {"epochs": 0},
        {"epochs": -1},
        {"lr": 0.0},
        {"optimizer": "rmsprop"},
        {"loss": "hinge"},
        {"batch_size": 0},
        {"weight_decay": -1.0},
        {"schedule": "step"},
    ):
        with pytest.raises(InputError):
            train_map(_model(), digits.train, _config(**bad))
    with pytest.raises(InputError, match="not found"):
        train_map(_model(), digits.train, _config(), checkpoint=tmp_path / "none.pt", resume=True)
    torch.save({"model": {}, "optimizer": {}, "epoch": 1}, tmp_path / "wrong.pt")
    with pytest.raises(InputError, match="cannot resume"):
        train_map(_model(), digits.train, _config(), checkpoint=tmp_path / "wrong.pt", resume=True)
    with pytest.raises(InputError, match="unknown device 'bogus'"):
        train_map(_model(), digits.train, _config(), device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="device 'cuda' is not available"):
            train_map(_model(), digits.train, _config(), device="cuda")


def _train_on(device: str, digits, checkpoint: Path) -> nn.Module:
    """Two epochs on ``device`` from a CPU-initialised float64 model, with a checkpoint."""
    model = _model().double()  # float32 inputs are cast to the model's dtype
    result = train_map(model, digits.train, _config(epochs=2), checkpoint=checkpoint, device=device)
    assert len(result.history) == 2 and all(p.device.type == device for p in model.parameters())
    state = torch.load(checkpoint, weights_only=True)  # loadable without map_location
    assert all(t.device.type == "cpu" for t in state["model"].values())
    resumed = _model(seed=1).double()
    train_map(
        resumed, digits.train, _config(epochs=3), checkpoint=checkpoint, resume=True, device=device
    )
    assert all(p.device.type == device for p in resumed.parameters())
    assert evaluate_accuracy(resumed, digits.test) > 0.5
    return model


def test_device_moves_model_and_batches_and_saves_cpu_checkpoints(digits, tmp_path: Path) -> None:
    model = _train_on("cpu", digits, tmp_path / "map.pt")
    assert next(model.parameters()).dtype == torch.float64


@pytest.mark.gpu
def test_train_map_on_cuda(digits, tmp_path: Path) -> None:
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device (make test deselects them)"
    cpu = _train_on("cpu", digits, tmp_path / "cpu.pt")
    cuda = _train_on("cuda", digits, tmp_path / "cuda.pt")
    for a, b in zip(cpu.parameters(), cuda.parameters(), strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-5, atol=1e-5)  # float64: the same run


def test_cosine_schedule() -> None:
    config = TrainConfig(lr=0.1)
    assert learning_rate(config, 0, 100) == pytest.approx(0.1)
    assert learning_rate(config, 50, 100) == pytest.approx(0.05)
    assert learning_rate(config, 100, 100) == pytest.approx(0.0)
    assert learning_rate(TrainConfig(lr=0.1, schedule="constant"), 70, 100) == 0.1


def test_minibatch_epoch_sets_group_rates_and_names_the_divergence() -> None:
    from tacitbayes.training import minibatch_epoch

    w = torch.nn.Parameter(torch.ones(2))
    v = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([{"params": [w], "lr_multiplier": 0.5}, {"params": [v]}], lr=1.0)
    batches = [(torch.ones(3, 2), torch.zeros(3)), (torch.ones(1, 2), torch.zeros(1))]
    mean = minibatch_epoch(
        opt, batches, lambda x, y: (x @ (w + v)).mean(), lambda s: 0.1 * (s + 1), 0
    )
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.1), pytest.approx(0.2)]
    # loss = Σ(w + v); steps subtract lr·mult: w after 0.05 + 0.1, v after 0.1 + 0.2
    torch.testing.assert_close(w.detach(), torch.full((2,), 1 - 0.15))
    torch.testing.assert_close(v.detach(), torch.full((2,), 1 - 0.3))
    assert mean == pytest.approx((3 * 4.0 + 1 * (2 * 0.95 + 2 * 0.9)) / 4)  # batch-size weighted
    with pytest.raises(
        TrainingDivergedError,
        match=r"non-finite expected loss at epoch 3, step 1 \(lower it\); see X",
    ):
        minibatch_epoch(
            opt,
            batches,
            lambda x, y: torch.tensor(float("nan")),
            lambda s: 0.1,
            2,
            what="expected loss",
            hint="see X",
            advice="lower it",
        )
