"""Small, plain ``nn.Module`` image classifiers and VAEs, and a registry to build them by name.

Every model takes ``input_shape=(C, H, W)`` and ``n_classes`` first. The classifiers
map a float batch of shape (N, C, H, W) to logits of shape (N, n_classes). None couples
the examples of a batch (no BatchNorm, no dropout), so train and eval mode compute the
same function and per-example ``torch.func`` transforms apply.

The variational autoencoders ``vae_mlp`` and ``vae_conv`` (:class:`VAE`; ``n_classes``
is ignored) map a batch to its per-example negative ELBO, shape (N,), and train with
``TrainConfig(loss="model_loss")``; their training-mode forward samples the latent code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from tacitbayes.errors import InputError
from tacitbayes.models.lenet import LeNet
from tacitbayes.models.mlp import MLP
from tacitbayes.models.resnet import ResNet
from tacitbayes.models.vae import VAE, vae_conv, vae_mlp
from tacitbayes.models.vit import ViT

__all__ = ["MLP", "VAE", "LeNet", "ResNet", "ViT", "available_models", "build_model"]

# name -> a model class or a builder function, called as f(input_shape, n_classes, **options)
_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "lenet": LeNet,
    "resnet": ResNet,
    "vit": ViT,
    "vae_mlp": vae_mlp,
    "vae_conv": vae_conv,
}


def available_models() -> list[str]:
    """Return the sorted names accepted by :func:`build_model`."""
    return sorted(_REGISTRY)


def _options_of(builder: Callable[..., nn.Module]) -> list[str]:
    """Return the keyword options of a model class or builder (all but input_shape, n_classes)."""
    params = inspect.signature(builder).parameters
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
    builder = _REGISTRY[key]
    accepted = _options_of(builder)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for model {key!r}; accepted: {', '.join(accepted)}"
        )
    return builder(input_shape, n_classes, **options)
