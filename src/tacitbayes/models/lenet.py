"""LeNet-5 style convolutional network for small greyscale images (8x8 digits, 28x28 MNIST)."""

from __future__ import annotations

from torch import nn

from tacitbayes.errors import InputError
from tacitbayes.models.mlp import check_input_shape, check_positive_int, make_activation


class LeNet(nn.Sequential):
    """LeNet-5: two 5x5 conv + max-pool stages, then Linear 120 - 84 - ``n_classes``.

    Only ``Conv2d`` and ``Linear`` layers hold parameters (no normalisation), so
    Kronecker-factored curvature applies to every parameter. It is an
    :class:`nn.Sequential`; parameter names are the layer indices:

    ``0`` conv(C->6, 5x5, pad 2), ``1`` act, ``2`` maxpool 2,
    ``3`` conv(6->16, 5x5, pad 2), ``4`` act, ``5`` maxpool 2, ``6`` flatten,
    ``7`` Linear(16*(H//4)*(W//4) -> 120), ``8`` act, ``9`` Linear(120 -> 84), ``10`` act,
    ``11`` Linear(84 -> n_classes); e.g. ``0.weight``, ``3.bias``, ``11.weight``.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        n_classes: int,
        activation: str = "relu",
    ) -> None:
        c, h, w = check_input_shape(input_shape)
        n_classes = check_positive_int("n_classes", n_classes)
        make_activation(activation)
        if h < 4 or w < 4:
            raise InputError(f"lenet needs images of at least 4x4 pixels, got {h}x{w}")
        flat = 16 * (h // 2 // 2) * (w // 2 // 2)
        super().__init__(
            nn.Conv2d(c, 6, kernel_size=5, padding=2),
            make_activation(activation),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5, padding=2),
            make_activation(activation),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(flat, 120),
            make_activation(activation),
            nn.Linear(120, 84),
            make_activation(activation),
            nn.Linear(84, n_classes),
        )
        self.input_shape = (c, h, w)
        self.n_classes = n_classes
