"""Distribution shift by rotation (the R-MNIST / R-FMNIST protocol)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate (N, C, H, W) images by ``degrees`` counter-clockwise about the centre.

    Bilinear interpolation; pixels that come from outside the image are 0 (the
    background of raw [0, 1] images, so rotate before normalising).
    """
    if images.ndim != 4:
        raise ValueError(f"rotate expects (N, C, H, W) images, got shape {tuple(images.shape)}")
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    matrix = torch.tensor(
        [[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=images.dtype, device=images.device
    )
    grid = F.affine_grid(matrix.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
