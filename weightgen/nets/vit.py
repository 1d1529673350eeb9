"""A tiny vision transformer (patch 2 on 8x8 digits by default), written out so its
parameter names read like the layers they are (``blocks.0.attn.qkv.weight``)."""
from __future__ import annotations

import torch
from torch import nn

from .registry import NETS


class Block(nn.Module):
    """A pre-norm transformer block: attention, then an MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding, a class token, learned positions, ``depth`` blocks and a Linear head."""

    def __init__(self, input_shape, num_classes: int, patch: int, dim: int, depth: int, heads: int, mlp_ratio: float):
        super().__init__()
        if len(input_shape) != 3 or input_shape[1] % patch or input_shape[2] % patch:
            raise ValueError(f"vit: input shape {tuple(input_shape)} is not (C, H, W) divisible by patch {patch}")
        c, h, w = input_shape
        n = (h // patch) * (w // patch)
        self.patch_embed = nn.Conv2d(c, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@NETS.register("vit")
def vit(input_shape, num_classes: int, patch: int = 2, dim: int = 32, depth: int = 2, heads: int = 4,
        mlp_ratio: float = 2.0) -> nn.Module:
    """``TinyViT`` with ``patch`` x ``patch`` patches, width ``dim`` and ``depth`` blocks of ``heads`` heads."""
    return TinyViT(input_shape, num_classes, patch, dim, depth, heads, mlp_ratio)
