"""``tacitbayes continual``: a task sequence with posterior-as-prior (docs/methods.md §4).

A single shared MLP with 10 outputs learns the tasks in order with each method of
:mod:`tacitbayes.experiments.continual.sequence` (``finetune``, ``diagonal``, ``kronecker``);
every method uses the same initialization, optimizer, epochs, batches and shuffles.

Sequences: ``split`` (default: 5 tasks of 2 classes, (0,1), (2,3), …, (8,9), or ``groups``)
and ``rotated`` (all classes, inputs rotated by ``angles``). Scenarios: ``task``
(task-incremental, default: the task's identity is known, so on task t the network is
trained and evaluated on the logits of task t's classes only, a multi-head set-up on one
shared output layer) and ``class`` (class-incremental: one softmax over all outputs, in
training and evaluation). For a rotated sequence both scenarios are the same (every task has
every class: domain-incremental).

Prior strength β (``strengths``): for ``diagonal`` and ``kronecker`` the whole sequence is run
once per β of the grid and the β with the best mean validation accuracy over all tasks after
the last task is kept (validation splits only, the same grid and rule for both methods; the
test matrices of every β are reported too). δ, the isotropic prior precision (the weight decay
δ/N_t of plain training), is fixed and shared by all methods.

Metrics on the accuracy matrix R (R[i][j] = test accuracy on task i after training task j,
T tasks): average accuracy (1/T) Σ_i R[i][T−1]; forgetting (1/(T−1)) Σ_{i<T−1}
(max_{i≤j<T−1} R[i][j] − R[i][T−1]) (Chaudhry et al. 2018, the maximum over the models that had
seen task i); backward transfer (1/(T−1)) Σ_{i<T−1} (R[i][T−1] − R[i][i]) (Lopez-Paz & Ranzato 2017).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from tacitbayes.data import Task, load_dataset, rotated_tasks, split_tasks
from tacitbayes.devices import check_device
from tacitbayes.errors import InputError
from tacitbayes.experiments.checks import check_choice, check_positive_ints, check_positive_numbers
from tacitbayes.experiments.continual.report import write_outputs
from tacitbayes.experiments.continual.sequence import DIAGONAL_CURVATURES, METHODS, run_sequence
from tacitbayes.experiments.runtime import torch_threads, versions
from tacitbayes.io import check_output_dir
from tacitbayes.models import build_model
from tacitbayes.search import check_grid_edge
from tacitbayes.training import TrainConfig

DATASETS = ("digits", "fashion-mnist")
SEQUENCES = ("split", "rotated")
SCENARIOS = ("task", "class")
MODELS = ("mlp",)
SPLIT_GROUPS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
ANGLES = (0.0, 30.0, 60.0, 90.0, 120.0)
STRENGTHS = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6)
N_CLASSES = 10  # digits and fashion-mnist: one output per class
GRID_KEYS = (
    "strength",
    "val_average_accuracy",
    "average_accuracy",
    "forgetting",
    "backward_transfer",
)
DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 20, "batch_size": 32, "width": 128},
    "fashion-mnist": {"epochs": 3, "batch_size": 128, "width": 256},
}


@dataclass
class ContinualSettings:
    """Everything that defines one ``continual`` run (None: a per-dataset default, see DEFAULTS)."""

    dataset: str = "digits"
    sequence: str = "split"
    scenario: str = "task"
    model: str = "mlp"
    width: int | None = None
    depth: int = 2
    activation: str = "relu"
    methods: tuple[str, ...] = METHODS
    groups: tuple[tuple[int, ...], ...] | None = None
    angles: tuple[float, ...] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 1e-3
    strengths: tuple[float, ...] = STRENGTHS
    delta: float = 1.0
    diagonal_curvature: str = "exact"
    n_train: int | None = None
    seed: int = 0
    threads: int | None = 1
    device: str = "cpu"  # where the network and data live: cpu, cuda, cuda:N or mps
    data_dir: str | None = None
    out: str | None = None
    progress: bool = True

    def resolved(self) -> ContinualSettings:
        """A copy with every default filled in and every value checked (InputError otherwise)."""
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("sequence", self.sequence, SEQUENCES)
        check_choice("scenario", self.scenario, SCENARIOS)
        check_choice("model", self.model, MODELS)
        check_choice("diagonal curvature", self.diagonal_curvature, DIAGONAL_CURVATURES)
        if not self.methods:
            raise InputError(f"give at least one method; available: {', '.join(METHODS)}")
        for m in self.methods:
            check_choice("method", m, METHODS)
        if len(set(self.methods)) != len(self.methods):
            raise InputError(f"methods must be distinct, got {list(self.methods)}")
        if self.sequence == "split" and self.angles is not None:
            raise InputError("angles apply to the rotated sequence; use groups for a split one")
        if self.sequence == "rotated" and self.groups is not None:
            raise InputError("groups apply to the split sequence; use angles for a rotated one")
        base = DEFAULTS[self.dataset]
        s = replace(self)
        s.width = self.width if self.width is not None else base["width"]
        s.epochs = self.epochs if self.epochs is not None else base["epochs"]
        s.batch_size = self.batch_size if self.batch_size is not None else base["batch_size"]
        if self.sequence == "split":
            s.groups = self.groups if self.groups is not None else SPLIT_GROUPS
        else:
            s.angles = self.angles if self.angles is not None else ANGLES
        check_positive_ints(s, "width", "depth", "epochs", "batch_size")
        check_positive_numbers(s, "lr", "delta", "strengths")
        check_positive_ints(s, "threads", optional=True)
        check_device(s.device)
        return s

    def train_config(self) -> TrainConfig:
        """Optimizer settings shared by every task and method (no weight decay: δ is a prior)."""
        assert self.epochs is not None and self.batch_size is not None
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=0.0,
            seed=self.seed,
            progress=self.progress,
        )


def average_accuracy(matrix: list[list[float]]) -> float:
    """(1/T) Σ_i R[i][T−1]: mean accuracy over all tasks after the last task."""
    last = len(matrix) - 1
    return sum(row[last] for row in matrix) / len(matrix)


def forgetting(matrix: list[list[float]]) -> float | None:
    """(1/(T−1)) Σ_{i<T−1} (max_{i≤j<T−1} R[i][j] − R[i][T−1]); None for a single task."""
    last = len(matrix) - 1
    if last == 0:
        return None
    drops = [max(matrix[i][i:last]) - matrix[i][last] for i in range(last)]
    return sum(drops) / last


def backward_transfer(matrix: list[list[float]]) -> float | None:
    """(1/(T−1)) Σ_{i<T−1} (R[i][T−1] − R[i][i]); None for a single task."""
    last = len(matrix) - 1
    if last == 0:
        return None
    return sum(matrix[i][last] - matrix[i][i] for i in range(last)) / last


def seen_average(matrix: list[list[float]]) -> list[float]:
    """[(1/(j+1)) Σ_{i≤j} R[i][j] for each j]: mean accuracy over the tasks seen so far."""
    return [sum(matrix[i][j] for i in range(j + 1)) / (j + 1) for j in range(len(matrix))]


def summarize(matrix: list[list[float]]) -> dict[str, Any]:
    """Average accuracy, forgetting, backward transfer and the seen-task curve of one matrix."""
    n = len(matrix)
    if n == 0 or any(len(row) != n for row in matrix):
        raise InputError(f"the accuracy matrix must be square and non-empty, got {n} rows")
    return {
        "average_accuracy": average_accuracy(matrix),
        "forgetting": forgetting(matrix),
        "backward_transfer": backward_transfer(matrix),
        "seen_average": seen_average(matrix),
    }


def build_tasks(s: ContinualSettings) -> list[Task]:
    """The task sequence of the settings, on its device (InputError for bad groups or angles)."""
    bundle = load_dataset(s.dataset, s.data_dir, n_train=s.n_train, seed=s.seed, ood=False)
    if s.sequence == "split":
        tasks = split_tasks(bundle, s.groups or SPLIT_GROUPS)
    else:
        tasks = rotated_tasks(bundle, s.angles or ANGLES)
    return [task.to(s.device) for task in tasks]


def _one_run(
    method: str, strength: float, init: torch.nn.Module, tasks: list[Task], s: ContinualSettings
) -> dict[str, Any]:
    net = build_model(
        s.model, init.input_shape, N_CLASSES, width=s.width, depth=s.depth, activation=s.activation
    )
    net.load_state_dict(init.state_dict())
    net.to(s.device)
    desc = method if method == "finetune" else f"{method} β={strength:g}"
    run = run_sequence(
        method,
        net,
        tasks,
        s.train_config(),
        n_classes=N_CLASSES,
        strength=strength,
        delta=s.delta,
        masked=s.scenario == "task",
        diagonal_curvature=s.diagonal_curvature,
        desc=desc,
    )
    return {
        "strength": None if method == "finetune" else strength,
        "accuracy_matrix": run["test"],
        "val_matrix": run["val"],
        **summarize(run["test"]),
        "val_average_accuracy": average_accuracy(run["val"]),
        "train_seconds": run["train_seconds"],
        "curvature_seconds": run["curvature_seconds"],
    }


def run_method(
    method: str, init: torch.nn.Module, tasks: list[Task], s: ContinualSettings
) -> dict[str, Any]:
    """One method over the sequence; for a prior, one run per β, keeping the best on validation."""
    if method == "finetune":
        return {**_one_run(method, 0.0, init, tasks, s), "grid": [], "curvature": None}
    runs = [_one_run(method, beta, init, tasks, s) for beta in s.strengths]
    best = max(runs, key=lambda r: r["val_average_accuracy"])  # first on ties
    grid = [{k: r[k] for k in GRID_KEYS} for r in runs]
    curvature = "KFAC (summed loss)" if method == "kronecker" else None
    if method == "diagonal":
        curvature = (
            "exact GGN diagonal" if s.diagonal_curvature == "exact" else "diagonal of KFAC"
        ) + " (summed loss)"
    edge = check_grid_edge(
        f"{method} prior strength β",
        s.strengths,
        best["strength"],
        low="the prior may be too weak to stop forgetting",
        high="the prior may be too strong to learn the new tasks",
    )
    return {**best, "grid": grid, "curvature": curvature, "searches": {"strength": edge}}


def run_continual(settings: ContinualSettings) -> dict[str, Any]:
    """Run every method over the sequence; write results.json, report.md and the heat-maps."""
    s = settings.resolved()
    with torch_threads(s.threads):
        return _run(s)


def _run(s: ContinualSettings) -> dict[str, Any]:
    out = check_output_dir(s.out or f"runs/continual-{time.strftime('%Y%m%d-%H%M%S')}")
    tasks = build_tasks(s)
    torch.manual_seed(s.seed)
    init = build_model(
        s.model, tasks[0].train.tensors[0].shape[1:], N_CLASSES,
        width=s.width, depth=s.depth, activation=s.activation,
    )  # fmt: skip
    methods = {}
    for method in s.methods:
        start = time.perf_counter()
        methods[method] = run_method(method, init, tasks, s)
        methods[method]["seconds"] = time.perf_counter() - start
    results = {
        "dataset": s.dataset,
        "sequence": s.sequence,
        "scenario": s.scenario,
        "model": s.model,
        "model_options": {"width": s.width, "depth": s.depth, "activation": s.activation},
        "n_params": sum(p.numel() for p in init.parameters()),
        "device": str(check_device(s.device)),
        "tasks": [{"name": t.name, "classes": list(t.classes), **t.sizes()} for t in tasks],
        "selection": "prior strength β: best mean validation accuracy over all tasks after the "
        "last task, over the grid `strengths` (same grid and rule for every prior)",
        "methods": methods,
        "settings": asdict(s),
        "versions": versions(),
    }
    write_outputs(results, out)
    results["out"] = str(out)
    return results
