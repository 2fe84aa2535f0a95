"""MAP training: minimise the mean training loss plus weight decay, with checkpoints.

Data: a DataLoader or any re-iterable of batches, used as given; a Dataset is batched
with the config's batch size and shuffled (:func:`tacitbayes.batches.as_loader`).
Deterministic given the seed: epoch e reseeds torch's global RNG from (seed, e) and a
Dataset's shuffle is seeded by (seed, e), so a run resumed from the checkpoint of
epoch e continues exactly as the uninterrupted run would have.

Under a process group (``torchrun``) W ranks train one model as one process would:
every rank reads the SAME global batches (the same seeded shuffle), takes a disjoint
contiguous slice of each, and weights its slice's mean loss by n_r / B; one all-reduce
of the gradients (and of the loss) per step then gives every rank the gradient of the
global batch's mean loss, so the weights match one process to rounding (about 1e-12
in float64 after a few epochs). Parameters and buffers start from rank 0's. BatchNorm
in training mode normalises by the statistics of each rank's slice (as
DistributedDataParallel without SyncBatchNorm does), so BatchNorm models do not match
one process exactly; their running statistics are averaged over the ranks after each
epoch, keeping the ranks identical. Validation runs on every rank on the whole
validation set (identical weights give identical metrics). The checkpoint is written
by rank 0 only (:mod:`tacitbayes.io`) and read by every rank on ``resume``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tacitbayes import distributed as D
from tacitbayes.batches import (
    Inputs,
    as_loader,
    call_model,
    iter_batches,
    loader_for_epoch,
    n_batches,
    slice_inputs,
)
from tacitbayes.checkpoints import EpochCheckpoints
from tacitbayes.devices import check_device, model_device, model_dtype
from tacitbayes.errors import InputError, TrainingDivergedError
from tacitbayes.functional import eval_mode
from tacitbayes.likelihoods import TRAIN_LOSSES, mean_loss
from tacitbayes.optim.sync import broadcast_tensors_

EVAL_BATCH = 1024  # batch size of a validation Dataset
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
        if self.loss not in TRAIN_LOSSES:
            raise InputError(f"unknown loss {self.loss!r}; available: {', '.join(TRAIN_LOSSES)}")


@dataclass
class TrainResult:
    """What training did: per-epoch history and the epochs run in this call."""

    history: list[dict[str, float]] = field(default_factory=list)
    epochs_run: int = 0
    resumed_from: int = 0
    step_seconds: float = 0.0  # time in optimisation steps this call (no validation, no saving)


def scheduled_lr(lr: float, step: int, total_steps: int, schedule: str = "cosine") -> float:
    """lr at a global step: constant, or cosine decay lr·½(1 + cos(π t/T)) to zero at T."""
    if schedule == "constant":
        return lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of ``config`` at a global step (see :func:`scheduled_lr`)."""
    return scheduled_lr(config.lr, step, total_steps, config.schedule)


