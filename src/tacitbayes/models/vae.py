"""Variational autoencoders: a Gaussian encoder, a N(0, I) prior and a Bernoulli decoder.

The data sets of :mod:`tacitbayes.data` are standardised, x = (x01 − mean)/std with x01
in [0, 1]: the encoder reads x as given and the decoder's Bernoulli likelihood scores
x01 = clamp(x·std + mean, 0, 1), so a VAE trains on a :class:`~tacitbayes.data.DataBundle`
as it is (give it the bundle's ``mean`` and ``std``). ``forward(x)`` is the per-example
negative ELBO, so :func:`tacitbayes.training.train_map` trains it with
``TrainConfig(loss="model_loss")``: z is sampled (z = μ + σ·ε) in training mode and is
z = μ in eval mode, where the loss is a deterministic function of the weights.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tacitbayes.errors import InputError
from tacitbayes.models.mlp import check_input_shape, check_positive_int, make_activation

__all__ = ["VAE", "vae_conv", "vae_mlp"]


def _check_finite(name: str, value: object) -> float:
    """Return ``value`` as a float, raising InputError unless it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_std(std: object) -> float:
    """Return ``std`` as a float, raising InputError unless it is a finite number > 0."""
    if isinstance(std, bool) or not isinstance(std, Real) or not (0 < std < math.inf):
        raise InputError(
            f"std must be a finite number > 0 (the data's standard deviation), got {std!r}"
        )
    return float(std)


class VAE(nn.Module):
    """q(z|x) = N(μ(x), diag exp(logvar(x))), p(z) = N(0, I), p(x01|z) = Bernoulli(σ(decode(z))).

    ``encoder`` maps a standardised batch (N, C, H, W) to (N, 2·latent_dim): μ then logvar;
    ``decoder`` maps z (N, latent_dim) to pixel logits (N, C, H, W). ``mean`` and ``std``
    are the data loader's standardisation (buffers, saved with the weights).
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        mean: float = 0.0,
        std: float = 1.0,
    ) -> None:
        super().__init__()
        self.input_shape = check_input_shape(input_shape)
        self._latent_dim = check_positive_int("latent_dim", latent_dim)
        self.encoder, self.decoder = encoder, decoder
        self.register_buffer("mean", torch.tensor(_check_finite("mean", mean)))
        self.register_buffer("std", torch.tensor(_check_std(std)))

    @property
    def latent_dim(self) -> int:
        """Dimension of the latent code z."""
        return self._latent_dim

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(μ(x), logvar(x)), each (N, latent_dim): the two halves of encoder(x)."""
        h = self.encoder(x)
        if h.shape[1:] != (2 * self._latent_dim,):
            raise InputError(
                f"the encoder must return (N, 2*latent_dim) = (N, {2 * self._latent_dim}), "
                f"got {tuple(h.shape)}"
            )
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits decoder(z), (N, C, H, W)."""
        return self.decoder(z)

    def targets(self, x: Tensor) -> Tensor:
        """Bernoulli targets x01 = clamp(x·std + mean, 0, 1) of a standardised batch."""
        return (x * self.std + self.mean).clamp(0.0, 1.0)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean reconstruction σ(decode(μ(x))) in [0, 1], (N, C, H, W)."""
        return torch.sigmoid(self.decode(self.encode(x)[0]))

    def generate(self, z: Tensor) -> Tensor:
        """Pixel probabilities σ(decode(z)) of latent codes z (e.g. z ~ N(0, I)), (N, C, H, W)."""
        return torch.sigmoid(self.decode(z))

    def negative_elbo(self, x: Tensor, sample: bool) -> Tensor:
        """−ELBO_n = Σ_pixels BCE(decode(z), x01) + ½ Σ_j (μ² + σ² − 1 − log σ²), (N,).

        z = μ + σ·ε with ε ~ N(0, I) from torch's global RNG when ``sample``, else z = μ.
        """
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
        logits = self.decode(z)
        target = self.targets(x)
        if logits.shape != target.shape:
            raise InputError(
                f"the decoder must return logits of the input's shape {tuple(target.shape)}, "
                f"got {tuple(logits.shape)}"
            )
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
        return bce.reshape(len(x), -1).sum(-1) + kl

    def forward(self, x: Tensor) -> Tensor:
        """Per-example −ELBO, (N,): z sampled in training mode, z = μ in eval mode."""
        return self.negative_elbo(x, sample=self.training)


def _flat_mlp(sizes: list[int], activation: str) -> list[nn.Module]:
    """Linear layers sizes[0] → … → sizes[-1], an activation between consecutive ones."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if i:
            layers.append(make_activation(activation))
        layers.append(nn.Linear(fan_in, fan_out))
    return layers


def vae_mlp(
    input_shape: tuple[int, int, int],
    n_classes: int | None = None,
    width: int = 512,
    latent: int = 16,
    depth: int = 1,
    activation: str = "relu",
    mean: float = 0.0,
    std: float = 1.0,
) -> VAE:
    """Fully connected VAE: D → width (× ``depth`` hidden layers) → 2·latent, and back to D.

    ``n_classes`` is ignored (a VAE has no classes; the registry passes it).
    """
    c, h, w = check_input_shape(input_shape)
    width = check_positive_int("width", width)
    latent = check_positive_int("latent", latent)
    depth = check_positive_int("depth", depth)
    make_activation(activation)
    hidden = [width] * depth
    encoder = nn.Sequential(nn.Flatten(), *_flat_mlp([c * h * w, *hidden, 2 * latent], activation))
    decoder = nn.Sequential(
        *_flat_mlp([latent, *hidden, c * h * w], activation), nn.Unflatten(1, (c, h, w))
    )
    return VAE((c, h, w), encoder, decoder, latent, mean=mean, std=std)


def vae_conv(
    input_shape: tuple[int, int, int],
    n_classes: int | None = None,
    channels: int = 32,
    latent: int = 16,
    activation: str = "relu",
    mean: float = 0.0,
    std: float = 1.0,
) -> VAE:
    """Convolutional VAE: two 4x4 stride-2 convs (channels, 2·channels) → Linear 2·latent; mirrored back.

    H and W must be divisible by 4 (e.g. 8x8 digits, 28x28 MNIST). ``n_classes`` is ignored.
    """
    c, h, w = check_input_shape(input_shape)
    channels = check_positive_int("channels", channels)
    latent = check_positive_int("latent", latent)
    make_activation(activation)
    if h % 4 or w % 4:
        raise InputError(
            f"vae_conv needs image height and width divisible by 4, got {h}x{w}; use vae_mlp"
        )
    inner = (2 * channels, h // 4, w // 4)
    flat = inner[0] * inner[1] * inner[2]
    encoder = nn.Sequential(
        nn.Conv2d(c, channels, kernel_size=4, stride=2, padding=1),
        make_activation(activation),
        nn.Conv2d(channels, 2 * channels, kernel_size=4, stride=2, padding=1),
        make_activation(activation),
        nn.Flatten(),
        nn.Linear(flat, 2 * latent),
    )
    decoder = nn.Sequential(
        nn.Linear(latent, flat),
        make_activation(activation),
        nn.Unflatten(1, inner),
        nn.ConvTranspose2d(2 * channels, channels, kernel_size=4, stride=2, padding=1),
        make_activation(activation),
        nn.ConvTranspose2d(channels, c, kernel_size=4, stride=2, padding=1),
    )
    return VAE((c, h, w), encoder, decoder, latent, mean=mean, std=std)
