"""Denoisers: a 1D conv network over a signal, conditioned on the timestep (and optionally a vector)."""
from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (DDPM / DiT style): ``(B,) -> (B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return nn.functional.pad(emb, (0, dim % 2))


class ConvBlock1d(nn.Module):
    """InstanceNorm -> LeakyReLU -> conv, twice (p-diff's layer), residual.

    The embedding scales and shifts the features *after* the second norm (FiLM): added
    before an InstanceNorm, a per-channel constant would be subtracted right away and
    the block could not tell timesteps (or conditions) apart.
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, kernel: int = 3):
        super().__init__()
        self.norm1 = nn.InstanceNorm1d(c_in, affine=True)
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.InstanceNorm1d(c_out, affine=False)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, padding=kernel // 2)
        self.act = nn.LeakyReLU()
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.act(h))
        return h + self.skip(x)


class ConvDenoiser1d(nn.Module):
    """A 1D conv encoder-decoder with skip connections over ``(B, channels, length)``.

    p-diff's latent denoiser is a 1D conv network with the timestep embedded and added
    to each layer; this is that network with residual blocks. ``cond_dim`` > 0 adds a
    conditioning vector to the timestep embedding (for conditional generation).
    """

    def __init__(self, in_channels: int = 1, channels: tuple[int, ...] = (64, 128, 256), emb_dim: int = 128,
                 cond_dim: int = 0, kernel: int = 3):
        super().__init__()
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond = nn.Linear(cond_dim, emb_dim) if cond_dim else None
        self.inp = nn.Conv1d(in_channels, channels[0], kernel, padding=kernel // 2)
        self.down = nn.ModuleList()
        c = channels[0]
        for c_out in channels:
            self.down.append(ConvBlock1d(c, c_out, emb_dim, kernel))
            c = c_out
        self.up = nn.ModuleList()
        for c_skip in reversed(channels):
            self.up.append(ConvBlock1d(c + c_skip, c_skip, emb_dim, kernel))
            c = c_skip
        self.out = nn.Conv1d(c, in_channels, kernel, padding=kernel // 2)
        # Start as a zero predictor: stable first steps for both epsilon and x0 targets.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim))
        if self.cond is not None:
            if cond is None:
                raise ValueError("this denoiser is conditional: pass cond")
            emb = emb + self.cond(cond)
        h = self.inp(x)
        skips = []
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


class FrequencyEmbedding(nn.Module):
    """A scalar ``(B,)`` -> ``(B, D)``: [x, sin(f x), cos(f x)] at log-spaced f = 2^0..2^max, then linear.

    This is G.pt's ``FrequencyEmbedder`` (Gpt/models/transformer.py). Its MNIST config takes 128
    frequencies up to 2^14; the metrics here (losses and errors of small nets) use 32 up to 2^8.
    """

    def __init__(self, dim: int, frequencies: int = 32, max_freq_log2: float = 8.0):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.linspace(0.0, max_freq_log2, frequencies), persistent=False)
        self.proj = nn.Linear(1 + 2 * frequencies, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()[:, None]
        args = x * self.freqs
        return self.proj(torch.cat([x, torch.sin(args), torch.cos(args)], 1))
