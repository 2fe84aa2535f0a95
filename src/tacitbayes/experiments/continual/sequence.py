"""One pass of a continual-learning method over a task sequence, with posterior-as-prior.

A single shared network with O outputs is trained on the tasks in order. On task t it
minimises

    (1/N_t) Σ_n ℓ(f_t(θ, x_n), y_n) + penalty_t(θ) / N_t,

ℓ the cross-entropy, f_t the task's view of the logits (:class:`TaskView`), and penalty_t
the negative log-density of the method's prior for task t:

* every method starts from the isotropic prior N(0, δ⁻¹I) (weight decay δ/N_t) on task 1;
* ``finetune`` keeps that prior on every task (plain training; the prior never learns);
* ``diagonal``: after task t the prior becomes N(θ_t, diag(δ + β Σ_{s≤t} F_s)⁻¹), F_s the
  diagonal of the summed-loss GGN of task s (online EWC with the GGN, see
  :mod:`tacitbayes.priors.diagonal`);
* ``kronecker``: after task t the prior becomes N(θ_t, (δI + β Σ_{s≤t} G_s ⊗ A_s)⁻¹) per
  layer, G_s ⊗ A_s the summed-loss KFAC block of task s (Schnaus et al. 2023,
  docs/methods.md §4, with α = 1); the penalty is exact for any number of Kronecker terms.

Curvature is taken at θ_t on task t's training data, for the loss the task was trained on
(the masked view in the task-incremental scenario). β (``strength``) tempers the likelihood's
curvature; β = 1 is the plain Laplace posterior.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from tacitbayes.curvature import KFAC
from tacitbayes.curvature.operators import ggn_diagonal
from tacitbayes.data import BatchLoader, Task
from tacitbayes.devices import model_device
from tacitbayes.errors import InputError
from tacitbayes.priors.diagonal import DiagonalGaussian
from tacitbayes.priors.kronecker_prior import KroneckerPrior
from tacitbayes.training import (
    TrainConfig,
    epoch_batches,
    evaluate_accuracy,
    learning_rate,
    make_optimizer,
    minibatch_epoch,
)

METHODS = ("finetune", "diagonal", "kronecker")
DIAGONAL_CURVATURES = ("exact", "kfac")
CURVATURE_BATCH = 256
DIAGONAL_CHUNK = 8  # examples per vmapped chunk of the exact GGN diagonal: fastest on a CPU


class Prior(Protocol):
    """Anything with the negative log-density penalty(model) of a Gaussian prior."""

    def penalty(self, model: nn.Module) -> Tensor:
        """½ (θ − μ)ᵀ Λ (θ − μ) at the model's weights."""
        ...


