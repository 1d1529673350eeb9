"""RPG's denoiser: a 1D conv U-Net over each token, conditioned on the token's prototype.

Every token is a 1-channel signal of length ``width`` (the tokenizer's token size); the
batch dimension is (samples x tokens) flattened, so the network never sees more than one
token at a time and memory follows the number of tokens denoised at once.

As in RPG's released code (``ConditionalUNet``), the condition enters at the input of
every convolution as ``(h + c) * t``: the prototype, projected to a signal along the
token, is added, and the timestep embedding, projected the same way, scales the sum.
Both are broadcast over channels. The released network keeps the full length at every
layer; ours halves it per level (average pooling down, nearest up, skip connections
concatenated), with one condition and one time projection per level length.

BatchNorm + ELU after each conv, as released. In eval mode (sampling) BatchNorm is a fixed
affine map per channel, so a token's result never depends on the other tokens of its
chunk; in training each batch mixes timesteps and positions just as the running
statistics do. GroupNorm would normalize away each token's own scale, which the denoiser
has to reproduce.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .denoisers import timestep_embedding


class CondConv1d(nn.Module):
    """conv((h + cond) * time) -> BatchNorm -> ELU (the plain conv when ``last``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, last: bool = False):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2)
        self.post = nn.Identity() if last else nn.Sequential(nn.BatchNorm1d(c_out), nn.ELU())

    def forward(self, h: torch.Tensor, cond: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        return self.post(self.conv((h + cond) * time))


class TokenUNet1d(nn.Module):
    """``(N, 1, width)`` noisy tokens, ``(N,)`` timesteps, ``(N, cond_dim)`` prototypes -> ``(N, 1, width)``."""

    def __init__(self, width: int, cond_dim: int, channels: tuple[int, ...] = (32, 64, 128), kernel: int = 7,
                 time_dim: int = 128):
        super().__init__()
        levels = len(channels)
        self.width = width
        self.time_dim = time_dim
        # Pad so that every level halves exactly; the padding is cropped from the output.
        unit = 2 ** (levels - 1)
        self.padded = -(-width // unit) * unit
        lengths = [self.padded // 2**i for i in range(levels)]
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.cond_proj = nn.ModuleList(nn.Linear(cond_dim, n) for n in lengths)
        self.time_proj = nn.ModuleList(nn.Linear(time_dim, n) for n in lengths)
        self.down = nn.ModuleList()
        c = 1
        for c_out in channels:
            self.down.append(CondConv1d(c, c_out, kernel))
            c = c_out
        self.up = nn.ModuleList(CondConv1d(channels[i + 1] + channels[i], channels[i], kernel)
                                for i in reversed(range(levels - 1)))
        self.out = CondConv1d(channels[0], 1, kernel, last=True)
        # Start as a zero predictor: the first steps do not push the prototypes around at random.
        nn.init.zeros_(self.out.conv.weight)
        nn.init.zeros_(self.out.conv.bias)

    def activation_bytes_per_token(self) -> int:
        """A generous bound on the float32 activations one token needs in a forward pass
        (each level's conv input, output, norm and activation; the decoder's concatenations)."""
        channels = [b.conv.out_channels for b in self.down]
        per_level = sum(c * (self.padded >> i) for i, c in enumerate(channels))
        return 4 * 8 * 2 * per_level

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.time_dim))
        conds = [p(cond)[:, None, :] for p in self.cond_proj]  # (N, 1, length): broadcast over channels
        times = [p(temb)[:, None, :] for p in self.time_proj]
        h = F.pad(x, (0, self.padded - self.width))
        skips = []
        for level, block in enumerate(self.down):
            if level:
                h = F.avg_pool1d(h, 2)
            h = block(h, conds[level], times[level])
            skips.append(h)
        skips.pop()  # the deepest level feeds the decoder directly
        level = len(self.down) - 1
        for block in self.up:
            level -= 1
            h = torch.cat([F.interpolate(h, scale_factor=2, mode="nearest"), skips.pop()], dim=1)
            h = block(h, conds[level], times[level])
        return self.out(h, conds[0], times[0])[..., : self.width]
