"""MAP training: minimise the mean training loss plus weight decay, with checkpoints.

Deterministic given the seed: epoch e shuffles with a generator seeded by
(seed, e) and reseeds torch's global RNG, so a run resumed from the checkpoint
of epoch e continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from tacitbayes.batches import read_batch, to_model
from tacitbayes.data import minibatches
from tacitbayes.devices import check_device, model_device, model_dtype, to_cpu
from tacitbayes.errors import InputError, TrainingDivergedError
from tacitbayes.io import save_torch

LOSSES = ("cross_entropy", "mse")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """Settings of MAP training."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    loss: str = "cross_entropy"
    schedule: str = "cosine"
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        """Raise InputError for settings that cannot be used."""
        if self.epochs < 1:
            raise InputError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise InputError(f"weight_decay must be non-negative, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(
                f"unknown optimizer {self.optimizer!r}; available: {', '.join(OPTIMIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise InputError(
                f"unknown schedule {self.schedule!r}; available: {', '.join(SCHEDULES)}"
            )
        if self.loss not in LOSSES:
            raise InputError(f"unknown loss {self.loss!r}; available: {', '.join(LOSSES)}")


@dataclass
class TrainResult:
    """What training did: per-epoch history and the epochs run in this call."""

    history: list[dict[str, float]] = field(default_factory=list)
    epochs_run: int = 0
    resumed_from: int = 0
    step_seconds: float = 0.0  # time in optimisation steps this call (no validation, no saving)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean over the batch of −log softmax(f)_y ("cross_entropy") or ½‖f − onehot(y)‖² ("mse")."""
    if loss == "cross_entropy":
        return F.cross_entropy(logits, labels)
    if loss == "mse":
        target = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
        return 0.5 * (logits - target).pow(2).sum(-1).mean()
    raise InputError(f"unknown loss {loss!r}; available: {', '.join(LOSSES)}")


def scheduled_lr(lr: float, step: int, total_steps: int, schedule: str = "cosine") -> float:
    """lr at a global step: constant, or cosine decay lr·½(1 + cos(π t/T)) to zero at T."""
    if schedule == "constant":
        return lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of ``config`` at a global step (see :func:`scheduled_lr`)."""
    return scheduled_lr(config.lr, step, total_steps, config.schedule)


def epoch_batches(
    dataset: Dataset, batch_size: int, seed: int, epoch: int
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Shuffled minibatches of one epoch; reseeds torch so that epoch e replays exactly on resume."""
    torch.manual_seed(seed * 100_003 + epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return minibatches(dataset, batch_size, shuffle=True, generator=generator)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum or Adam, with coupled weight decay (the gradient of (δ/2)‖θ‖²)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 1024) -> float:
    """Fraction of ``dataset`` that ``model`` classifies correctly (eval mode, on the model's device)."""
    was_training = model.training
    model.eval()
    device, dtype = model_device(model), model_dtype(model)
    correct = total = 0
    for batch in minibatches(dataset, batch_size):
        x, y = to_model(read_batch(batch), device, dtype)
        correct += int((model(x).argmax(-1) == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def minibatch_epoch(
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lr_at: Callable[[int], float],
    epoch: int,
    what: str = "training loss",
    hint: str = "",
    advice: str = "try a smaller learning rate",
) -> float:
    """One epoch of steps θ ← opt(θ, ∇ℓ_b(θ)) at lr_at(step) × each group's ``lr_multiplier``; mean loss.

    A non-finite loss raises TrainingDivergedError naming the (1-based) epoch and step.
    """
    total, count = 0.0, 0
    for step, (x, y) in enumerate(batches):
        base = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = base * group.get("lr_multiplier", 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(x, y)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"non-finite {what} at epoch {epoch + 1}, step {step + 1} "
                f"({advice}){'; ' + hint if hint else ''}"
            )
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
    return total / max(count, 1)


def _load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise InputError(f"cannot resume from checkpoint {path}: {exc}") from exc
    return state


def train_map(
    model: nn.Module,
    train_set: Dataset,
    config: TrainConfig | None = None,
    *,
    val_set: Dataset | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train ``model`` in place to the MAP estimate: min (1/N) Σ ℓ(f(θ, x_n), y_n) + (δ/2)‖θ‖².

    The model is moved to ``device`` (None: where it is) and stays there; every batch
    follows it, floating inputs cast to the model's dtype. With ``checkpoint`` the state
    is saved atomically after every epoch, as CPU tensors; with ``resume`` training
    continues from that file. A non-finite loss raises TrainingDivergedError and leaves
    the last good checkpoint in place.
    """
    config = config or TrainConfig()
    config.validate()
    device = model_device(model) if device is None else check_device(device)
    model.to(device)
    dtype = model_dtype(model)
    optimizer = make_optimizer(model, config)
    result = TrainResult()
    start = 0
    if resume:
        if checkpoint is None or not Path(checkpoint).is_file():
            raise InputError(f"cannot resume: checkpoint {checkpoint} not found")
        state = _load_checkpoint(Path(checkpoint), model, optimizer)
        start = result.resumed_from = int(state["epoch"])
        result.history = list(state.get("history", []))
    steps_per_epoch = -(-len(train_set) // config.batch_size)  # type: ignore[arg-type]
    total_steps = steps_per_epoch * config.epochs
    bar = tqdm(
        range(start, config.epochs),
        desc="train MAP",
        disable=not config.progress or None,
        leave=False,
    )
    for epoch in bar:
        model.train()
        where = f"last good checkpoint: {checkpoint}" if checkpoint else "no checkpoint was kept"
        epoch_start = time.perf_counter()
        train_loss = minibatch_epoch(
            optimizer,
            (
                to_model(read_batch(batch), device, dtype)
                for batch in epoch_batches(train_set, config.batch_size, config.seed, epoch)
            ),
            lambda x, y: classification_loss(model(x), y, config.loss),
            lambda step, e=epoch: learning_rate(config, e * steps_per_epoch + step, total_steps),
            epoch,
            what="training loss",
            hint=where,
        )
        result.step_seconds += time.perf_counter() - epoch_start
        record = {"epoch": epoch + 1, "train_loss": train_loss}
        if val_set is not None:
            record["val_accuracy"] = evaluate_accuracy(model, val_set)
        result.history.append(record)
        result.epochs_run += 1
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
        if checkpoint is not None:
            save_torch(
                {
                    "model": to_cpu(model.state_dict()),
                    "optimizer": to_cpu(optimizer.state_dict()),
                    "epoch": epoch + 1,
                    "config": asdict(config),
                    "history": result.history,
                },
                checkpoint,
            )
    model.eval()
    return result
