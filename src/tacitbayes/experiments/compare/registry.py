"""The registry of methods that ``tacitbayes compare`` evaluates.

A method is a factory ``fit(ctx) -> Predictor``: it receives the trained MAP
network and the data, fits whatever it needs, and returns an object whose
``predict(x)`` gives class probabilities. Adding a method to ``compare`` is
one ``@register_method("name")`` on such a factory.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from tacitbayes import distributed as D
from tacitbayes.data import DataBundle
from tacitbayes.errors import InputError
from tacitbayes.training import TrainConfig


@dataclass
class FitContext:
    """Everything a method may use: the MAP network, the data and the run's settings.

    The network and the data are on ``device``; a method puts any network it builds there too.
    """

    model: nn.Module
    data: DataBundle
    train_config: TrainConfig
    model_name: str
    model_options: dict[str, Any] = field(default_factory=dict)
    n_samples: int = 32
    seed: int = 0
    progress: bool = True
    device: str | torch.device = "cpu"
    checkpoint_dir: Path | None = None  # where methods that train keep per-epoch checkpoints
    resume: bool = False  # continue those trainings from their checkpoints where present

    def training_checkpoint(self, name: str) -> tuple[Path | None, bool]:
        """(checkpoint file of method ``name``'s training, whether to resume from it)."""
        if self.checkpoint_dir is None:
            return None, False
        path = Path(self.checkpoint_dir) / f"{name}.pt"
        return path, self.resume and D.all_ranks_ok(path.is_file())


class Predictor(Protocol):
    """A fitted method: class probabilities for a batch of inputs, plus figures to report."""

    info: dict[str, Any]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of shape (len(x), n_classes)."""
        ...


MethodFactory = Callable[[FitContext], Predictor]
_REGISTRY: dict[str, MethodFactory] = {}
# Modules whose import registers more methods (one module per method family).
METHOD_MODULES: tuple[str, ...] = (
    "tacitbayes.experiments.compare.method_baselines",
    "tacitbayes.experiments.compare.method_projected",
    "tacitbayes.experiments.compare.method_laplace",
    "tacitbayes.experiments.compare.method_ibvi",
    "tacitbayes.experiments.compare.method_ivon",
)


def register_method(name: str) -> Callable[[MethodFactory], MethodFactory]:
    """Decorator that makes ``factory`` available to ``compare`` under ``name``."""

    def decorate(factory: MethodFactory) -> MethodFactory:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def _load_method_modules() -> None:
    for module in METHOD_MODULES:
        importlib.import_module(module)


def available_methods() -> list[str]:
    """Names of the registered methods, in registration order."""
    _load_method_modules()
    return list(_REGISTRY)


def get_method(name: str) -> MethodFactory:
    """The factory registered under ``name``; InputError listing the names otherwise."""
    _load_method_modules()
    if name not in _REGISTRY:
        raise InputError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    return _REGISTRY[name]


class NetworkPredictor:
    """Softmax of a deterministic network's logits."""

    def __init__(self, model: nn.Module, info: dict[str, Any] | None = None) -> None:
        self.model = model
        self.info = info or {}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(f(θ, x))."""
        self.model.eval()
        return torch.softmax(self.model(x), dim=-1)


@register_method("map")
def fit_map(ctx: FitContext) -> Predictor:
    """The trained network itself (the maximum a posteriori weights)."""
    return NetworkPredictor(ctx.model)
