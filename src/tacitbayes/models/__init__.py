"""Small, plain ``nn.Module`` image classifiers and a registry to build them by name.

Every model takes ``input_shape=(C, H, W)`` and ``n_classes`` first and maps a float
batch of shape (N, C, H, W) to logits of shape (N, n_classes). None couples the
examples of a batch (no BatchNorm, no dropout), so train and eval mode compute the
same function and per-example ``torch.func`` transforms apply.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from tacitbayes.errors import InputError
from tacitbayes.models.lenet import LeNet
from tacitbayes.models.mlp import MLP
from tacitbayes.models.resnet import ResNet
from tacitbayes.models.vit import ViT

__all__ = ["MLP", "LeNet", "ResNet", "ViT", "available_models", "build_model"]

_REGISTRY: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "lenet": LeNet,
    "resnet": ResNet,
    "vit": ViT,
}


def available_models() -> list[str]:
    """Return the sorted names accepted by :func:`build_model`."""
    return sorted(_REGISTRY)


def _options_of(cls: type[nn.Module]) -> list[str]:
    """Return the keyword options of a model constructor (all but input_shape, n_classes)."""
    params = inspect.signature(cls.__init__).parameters
    return sorted(p for p in params if p not in ("self", "input_shape", "n_classes"))


def build_model(
    name: str, input_shape: tuple[int, int, int], n_classes: int, **options: Any
) -> nn.Module:
    """Build the model registered as ``name`` for inputs of ``input_shape`` and ``n_classes`` outputs.

    Raises :class:`~tacitbayes.errors.InputError` for an unknown name, an unknown
    option or an option value the model cannot use.
    """
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in _REGISTRY:
        raise InputError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    cls = _REGISTRY[key]
    accepted = _options_of(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for model {key!r}; accepted: {', '.join(accepted)}"
        )
    return cls(input_shape, n_classes, **options)