def epoch_batches(data: Any, batch_size: int, seed: int, epoch: int) -> Iterable[Any]:
    """The batches of epoch e (a Dataset shuffled by (seed, e), see ``as_loader``); reseeds torch from (seed, e)."""
    loader = as_loader(data, batch_size, shuffle=True, seed=seed)
    torch.manual_seed(seed * 100_003 + epoch)
    return loader_for_epoch(loader, epoch)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum or Adam, with coupled weight decay (the gradient of (δ/2)‖θ‖²)."""
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError("the model has no trainable parameters (requires_grad=True) to train")
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def predicted_labels(output: Tensor) -> Tensor:
    """argmax_c f_c, or 1[f > 0] for a single logit (binary), per example."""
    if output.ndim == 1 or output.shape[-1] == 1:
        return (output.reshape(-1) > 0).long()
    return output.argmax(-1)


@torch.no_grad()
def validation_metrics(
    forward: Callable[[Inputs], Tensor],
    data: Any,
    loss: str | None,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    batch_size: int = EVAL_BATCH,
) -> dict[str, float]:
    """{"loss": (1/N) Σ ℓ(f(x_n), y_n), "accuracy": fraction with predicted_labels(f(x_n)) = y_n}.

    ``data`` follows :func:`tacitbayes.batches.as_loader` (a Dataset in order, by
    ``batch_size``). No "loss" when ``loss`` is None; no "accuracy" for real-valued
    ``mse`` targets (regression) or for ``model_loss`` (the outputs are losses, the
    targets ignored). ``forward`` runs as given (the caller sets eval mode).
    """
    loss_sum, correct, total, labels = 0.0, 0, 0, loss != "model_loss"
    for x, y in iter_batches(as_loader(data, batch_size, what="validation data"), device, dtype):
        out = forward(x)
        if loss is not None:
            loss_sum += float(mean_loss(out, y, loss)) * len(y)
        labels = labels and not (loss == "mse" and y.is_floating_point())
        if labels:
            correct += int((predicted_labels(out) == y.reshape(-1).long()).sum())
        total += len(y)
    out_metrics = {} if loss is None else {"loss": loss_sum / max(total, 1)}
    if labels:
        out_metrics["accuracy"] = correct / max(total, 1)
    return out_metrics


def evaluate_accuracy(model: nn.Module, data: Any, batch_size: int = EVAL_BATCH) -> float:
    """Fraction of ``data`` (a loader, or a Dataset) that ``model`` classifies correctly, in eval mode."""
    device, dtype = model_device(model), model_dtype(model)
    with eval_mode(model):
        forward = lambda x: call_model(model, x)  # noqa: E731
        return validation_metrics(forward, data, None, device, dtype, batch_size)["accuracy"]


def minibatch_epoch(
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lr_at: Callable[[int], float],
    epoch: int,
    what: str = "training loss",
    hint: str = "",
    advice: str = "try a smaller learning rate",
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """One epoch of steps θ ← opt(θ, ∇ℓ_b(θ)) at lr_at(step) × each group's ``lr_multiplier``; mean loss.

    A non-finite loss raises TrainingDivergedError naming the (1-based) epoch and step.
    With ``reduce`` (data parallelism) the gradients are summed over the ranks after the
    backward pass by ``reduce(loss)``, which returns the global loss that is checked.
    """
    total, count = 0.0, 0
    for step, (x, y) in enumerate(batches):
        base = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = base * group.get("lr_multiplier", 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(x, y)
        if reduce is not None:  # every rank sees the same global loss: all raise, or none
            loss.backward()
            loss = reduce(loss)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"non-finite {what} at epoch {epoch + 1}, step {step + 1} "
                f"({advice}){'; ' + hint if hint else ''}"
            )
        if reduce is None:
            loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
    return total / max(count, 1)


def _sliced_loss(model: nn.Module, loss: str) -> Callable[[Inputs, Tensor], Tensor]:
    """(n_r/B) ℓ̄_r: this rank's slice mean loss weighted so that Σ_ranks is the global mean."""

    def loss_fn(x: Inputs, y: Tensor) -> Tensor:
        part = slice(*D.rank_rows(len(y)))
        n = part.stop - part.start
        if n == 0:  # a batch smaller than W: this rank adds nothing
            return torch.zeros(
                (), dtype=model_dtype(model), device=model_device(model), requires_grad=True
            )
        out = call_model(model, slice_inputs(x, part.start, part.stop))
        return mean_loss(out, y[part], loss) * (n / len(y))

    return loss_fn


