"""The regression baseline for task-conditioned generation (docs/results.md, 'Unseen tasks').

A deterministic MLP from a task's code bits to its network's tokens, fitted by mean squared
error on the training checkpoints of a ``tasks`` zoo, with the generator's tokenizer (so the
same tensors are predicted, normalized the same way). It answers "is a diffusion model
needed at all?": a generator conditioned on the code should at least match what plain
regression from the code gives, as it should beat a copy of the nearest seen code's networks.
"""
from __future__ import annotations

import torch
from torch import nn

from weightgen.diffusion import train_steps
from weightgen.tasks import code_bits, parse_code


class CodeRegression:
    """``predict(code)`` -> the state_dict regressed for that code (tensors not generated come
    from ``reference``)."""

    def __init__(self, tokenizer, reference: dict[str, torch.Tensor], code_length: int, width: int = 512):
        self.tokenizer, self.reference, self.code_length = tokenizer, reference, code_length
        out = tokenizer.num_tokens * tokenizer.width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(code_length, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                     nn.Linear(width, out))

    @classmethod
    def fit(cls, zoo, tokenizer, reference: dict[str, torch.Tensor], width: int = 512, steps: int = 5000,
            batch_size: int = 64, lr: float = 1e-3, seed: int = 0, show_progress: bool = False) -> "CodeRegression":
        members = zoo.members("train")
        codes = torch.stack([code_bits(m.condition["code"]) for m in members]).float()
        tokens = tokenizer.tokenize_batch(zoo.load(m, tokenizer.names) for m in members).flatten(1)
        mask = tokenizer.mask.reshape(1, -1).float()  # padding is not a target
        model = cls(tokenizer, reference, codes.shape[1], width)
        gen = torch.Generator().manual_seed(seed)

        def loss(_: int) -> torch.Tensor:
            i = torch.randint(len(codes), (min(batch_size, len(codes)),), generator=gen)
            return ((model.net(codes[i]) - tokens[i]) ** 2 * mask).sum() / (mask.sum() * len(i))

        train_steps(model.net, loss, steps, lr, desc="code regression", show_progress=show_progress,
                    lr_schedule="cosine")
        model.net.eval()
        return model

    @torch.no_grad()
    def predict(self, code: str) -> dict[str, torch.Tensor]:
        bits = code_bits(parse_code(code, self.code_length)).float()
        tokens = self.net(bits[None]).reshape(self.tokenizer.num_tokens, self.tokenizer.width)
        return {**self.reference, **self.tokenizer.tensors(tokens)}
