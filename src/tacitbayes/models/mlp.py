"""Multilayer perceptron, plus the option checks shared by every model in the package.

The checks live here (and not in ``tacitbayes.models``) so each model module can use
them without importing the package that imports it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

from torch import nn

from tacitbayes.errors import InputError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def make_activation(name: str) -> nn.Module:
    """Return a new activation module for ``name`` (one of :data:`ACTIVATIONS`)."""
    if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
        raise InputError(
            f"unknown activation {name!r}; available: {', '.join(sorted(ACTIVATIONS))}"
        )
    return ACTIVATIONS[name.lower()]()


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as an int, raising InputError unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_positive_float(name: str, value: object) -> float:
    """Return ``value`` as a float, raising InputError unless it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, Real) or not (0 < value < math.inf):
        raise InputError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_input_shape(input_shape: object) -> tuple[int, int, int]:
    """Return ``input_shape`` as a (channels, height, width) tuple of positive ints."""
    ok = (
        isinstance(input_shape, Sequence)
        and not isinstance(input_shape, str)
        and len(input_shape) == 3
        and all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 1 for v in input_shape)
    )
    if not ok:
        raise InputError(
            f"input_shape must be (channels, height, width) of positive ints, got {input_shape!r}"
        )
    c, h, w = (int(v) for v in input_shape)  # type: ignore[union-attr]
    return c, h, w


class MLP(nn.Sequential):
    """Fully connected classifier: flatten, ``depth`` hidden layers of ``width`` units, linear logits.

    It is an :class:`nn.Sequential`, so parameter names are the layer indices:
    index 0 is the ``Flatten``, hidden Linear ``i`` (0-based) is at index ``2*i + 1``
    (its activation at ``2*i + 2``) and the output Linear is at index ``2*depth + 1``.
    The default 784-512-512-10 network has ``1.weight, 1.bias, 3.weight, 3.bias,
    5.weight, 5.bias``.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        n_classes: int,
        width: int = 512,
        depth: int = 2,
        activation: str = "relu",
    ) -> None:
        c, h, w = check_input_shape(input_shape)
        n_classes = check_positive_int("n_classes", n_classes)
        width = check_positive_int("width", width)
        depth = check_positive_int("depth", depth)
        make_activation(activation)  # validate before building anything
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = c * h * w
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), make_activation(activation)]
            fan_in = width
        layers.append(nn.Linear(fan_in, n_classes))
        super().__init__(*layers)
        self.input_shape = (c, h, w)
        self.n_classes = n_classes