class TaskView(nn.Module):
    """f(x)[:, classes]: the shared network's logits restricted to one task's classes, in order."""

    def __init__(self, net: nn.Module, classes: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.task_classes = tuple(classes)
        self.register_buffer("classes", torch.tensor(classes, dtype=torch.long), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """The selected logits, shape (N, len(classes))."""
        return self.net(x).index_select(-1, self.classes)


def local_labels(dataset: TensorDataset, classes: tuple[int, ...]) -> TensorDataset:
    """The data set with each label y replaced by its position in ``classes`` (the view's target)."""
    x, y = dataset.tensors
    table = torch.full(
        (max(max(classes), int(y.max())) + 1,), -1, dtype=torch.long, device=y.device
    )
    table[torch.tensor(classes, device=y.device)] = torch.arange(len(classes), device=y.device)
    local = table[y]
    if bool((local < 0).any()):
        raise InputError("the data set holds labels outside the task's classes")
    return TensorDataset(x, local)


def _train_task(
    view: nn.Module,
    train: TensorDataset,
    prior: Prior,
    config: TrainConfig,
    task_index: int,
) -> None:
    """Minimise mean CE + penalty/N on one task (the config's optimizer; its schedule spans the task)."""
    optimizer = make_optimizer(view, config)
    n = len(train)
    steps_per_epoch = -(-n // config.batch_size)
    total = steps_per_epoch * config.epochs
    view.train()
    for epoch in range(config.epochs):
        # epoch index continues over the tasks, so every task gets its own shuffles
        batches = epoch_batches(
            train, config.batch_size, config.seed, task_index * config.epochs + epoch
        )
        minibatch_epoch(
            optimizer,
            batches,
            lambda x, y: F.cross_entropy(view(x), y) + prior.penalty(view) / n,
            lambda step, e=epoch: learning_rate(config, e * steps_per_epoch + step, total),
            epoch,
            what=f"training loss on task {task_index + 1}",
            advice="try a smaller learning rate or prior strength",
        )
    view.eval()


def _posterior(
    method: str,
    learned: Any,
    view: nn.Module,
    train: TensorDataset,
    strength: float,
    delta: float,
    diagonal_curvature: str,
) -> Any:
    """The Laplace posterior at the current weights after a task: the next task's prior.

    ``learned`` is the previous posterior (None after the first task, whose prior N(0, δ⁻¹I)
    enters as the δ term).
    """
    loader = BatchLoader(train, CURVATURE_BATCH)
    if method == "kronecker":
        kfac = KFAC(view, "cross_entropy", loader, reduction="sum")
        if learned is None:
            return KroneckerPrior.from_kfac(kfac, view, alpha=1.0, beta=strength, delta=delta)
        return learned.with_curvature(kfac, view, scale=strength)
    if diagonal_curvature == "exact":
        diag = ggn_diagonal(
            view, "cross_entropy", loader, reduction="sum", chunk_size=DIAGONAL_CHUNK
        )
    else:
        diag = KFAC(view, "cross_entropy", loader, reduction="sum").diagonal()
    if learned is None:
        return DiagonalGaussian.from_curvature(diag, view, strength=strength, delta=delta)
    return learned.with_curvature(diag, view, scale=strength)


def run_sequence(
    method: str,
    net: nn.Module,
    tasks: list[Task],
    config: TrainConfig,
    *,
    n_classes: int,
    strength: float,
    delta: float,
    masked: bool,
    diagonal_curvature: str = "exact",
    desc: str = "",
) -> dict[str, Any]:
    """Train ``net`` in place over ``tasks``; R[i][j] = accuracy on task i after task j (test, val).

    The tasks' data must be on ``net``'s device (see :meth:`Task.to`).

    ``masked``: the task-incremental scenario (train and evaluate on the task's logits only);
    otherwise one head over all outputs (class-incremental).
    """
    all_classes = tuple(range(n_classes))
    device = model_device(net)
    views = [TaskView(net, task.classes if masked else all_classes).to(device) for task in tasks]
    data = {
        split: [
            local_labels(getattr(task, split), v.task_classes)
            for task, v in zip(tasks, views, strict=True)
        ]
        for split in ("train", "val", "test")
    }
    n_tasks = len(tasks)
    test = [[0.0] * n_tasks for _ in range(n_tasks)]
    val = [[0.0] * n_tasks for _ in range(n_tasks)]
    base = DiagonalGaussian.isotropic(views[0], delta)
    learned = None
    train_seconds = curvature_seconds = 0.0
    bar = tqdm(
        range(n_tasks), desc=desc or method, disable=not config.progress or None, leave=False
    )
    for t in bar:
        start = time.perf_counter()
        _train_task(views[t], data["train"][t], learned if learned is not None else base, config, t)
        train_seconds += time.perf_counter() - start
        for i in range(n_tasks):
            test[i][t] = evaluate_accuracy(views[i], data["test"][i])
            val[i][t] = evaluate_accuracy(views[i], data["val"][i])
        if method != "finetune" and t < n_tasks - 1:
            start = time.perf_counter()
            learned = _posterior(
                method, learned, views[t], data["train"][t], strength, delta, diagonal_curvature
            )
            curvature_seconds += time.perf_counter() - start
        bar.set_postfix(seen_test=round(sum(test[i][t] for i in range(t + 1)) / (t + 1), 4))
    return {
        "test": test,
        "val": val,
        "train_seconds": train_seconds,
        "curvature_seconds": curvature_seconds,
    }
