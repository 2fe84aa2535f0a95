"""Small ResNet with GroupNorm for 8x8 and 28x28 images.

It has no BatchNorm on purpose: in train mode BatchNorm normalises with statistics
of the whole batch, so one example's output depends on the others. That coupling
breaks per-example functions (``torch.func.vmap`` over examples, per-example
gradients and Jacobians) and makes the Gauss-Newton/Fisher curvature of a batch
differ from the sum of per-example terms; in eval mode it adds running buffers that
must be kept in sync. GroupNorm normalises each example on its own, identically in
train and eval mode, so the network is a plain function of (parameters, one input).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Integral

import torch
from torch import nn

from tacitbayes.errors import InputError
from tacitbayes.models.mlp import check_input_shape, check_positive_int, make_activation

NORMS = ("group", "batch")


class BasicBlock(nn.Module):
    """Residual block: act(GN(conv3x3(act(GN(conv3x3(x))))) + shortcut(x))."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        norm: Callable[[int], nn.Module],
        activation: str,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm(out_ch)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = norm(out_ch)
        self.act2 = make_activation(activation)
        self.shortcut: nn.Module
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                norm(out_ch),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output for a batch ``x`` of shape (N, in_ch, H, W)."""
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with GroupNorm: conv stem, residual stages, global average pool, Linear head.

    There is one stage of ``blocks`` basic blocks per entry of ``channels``; the first
    block of every stage after the first downsamples with stride 2 and a 1x1
    projection shortcut. Works for inputs as small as 1x1 (8x8 becomes 8 -> 4 -> 2).

    Parameter names: ``stem.0.weight`` (3x3 conv), ``stem.1.{weight,bias}`` (GroupNorm),
    ``stages.<s>.<b>.{conv1,norm1,conv2,norm2}.*`` for block ``b`` of stage ``s``,
    ``stages.<s>.0.shortcut.{0,1}.*`` for projections, and ``head.{weight,bias}``.
    Convolutions have no bias (a GroupNorm with affine shift follows each).
    ``norm="batch"`` uses BatchNorm2d instead (the common ResNet; in eval mode it
    normalises with running statistics, so every posterior sees a per-example function).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        n_classes: int,
        channels: Sequence[int] = (16, 32, 64),
        blocks: int = 2,
        norm_groups: int = 8,
        activation: str = "relu",
        norm: str = "group",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise InputError(f"unknown norm {norm!r}; available: {', '.join(NORMS)}")
        c, h, w = check_input_shape(input_shape)
        n_classes = check_positive_int("n_classes", n_classes)
        blocks = check_positive_int("blocks", blocks)
        norm_groups = check_positive_int("norm_groups", norm_groups)
        make_activation(activation)
        if (
            isinstance(channels, str)
            or not isinstance(channels, Sequence)
            or len(channels) == 0
            or not all(
                isinstance(k, Integral) and not isinstance(k, bool) and k >= 1 for k in channels
            )
        ):
            raise InputError(
                f"channels must be a non-empty sequence of positive ints, got {channels!r}"
            )
        chans = tuple(int(k) for k in channels)
        if norm == "group" and any(k % norm_groups for k in chans):
            raise InputError(
                f"norm_groups={norm_groups} must divide every entry of channels={chans}"
            )
        groups = norm_groups

        def make_norm(ch: int) -> nn.Module:
            return nn.GroupNorm(groups, ch) if norm == "group" else nn.BatchNorm2d(ch)

        self.stem = nn.Sequential(
            nn.Conv2d(c, chans[0], 3, padding=1, bias=False),
            make_norm(chans[0]),
            make_activation(activation),
        )
        stages: list[nn.Module] = []
        in_ch = chans[0]
        for s, out_ch in enumerate(chans):
            stage = [
                BasicBlock(
                    in_ch if b == 0 else out_ch,
                    out_ch,
                    2 if (s > 0 and b == 0) else 1,
                    make_norm,
                    activation,
                )
                for b in range(blocks)
            ]
            stages.append(nn.Sequential(*stage))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_ch, n_classes)
        self.input_shape = (c, h, w)
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, n_classes) for images ``x`` of shape (N, C, H, W)."""
        features = self.stages(self.stem(x))
        return self.head(features.mean(dim=(-2, -1)))
