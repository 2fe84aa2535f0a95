"""MAP training under a prior: minimise (1/N) Σ_n ℓ_n + penalty_P(θ)/N (the negative log posterior / N)."""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from tacitbayes.batches import as_loader, call_model, count_examples, iter_batches, n_batches
from tacitbayes.devices import model_device, model_dtype
from tacitbayes.errors import TrainingDivergedError
from tacitbayes.training import TrainConfig, epoch_batches, scheduled_lr

__all__ = ["train_with_prior"]


class Penalized(Protocol):
    """Anything with ``penalty(model)`` = −log p(θ) + const (e.g. a KroneckerGaussian)."""

    def penalty(self, model: nn.Module) -> Tensor: ...


def train_with_prior(model: nn.Module, data: Any, prior: Penalized, config: TrainConfig) -> None:
    """Adam on (1/N) Σ_n ℓ_n + penalty_P(θ)/N, the MAP under the prior, with train_map's schedule.

    Cross-entropy loss; ``config.weight_decay`` is not used (the prior is the regulariser).
    ``data``: a DataLoader or re-iterable of batches, or a Dataset (batched by
    ``config.batch_size``, shuffled by (seed, epoch): :func:`tacitbayes.batches.as_loader`).
    """
    config.validate()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    loader = as_loader(data, config.batch_size, shuffle=True, seed=config.seed, what="data")
    n, steps = count_examples(loader), n_batches(loader)
    device, dtype = model_device(model), model_dtype(model)
    bar = tqdm(
        range(config.epochs),
        desc="train MAP (prior)",
        disable=not config.progress or None,
        leave=False,
    )
    for epoch in bar:
        model.train()
        batches = epoch_batches(loader, config.batch_size, config.seed, epoch)
        for step, (x, y) in enumerate(iter_batches(batches, device, dtype)):
            for group in opt.param_groups:
                group["lr"] = scheduled_lr(config.lr, epoch * steps + step, config.epochs * steps)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(call_model(model, x), y) + prior.penalty(model) / n
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"non-finite loss at epoch {epoch + 1}, step {step + 1} (try a smaller lr)"
                )
            loss.backward()
            opt.step()
    model.eval()
