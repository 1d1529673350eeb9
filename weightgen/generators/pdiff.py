"""p-diff (Wang et al. 2024, "Neural Network Diffusion"): autoencoder + latent DDPM.

The flat parameter vector (the tokenizer with ``token_size: flat``) is compressed by a
1D conv autoencoder trained with noise on its input and on its latent (the augmentation
the paper finds essential), and a DDPM learns the latents. Sampling draws latents and
decodes them.

Faithful to the released code: InstanceNorm + LeakyReLU conv stages that fold the
length by ``fold_rate`` each, a Tanh on the latent, noise mixed as ``x*(1-f) + f*eps``.
One detail differs: our convs keep exact lengths (same padding, kernel = stride for the
folds) where the code crops a ragged output at the end; the arithmetic is cleaner and
the function the same.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from weightgen.config import PDiffSpec
from weightgen.diffusion import ConvDenoiser1d, Diffusion, make_ema, train_steps

from .base import Generator, GeneratorError
from .registry import GENERATORS


def augment(x: torch.Tensor, factor: float) -> torch.Tensor:
    """p-diff's noise augmentation, as in its released code: x*(1-f) + f*eps."""
    if factor == 0:
        return x
    return x * (1 - factor) + factor * torch.randn_like(x)


class PDiffAutoencoder(nn.Module):
    def __init__(self, length: int, fold_rate: int, kernel: int, enc_channels: list[int], dec_channels: list[int]):
        super().__init__()
        levels = len(enc_channels)
        self.length = length
        # At least 2 latent positions: InstanceNorm cannot normalize a length-1 signal.
        self.padded = max(math.ceil(length / fold_rate**levels), 2) * fold_rate**levels
        self.latent_shape = (enc_channels[-1], self.padded // fold_rate**levels)
        pad = kernel // 2
        enc, c = [], 1
        for i, c_out in enumerate(enc_channels):
            enc.append(nn.Sequential(
                nn.LeakyReLU() if i else nn.Identity(),
                nn.InstanceNorm1d(c), nn.Conv1d(c, c, kernel, padding=pad), nn.LeakyReLU(),
                nn.InstanceNorm1d(c), nn.Conv1d(c, c_out, fold_rate, stride=fold_rate),
            ))
            c = c_out
        self.encoder = nn.Sequential(*enc, nn.Tanh())
        dec, chans = [], [*dec_channels, 1]
        for i in range(levels):
            c_in, c_out = chans[i], chans[i + 1]
            dec.append(nn.Sequential(
                nn.LeakyReLU(), nn.InstanceNorm1d(c_in), nn.ConvTranspose1d(c_in, c_in, fold_rate, stride=fold_rate),
                nn.LeakyReLU(), nn.InstanceNorm1d(c_in), nn.Conv1d(c_in, c_out, kernel, padding=pad),
            ))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, length) -> (B, C, L)`` latents."""
        x = nn.functional.pad(x, (0, self.padded - self.length))
        return self.encoder(x.unsqueeze(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).squeeze(1)[:, : self.length]


@GENERATORS.register("pdiff")
class PDiff(Generator):
    method = "pdiff"
    spec_class = PDiffSpec
    spec: PDiffSpec
    per_sample_noise = True  # each latent draws its own noise: a sample does not depend on the batch size

    def build_components(self) -> None:
        if not self.tokenizer.flat:
            raise GeneratorError("p-diff models the flat parameter vector: set tokenizer.token_size to 'flat'")
        s = self.spec
        self.ae = PDiffAutoencoder(self.tokenizer.width, s.fold_rate, s.kernel_size, s.enc_channels, s.dec_channels)
        self.latent_dim = math.prod(self.ae.latent_shape)
        self.denoiser = ConvDenoiser1d(1, tuple(s.denoiser_channels))
        self.diffusion = Diffusion.from_spec(s.diffusion)
        self.ema = make_ema(self.denoiser, s.ema, s.ema_warmup)
        self.ae.to(self.device)
        self.denoiser.to(self.device)
        if self.ema is not None:
            self.ema.to(self.device)

    def components(self) -> dict[str, nn.Module]:
        mods = {"ae": self.ae, "denoiser": self.denoiser}
        if self.ema is not None:
            mods["ema"] = self.ema
        return mods

    def _batches(self, data: torch.Tensor, gen: torch.Generator):
        bs = min(self.spec.batch_size, len(data))

        def batch(_: int) -> torch.Tensor:
            if bs == len(data):
                return data
            return data[torch.randperm(len(data), generator=gen)[:bs].to(data.device)]

        return batch

    def fit(self, zoo, show_progress: bool = True, seed: int = 0) -> dict[str, Any]:
        s = self.spec
        x = self.training_tokens(zoo)[:, 0, :].to(self.device)  # (M, P) flat vectors
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # augmentation and diffusion noise use the global RNG
        batch = self._batches(x, gen)

        def ae_loss(step: int) -> torch.Tensor:
            xb = batch(step)
            z = self.ae.encode(augment(xb, s.input_noise))
            return nn.functional.mse_loss(self.ae.decode(augment(z, s.latent_noise)), xb)

        ae_losses = train_steps(self.ae, ae_loss, s.ae_steps, s.lr, s.weight_decay, desc="p-diff autoencoder",
                                show_progress=show_progress, lr_schedule=s.lr_schedule, rngs={"batches": gen})
        self.ae.eval()
        with torch.no_grad():
            latents = self.ae.encode(x).flatten(1).unsqueeze(1)  # (M, 1, latent_dim)
            recon = self.ae.decode(self.ae.encode(x))
        lat_batch = self._batches(latents, gen)
        dn_losses = train_steps(
            self.denoiser, lambda step: self.diffusion.loss(self.denoiser, lat_batch(step)), s.diffusion_steps,
            s.lr, s.weight_decay, ema=self.ema, desc="p-diff latent diffusion", show_progress=show_progress,
            lr_schedule=s.lr_schedule, rngs={"batches": gen})
        return {"ae_loss": ae_losses[-1] if ae_losses else None,
                "ae_recon_mse": nn.functional.mse_loss(recon, x).item(),
                "diffusion_loss": dn_losses[-1] if dn_losses else None,
                "latent_dim": self.latent_dim, "num_train": len(x)}

    @torch.no_grad()
    def sample_tokens(self, n: int, condition: Any, generator: torch.Generator, sampler: str = "ddpm",
                      steps: int | None = None) -> torch.Tensor:
        self.resolve_condition(condition)
        net = self.sampling_module(self.denoiser)
        self.ae.eval()
        z = self.diffusion.sample(net, (n, 1, self.latent_dim), generator, sampler=sampler, steps=steps,
                                  device=self.device, temperature=self.spec.diffusion.temperature)
        x = self.ae.decode(z.view(n, *self.ae.latent_shape))
        return x.unsqueeze(1).cpu()
