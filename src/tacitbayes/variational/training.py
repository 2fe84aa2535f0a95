"""Train a ``VariationalModel`` by the expected loss alone (IBVI): no KL, the init is the prior."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from tacitbayes.data import minibatches
from tacitbayes.errors import InputError
from tacitbayes.training import epoch_batches, minibatch_epoch, scheduled_lr
from tacitbayes.variational.model import LOSSES, VariationalModel

__all__ = ["IBVIConfig", "IBVIResult", "train_ibvi"]

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


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
    """Per-epoch history of IBVI training."""

    history: list[dict[str, float]] = field(default_factory=list)


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
def mean_accuracy(vnet: VariationalModel, dataset: Dataset, batch_size: int = 1000) -> float:
    """Accuracy of the mean network f(μ, ·), in eval mode (the functional view)."""
    params = {n: p.detach() for n, p in vnet.model.named_parameters()}
    params = {n: params[n] for n in vnet.fmodel.param_names}
    correct = total = 0
    for x, y in minibatches(dataset, batch_size):
        correct += int((vnet.functional(params, x).argmax(-1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def train_ibvi(
    vnet: VariationalModel,
    train_set: Dataset,
    config: IBVIConfig | None = None,
    *,
    val_set: Dataset | None = None,
) -> IBVIResult:
    """Minimise the MC expected loss (1/N) Σ_n E_q ℓ(y_n, f(w, x_n)) by minibatch steps; no KL.

    The steps run with ``vnet`` in train mode (dropout fires, BatchNorm uses batch statistics
    and updates its running statistics); the validation accuracy is taken in eval mode, and
    the caller's train/eval flags of ``vnet`` and every submodule are restored at the end.
    """
    config = config or IBVIConfig()
    config.validate()
    optimizer = make_optimizer(vnet, config)
    flags = [(m, m.training) for m in vnet.modules()]
    vnet.train()
    try:
        return _train_epochs(vnet, train_set, config, optimizer, val_set)
    finally:
        for m, flag in flags:
            m.training = flag


def _train_epochs(
    vnet: VariationalModel,
    train_set: Dataset,
    config: IBVIConfig,
    optimizer: torch.optim.Optimizer,
    val_set: Dataset | None,
) -> IBVIResult:
    """The epoch loop of :func:`train_ibvi` (``vnet`` already in train mode)."""
    steps_per_epoch = -(-len(train_set) // config.batch_size)  # type: ignore[arg-type]
    total_steps = steps_per_epoch * config.epochs
    result = IBVIResult()
    bar = tqdm(
        range(config.epochs), desc="train IBVI", disable=not config.progress or None, leave=False
    )
    for epoch in bar:
        train_loss = minibatch_epoch(
            optimizer,
            epoch_batches(train_set, config.batch_size, config.seed, epoch),
            lambda x, y: vnet.expected_loss(x, y, n_samples=config.n_samples, loss=config.loss),
            lambda step, e=epoch: scheduled_lr(
                config.lr, e * steps_per_epoch + step, total_steps, config.schedule
            ),
            epoch,
            what="expected loss",
        )
        record = {"epoch": epoch + 1, "train_loss": train_loss}
        if val_set is not None:
            record["val_accuracy_mean"] = mean_accuracy(vnet, val_set)
        result.history.append(record)
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
    return result
