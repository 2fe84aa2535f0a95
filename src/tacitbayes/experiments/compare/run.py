"""``tacitbayes compare``: train MAP once, fit each method, evaluate all, write the report.

``format_table`` and ``search_notes`` (re-exported) live in :mod:`compare_report`.
"""

from __future__ import annotations

__all__ = ["CompareSettings", "format_table", "run_compare", "search_notes"]

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from tacitbayes.checkpoints import load_checkpoint, model_weights
from tacitbayes.data import DataBundle, load_dataset
from tacitbayes.devices import check_device
from tacitbayes.errors import InputError
from tacitbayes.experiments.compare.evaluate import evaluate_predictor, evaluate_train
from tacitbayes.experiments.compare.registry import FitContext, available_methods, get_method
from tacitbayes.experiments.compare.report import format_table, search_notes, write_outputs
from tacitbayes.experiments.compare.verdicts import map_distance
from tacitbayes.experiments.runtime import torch_threads, versions
from tacitbayes.io import check_output_dir
from tacitbayes.models import VAE, build_model
from tacitbayes.training import TrainConfig, train_map

DEFAULT_EPOCHS = {"digits": 30, "fashion-mnist": 10, "mnist": 10}


@dataclass
class CompareSettings:
    """Everything that defines one ``compare`` run."""

    dataset: str = "digits"
    model: str = "mlp"
    methods: tuple[str, ...] = ("all",)  # "all": every registered method
    epochs: int | None = None
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    n_samples: int = 32
    n_train: int | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    ood_data_dir: str | None = None
    checkpoint: str | None = None
    resume: bool = False
    out: str | None = None
    progress: bool = True
    threads: int | None = None  # torch CPU threads for the run (None: torch's own setting)
    device: str = "cpu"  # where the model and data live: cpu, cuda, cuda:N or mps

    def train_config(self) -> TrainConfig:
        """The MAP training settings of this run."""
        epochs = self.epochs if self.epochs is not None else DEFAULT_EPOCHS.get(self.dataset, 10)
        return TrainConfig(
            epochs=epochs,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr=self.lr,
            weight_decay=self.weight_decay,
            seed=self.seed,
            progress=self.progress,
        )


def _load_weights(model: torch.nn.Module, path: str) -> None:
    """Load MAP weights (a training checkpoint or a state dict; tensors only) into ``model``."""
    weights = model_weights(load_checkpoint(path), model, path)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"checkpoint {path} does not fit this model: {exc}") from exc


def _prepare(
    settings: CompareSettings, device: torch.device
) -> tuple[DataBundle, torch.nn.Module, TrainConfig, list]:
    """Check every input before anything is written: data, model, methods, training settings.

    The data and the model (initialised, or loaded, on the CPU) are returned on ``device``.
    """
    names = list(settings.methods)
    if not names:
        raise InputError("no methods given")
    if "all" in names:
        for name in names:  # an unknown name beside "all" is still an error
            if name != "all":
                get_method(name)
        names = available_methods()
    factories = [(name, get_method(name)) for name in dict.fromkeys(names)]
    config = settings.train_config()
    config.validate()
    if settings.n_samples < 1:
        raise InputError(f"n_samples must be at least 1, got {settings.n_samples}")
    data = load_dataset(
        settings.dataset,
        settings.data_dir,
        seed=settings.seed,
        n_train=settings.n_train,
        ood_data_dir=settings.ood_data_dir,
    )
    torch.manual_seed(settings.seed)
    model = build_model(settings.model, data.input_shape, data.n_classes, **settings.model_options)
    if isinstance(model, VAE):
        raise InputError(
            f"compare evaluates classifiers; {settings.model} is a generative model: run "
            f"`tacitbayes generative --model {settings.model}`"
        )
    if settings.checkpoint is not None:
        _load_weights(model, settings.checkpoint)
    return data.to(device), model.to(device), config, factories


def run_compare(settings: CompareSettings) -> dict[str, Any]:
    """Train (or load) the MAP network, fit and evaluate each method, write results to ``out``."""
    if settings.threads is not None and settings.threads < 1:
        raise InputError(f"threads must be >= 1, got {settings.threads}")
    with torch_threads(settings.threads):
        return _run(settings)


def _run(settings: CompareSettings) -> dict[str, Any]:
    device = check_device(settings.device)
    out = check_output_dir(settings.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
    if settings.resume and settings.checkpoint is None and not (out / "map.pt").is_file():
        raise InputError(
            f"cannot resume: checkpoint {out / 'map.pt'} not found; run without --resume first"
        )
    data, model, config, factories = _prepare(settings, device)
    train_seconds = step_seconds = 0.0
    history: list[dict[str, float]] = []
    if settings.checkpoint is None:
        start = time.perf_counter()
        trained = train_map(
            model,
            data.train,
            config,
            val_set=data.val,
            checkpoint=out / "map.pt",
            resume=settings.resume,
            device=device,
        )
        train_seconds, history = time.perf_counter() - start, trained.history
        if trained.resumed_from == 0:  # a resumed run timed only part of its training
            step_seconds = trained.step_seconds
    model.eval()
    ctx = FitContext(
        model=model,
        data=data,
        train_config=config,
        model_name=settings.model,
        model_options=dict(settings.model_options),
        n_samples=settings.n_samples,
        seed=settings.seed,
        progress=settings.progress,
        device=device,
        checkpoint_dir=out,
        resume=settings.resume,
    )
    methods: dict[str, dict[str, Any]] = {}
    arrays: dict[str, dict[str, torch.Tensor]] = {}
    train_probs: dict[str, torch.Tensor] = {}
    for name, factory in tqdm(
        factories, desc="methods", disable=not settings.progress or None, leave=False
    ):
        torch.manual_seed(settings.seed)
        start = time.perf_counter()
        predictor = factory(ctx)
        fit_seconds = time.perf_counter() - start
        row, arrays[name] = evaluate_predictor(predictor, data)
        train_row, train_probs[name] = evaluate_train(predictor, data)
        row.update(train_row)
        row["fit_seconds"] = train_seconds if name == "map" else fit_seconds
        row.update(predictor.info)
        if name == "map" and step_seconds > 0:
            row["train_step_seconds"] = step_seconds
        elif "train_seconds" in row and step_seconds > 0:
            # vs MAP's optimisation steps (its per-epoch validation and checkpoints excluded)
            row["train_time_ratio"] = row["train_seconds"] / step_seconds
        methods[name] = row
    if "map" in arrays:
        for name, row in methods.items():
            row["map_distance"] = map_distance(arrays[name]["test"], arrays["map"]["test"])
            row["train_map_distance"] = map_distance(train_probs[name], train_probs["map"])
    results = {
        "dataset": data.name,
        "model": settings.model,
        "n_params": sum(p.numel() for p in model.parameters()),
        "ood_dataset": data.ood_name,
        "shift_angles": [f"{a:g}" for a in data.angles],
        "device": str(device),
        "n_train": len(data.train),
        "n_test": len(data.test),
        "train_history": history,
        "methods": methods,
        "settings": {k: v for k, v in asdict(settings).items()},
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
    }
    arrays["labels"] = {"test": data.test.tensors[1].cpu()}
    write_outputs(results, asdict(settings), arrays, out)
    results["out"] = str(out)
    return results
