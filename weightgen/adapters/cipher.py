"""``cipher``: a family of letter-swap ciphers, one task per key, made by the code.

Plaintext is random lowercase letters; the target at every position is that letter enciphered.
The key is a 13-bit code: bit ``j`` swaps letter ``j`` with letter ``j + 13`` (``a``/``n``,
``b``/``o``, ...); the 8190 keys that are neither all 0 (the identity) nor all 1 (ROT13) are the
family's tasks. The code is the task's condition, stored as the ``tasks`` zoo mode stores
class-subset codes, so RPG's ``condition: task_code`` and ``CodeRegression`` read it as they are.
With no key the task is the identity, which the base model learns. Character accuracy on the test
split (fixed seeded strings, the same for every key) is the headline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from weightgen.tasks.base import Task
from weightgen.tasks.registry import TASKS
from weightgen.tasks.subset import TaskCodeError, parse_code

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
KEY_BITS = len(ALPHABET) // 2


class CipherKeyError(TaskCodeError):
    """A key outside the cipher family."""


def parse_key(key) -> str:
    """A key as its 13-character bit string; anything else is refused with the allowed form."""
    try:
        return parse_code(key, KEY_BITS)
    except TaskCodeError:
        raise CipherKeyError(f"cipher key {key!r} is outside the family: give {KEY_BITS} characters of 0 and 1, not "
                             f"all equal (bit j swaps letters '{ALPHABET[0]}'+j and '{ALPHABET[KEY_BITS]}'+j)") from None


def substitution(key: str | None) -> torch.Tensor:
    """``(26,)`` int64: the ciphertext letter of each plaintext letter under ``key`` (identity for None)."""
    table = torch.arange(len(ALPHABET))
    if key is not None:
        for j, bit in enumerate(parse_key(key)):
            if bit == "1":
                table[j], table[j + KEY_BITS] = j + KEY_BITS, j
    return table


def encipher(text: str, key: str | None) -> str:
    """``text`` (lowercase letters) under ``key``."""
    table = substitution(key)
    return "".join(ALPHABET[int(table[ALPHABET.index(c)])] for c in text)


@dataclass
class CipherTask(Task):
    """Sequences of letters ``x`` ``(N, T)`` to their ciphertext ``y`` ``(N, T)``, both int64 in [0, 26).

    Outputs are per-position logits ``(N, T, 26)``: the loss is their mean cross-entropy, accuracy is
    per character, and an example fails where any of its characters is wrong."""

    kind: ClassVar[str] = "sequence"

    def output_size(self) -> int:
        return len(ALPHABET)

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.flatten(0, -2), y.flatten())

    def batch_scores(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``outputs`` ``(B, N, T, V)``, ``y`` ``(N, T)`` -> mean cross-entropy and character accuracy per model."""
        b = outputs.shape[0]
        ce = F.cross_entropy(outputs.flatten(0, -2).float(), y.flatten().repeat(b), reduction="none")
        right = (outputs.argmax(-1) == y).float()
        return {"loss": ce.view(b, -1).mean(1), "accuracy": right.flatten(1).mean(1)}

    def failures(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (outputs.argmax(-1) != y).any(-1)

    def scores(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        s = {k: float(v[0]) for k, v in self.batch_scores(outputs[None], y).items()}
        return {**s, "error": 1.0 - s["accuracy"]}


def _strings(n: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(len(ALPHABET), (n, length), generator=torch.Generator().manual_seed(seed))


@TASKS.register("cipher")
def cipher(key: str | None = None, length: int = 16, n_train: int = 512, n_test: int = 256, seed: int = 0) -> CipherTask:
    """The swap cipher of ``key`` (None: the identity) on random strings of ``length`` letters.

    The strings depend on ``seed`` only, never on the key: every task of the family is judged on
    the same test strings."""
    table = substitution(key)
    xs = [_strings(n, length, seed * 3 + i) for i, n in enumerate((n_train, n_test, n_test))]
    name = "cipher" if key is None else f"cipher[{parse_key(key)}]"
    condition = {} if key is None else {"code": parse_key(key)}
    return CipherTask(name, xs[0], table[xs[0]], xs[1], table[xs[1]], xs[2], table[xs[2]],
                      num_classes=len(ALPHABET), condition=condition)
