"""Small Vision Transformer (pre-norm, mean pooling) for 8x8 and 28x28 images.

Attention is written as explicit matmul + softmax on ``nn.Linear`` projections,
so ``torch.func`` transforms (vmap, jvp, vjp over ``functional_call``) see only
ordinary differentiable ops.
"""

from __future__ import annotations

import torch
from torch import nn

from tacitbayes.errors import InputError
from tacitbayes.models.mlp import check_input_shape, check_positive_float, check_positive_int


class Attention(nn.Module):
    """Multi-head self-attention: softmax(q k^T / sqrt(d_head)) v, then a Linear projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return attention output for tokens ``x`` of shape (N, T, dim)."""
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (N, heads, T, d_head)
        weights = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(n, t, d)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output for tokens ``x`` of shape (N, T, dim)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer: patch embedding, pre-norm blocks, LayerNorm, token mean, Linear head.

    Patches are embedded by a Conv2d with kernel = stride = ``patch_size`` and a learned
    positional embedding is added; ``depth`` blocks with ``heads`` attention heads and an
    MLP of ``round(dim * mlp_ratio)`` hidden units follow.

    ``patch_size=None`` picks 4 for images at least 16 pixels high, else 2.
    Parameter names: ``patch_embed.{weight,bias}``, ``pos_embed`` (1, tokens, dim),
    ``blocks.<i>.norm1.*``, ``blocks.<i>.attn.qkv.*``, ``blocks.<i>.attn.proj.*``,
    ``blocks.<i>.norm2.*``, ``blocks.<i>.mlp.{0,2}.*``, ``norm.*``, ``head.*``.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        n_classes: int,
        patch_size: int | None = None,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        c, h, w = check_input_shape(input_shape)
        n_classes = check_positive_int("n_classes", n_classes)
        if patch_size is None:
            patch_size = 4 if h >= 16 else 2
        patch_size = check_positive_int("patch_size", patch_size)
        dim = check_positive_int("dim", dim)
        depth = check_positive_int("depth", depth)
        heads = check_positive_int("heads", heads)
        mlp_ratio = check_positive_float("mlp_ratio", mlp_ratio)
        if h % patch_size or w % patch_size:
            raise InputError(f"patch_size={patch_size} must divide the image size {h}x{w}")
        if dim % heads:
            raise InputError(f"heads={heads} must divide dim={dim}")
        hidden = max(1, round(dim * mlp_ratio))
        n_tokens = (h // patch_size) * (w // patch_size)
        self.patch_embed = nn.Conv2d(c, dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)
        self.input_shape = (c, h, w)
        self.n_classes = n_classes
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, n_classes) for images ``x`` of shape (N, C, H, W)."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))