def _all_reduce_gradients(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """∇θ ← Σ_ranks ∇θ in one all-reduce (with the loss and which gradients exist); Σ_ranks loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in params)

    def reduce(loss: Tensor) -> Tensor:
        ref = params[0]
        parts = [
            p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params
        ]
        flags = [1.0 if p.grad is not None else 0.0 for p in params]
        flat = torch.cat(
            [
                *(g.to(ref.dtype) for g in parts),
                torch.tensor(flags, dtype=ref.dtype, device=ref.device),
                loss.detach().reshape(1).to(ref),
            ]
        )
        D.all_reduce_(flat)
        present = (flat[total : total + len(params)] > 0).tolist()
        offset = 0
        for p, has in zip(params, present, strict=True):
            k = p.numel()
            # no gradient on any rank stays None, as in one process (the optimiser skips it)
            p.grad = flat[offset : offset + k].view_as(p).to(p.dtype).clone() if has else None
            offset += k
        return flat[-1].to(loss.dtype)

    return reduce


def _average_buffers(model: nn.Module) -> None:
    """Floating buffers (BatchNorm running statistics) ← their mean over the ranks."""
    with torch.no_grad():
        for b in model.buffers():
            if b.is_floating_point():
                D.all_reduce_(b).div_(D.world_size())


def train_map(
    model: nn.Module,
    train_set: Any,
    config: TrainConfig | None = None,
    *,
    val_set: Any | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train ``model`` in place to the MAP estimate: min (1/N) Σ ℓ(f(θ, x_n), y_n) + (δ/2)‖θ‖².

    ``train_set`` and ``val_set``: a DataLoader or any re-iterable of batches, used as
    given, or a Dataset, batched by ``config.batch_size`` and shuffled by (seed, epoch)
    (validation: in order, by 1024); see :func:`tacitbayes.batches.as_loader`. The
    history records the validation loss and, for class labels, the accuracy.
    The model is moved to ``device`` (None: where it is) and stays there; every batch
    follows it, floating inputs cast to the model's dtype. With ``checkpoint`` the state
    is saved atomically after every epoch, as CPU tensors; with ``resume`` training
    continues from that file. A non-finite loss raises TrainingDivergedError and leaves
    the last good checkpoint in place. Under a process group every rank calls this with
    the same (unsharded) data and ends with the same weights (see the module docstring).
    """
    config = config or TrainConfig()
    config.validate()
    loader = as_loader(
        train_set, config.batch_size, shuffle=True, seed=config.seed, what="train_set"
    )
    val_loader = None if val_set is None else as_loader(val_set, EVAL_BATCH, what="val_set")
    if D.is_distributed() and D.shard(loader) is loader:
        raise InputError(
            "train_map slices every global batch over the ranks itself: give every rank the "
            "same unsharded train_set, not a sharded or presharded loader"
        )
    device = model_device(model) if device is None else check_device(device)
    model.to(device)
    dtype = model_dtype(model)
    optimizer = make_optimizer(model, config)
    result = TrainResult()
    saves = EpochCheckpoints(checkpoint, "map", asdict(config))
    start = 0
    if resume:
        start, result.history = saves.restore(model, optimizer)
        result.resumed_from = start
    parallel = D.is_distributed()
    if parallel:
        broadcast_tensors_(
            [*model.parameters(), *model.buffers()]
        )  # every rank from rank 0's state
    steps_per_epoch = n_batches(loader)
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
            iter_batches(
                epoch_batches(loader, config.batch_size, config.seed, epoch), device, dtype
            ),
            _sliced_loss(model, config.loss)
            if parallel
            else lambda x, y: mean_loss(call_model(model, x), y, config.loss),
            lambda step, e=epoch: learning_rate(config, e * steps_per_epoch + step, total_steps),
            epoch,
            what="training loss",
            hint=where,
            reduce=_all_reduce_gradients(model) if parallel else None,
        )
        result.step_seconds += time.perf_counter() - epoch_start
        if parallel:
            _average_buffers(model)
        record = {"epoch": epoch + 1, "train_loss": train_loss}
        if val_loader is not None:
            with eval_mode(model):
                metrics = validation_metrics(
                    lambda x: call_model(model, x), val_loader, config.loss, device, dtype
                )
            record |= {f"val_{k}": v for k, v in metrics.items()}
        result.history.append(record)
        result.epochs_run += 1
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
        saves.save(model, optimizer, epoch + 1, result.history)
    model.eval()
    return result
