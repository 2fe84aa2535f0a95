"""Train a ``VariationalModel`` by the expected loss alone (IBVI): no KL, the init is the prior.

Data as in :func:`tacitbayes.training.train_map`: a DataLoader or any re-iterable of
batches is used as given; a Dataset is batched by ``config.batch_size`` and shuffled by
(seed, epoch) (:func:`tacitbayes.batches.as_loader`). Losses: ``"cross_entropy"``,
``"mse"`` (½‖f − y‖², real targets for regression) and ``"binary_cross_entropy"`` (one
logit), see :mod:`tacitbayes.likelihoods`.

Under a process group (:mod:`tacitbayes.distributed`) every rank reads the same global
batches and draws the same noise z (torch's global RNG, reseeded from (seed, epoch) by
``epoch_batches`` on every rank, after rank 0's weights are broadcast): rank r evaluates
the shared samples on its rows B_r of each batch (:func:`tacitbayes.optim.sync.rank_rows`)
and the gradients are combined as ∇ = Σ_r (|B_r|/|B|) ∇ℓ_{B_r}, so a step on W ranks is
the one-process step and the ranks stay identical. Exact for models whose forward pass
does not depend on the batch as a whole or on extra randomness: BatchNorm's batch
statistics are per slice, and dropout masks are drawn per slice from the shared RNG.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tacitbayes import distributed as D
from tacitbayes.batches import as_loader, iter_batches, n_batches, n_examples, slice_inputs
from tacitbayes.checkpoints import RESUME_SETTINGS as MAP_RESUME_SETTINGS
from tacitbayes.checkpoints import EpochCheckpoints
from tacitbayes.devices import model_device, model_dtype
from tacitbayes.errors import InputError, TrainingDivergedError
from tacitbayes.likelihoods import LOSSES
from tacitbayes.optim import sync as S
from tacitbayes.training import (
    EVAL_BATCH,
    epoch_batches,
    minibatch_epoch,
    scheduled_lr,
    validation_metrics,
)
from tacitbayes.variational.model import VariationalModel

__all__ = ["IBVIConfig", "IBVIResult", "train_ibvi"]

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
# Settings that define IBVI's optimisation path: MAP training's, and the samples per step.
RESUME_SETTINGS = (*MAP_RESUME_SETTINGS, "n_samples")


@dataclass
class IBVIConfig:
    """Settings of IBVI training (the paper: SGD, momentum 0.9, batch 128, one sample per batch)."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    n_samples: int = 1
    schedule: str = "cosine"
    loss: str = "cross_entropy"
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        """Raise InputError for settings that cannot be used."""
        if self.epochs < 1 or self.batch_size < 1 or self.n_samples < 1:
            raise InputError(
                f"epochs, batch_size and n_samples must be >= 1, got "
                f"{self.epochs}, {self.batch_size}, {self.n_samples}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise InputError(f"weight_decay must be non-negative, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(
                f"unknown optimizer {self.optimizer!r}; available: {', '.join(OPTIMIZERS)}"
            )
        if self.schedule not in ("cosine", "constant"):
            raise InputError(f"unknown schedule {self.schedule!r}; available: cosine, constant")
        if self.loss not in LOSSES:
            raise InputError(f"unknown loss {self.loss!r}; available: {', '.join(LOSSES)}")


@dataclass
class IBVIResult:
    """Per-epoch history of IBVI training, and the epoch a resumed run started from."""

    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0


def make_optimizer(vnet: VariationalModel, config: IBVIConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or Adam over μ, S and deterministic weights, with the parametrization's multipliers.

    The fused (single-pass) optimizer kernels are used: the factor S holds R times its
    layer's entries, so the update of S is memory-bound and one pass instead of three matters.
    """
    kwargs = {"lr": config.lr, "weight_decay": config.weight_decay, "fused": True}
    if config.optimizer == "sgd":
        return vnet.optimizer(torch.optim.SGD, momentum=config.momentum, **kwargs)
    return vnet.optimizer(torch.optim.Adam, **kwargs)


@torch.no_grad()
def mean_metrics(vnet: VariationalModel, data: Any, loss: str) -> dict[str, float]:
    """Loss and (class labels) accuracy of the mean network f(μ, ·), in eval mode (the functional view)."""
    params = {n: p.detach() for n, p in vnet.model.named_parameters()}
    params = {n: params[n] for n in vnet.fmodel.param_names}
    forward = lambda x: vnet.functional(params, x)  # noqa: E731
    return validation_metrics(forward, data, loss, model_device(vnet), model_dtype(vnet))


def train_ibvi(
    vnet: VariationalModel,
    train_set: Any,
    config: IBVIConfig | None = None,
    *,
    val_set: Any | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> IBVIResult:
    """Minimise the MC expected loss (1/N) Σ_n E_q ℓ(y_n, f(w, x_n)) by minibatch steps; no KL.

    ``train_set``/``val_set``: a DataLoader or re-iterable of batches, or a Dataset
    (batched by ``config.batch_size``, shuffled by (seed, epoch); validation in order).
    Batches follow ``vnet``'s device and dtype. The steps run with ``vnet`` in train mode
    (dropout fires, BatchNorm uses batch statistics and updates its running statistics);
    the validation loss and accuracy of the mean network are taken in eval mode, and the
    caller's train/eval flags of ``vnet`` and every submodule are restored at the end.
    With ``checkpoint`` the state (μ, S, the optimizer, the history) is saved atomically
    after every epoch; with ``resume`` training continues from that file and, as every
    epoch reseeds its noise from (seed, epoch), ends with the uninterrupted run's weights.
    """
    config = config or IBVIConfig()
    config.validate()
    loader = as_loader(
        train_set, config.batch_size, shuffle=True, seed=config.seed, what="train_set"
    )
    val_loader = None if val_set is None else as_loader(val_set, EVAL_BATCH, what="val_set")
    optimizer = make_optimizer(vnet, config)
    saves = EpochCheckpoints(checkpoint, "ibvi", asdict(config), RESUME_SETTINGS)
    result = IBVIResult()
    if resume:
        result.resumed_from, result.history = saves.restore(vnet, optimizer)
    S.broadcast_tensors_([*vnet.parameters(), *vnet.buffers()])  # rank 0's weights (W > 1)
    flags = [(m, m.training) for m in vnet.modules()]
    vnet.train()
    try:
        return _train_epochs(vnet, loader, config, optimizer, val_loader, result, saves)
    finally:
        for m, flag in flags:
            m.training = flag


def _train_epochs(
    vnet: VariationalModel,
    loader: Any,
    config: IBVIConfig,
    optimizer: torch.optim.Optimizer,
    val_loader: Any | None,
    result: IBVIResult,
    saves: EpochCheckpoints,
) -> IBVIResult:
    """The epoch loop of :func:`train_ibvi` (``vnet`` already in train mode), from ``result.resumed_from``."""
    device, dtype = model_device(vnet), model_dtype(vnet)
    steps_per_epoch = n_batches(loader)
    total_steps = steps_per_epoch * config.epochs
    bar = tqdm(
        range(result.resumed_from, config.epochs),
        desc="train IBVI",
        disable=not (config.progress and D.is_main()) or None,
        leave=False,
    )
    run_epoch = sliced_epoch if D.is_distributed() else minibatch_epoch
    for epoch in bar:
        # the weight noise of epoch e from its own stream, seeded (seed, e): a DataLoader's
        # iterator draws its seeds from torch's global one, so the noise must not
        noise = torch.Generator(device=device).manual_seed(config.seed * 100_019 + epoch)
        train_loss = run_epoch(
            optimizer,
            iter_batches(
                epoch_batches(loader, config.batch_size, config.seed, epoch), device, dtype
            ),
            lambda x, y, g=noise: vnet.expected_loss(
                x, y, n_samples=config.n_samples, loss=config.loss, generator=g
            ),
            lambda step, e=epoch: scheduled_lr(
                config.lr, e * steps_per_epoch + step, total_steps, config.schedule
            ),
            epoch,
            what="expected loss",
        )
        record = {"epoch": epoch + 1, "train_loss": train_loss}
        if val_loader is not None:
            metrics = mean_metrics(vnet, val_loader, config.loss)
            record |= {f"val_{k}_mean": v for k, v in metrics.items()}
        result.history.append(record)
        saves.save(vnet, optimizer, epoch + 1, result.history)
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
    return result


def sliced_epoch(
    optimizer: torch.optim.Optimizer,
    batches: Any,
    loss_fn: Any,
    lr_at: Any,
    epoch: int,
    what: str = "training loss",
) -> float:
    """``minibatch_epoch`` over ranks: each step uses ∇ = Σ_r (|B_r|/|B|) ∇ℓ_{B_r} of its global batch B; mean loss.

    Every rank must iterate the same global batches; rank r evaluates ``loss_fn`` on its
    rows B_r (a rank with no rows evaluates one row at weight 0, so the ranks draw alike).
    Divergence is judged on the all-reduced loss, so all ranks stop together.
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    total, count = 0.0, 0
    for step, (x, y) in enumerate(batches):
        base = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = base * group.get("lr_multiplier", 1.0)
        optimizer.zero_grad(set_to_none=True)
        n = n_examples(x)
        start, stop = S.rank_rows(n)
        weight = (stop - start) / n
        if start == stop:
            start, stop = 0, 1
        loss = loss_fn(slice_inputs(x, start, stop), y[start:stop])
        loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        present = [float(p.grad is not None) for p in params]
        reduced = S.all_reduce_weighted_(grads, weight, [weight * float(loss.detach()), *present])
        if not math.isfinite(reduced[0]):
            raise TrainingDivergedError(
                f"non-finite {what} at epoch {epoch + 1}, step {step + 1} "
                "(try a smaller learning rate)"
            )
        for p, g, k in zip(params, grads, reduced[1:], strict=True):
            p.grad = g if k > 0 else None
        optimizer.step()
        total += reduced[0] * n
        count += n
    return total / max(count, 1)
