"""Training pairs of G.pt: which (theta, theta') of a trajectory zoo one step learns from.

Each run of the zoo is a chain of checkpoints in step order; a pair is two checkpoints of one
chain, theta' the later one. ``PairSampler`` draws them as G.pt's released code does: a run, a
gap, then a start, so a jump from an initialization to a trained network is as likely as a
one-checkpoint step. With ``GPTSpec.balance_targets`` it reweights the pairs so that the metric
of theta' (the target a prompt asks for) spreads evenly over the zoo's range, instead of piling
up where runs spend most of their checkpoints. Evidence: docs/results.md, 'Prompted metrics'.
"""
from __future__ import annotations

import torch

from .base import GeneratorError


def training_runs(members) -> list[list[int]]:
    """Indices into ``members`` of each run with two or more checkpoints, ordered by step."""
    by_run: dict[int, list[int]] = {}
    for i, m in enumerate(members):
        by_run.setdefault(m.run, []).append(i)
    runs = [sorted(idx, key=lambda i: members[i].step) for idx in by_run.values()]
    return [idx for idx in runs if len(idx) > 1]


def all_pairs(runs: list[list[int]]) -> torch.Tensor:
    """``(P, 2)`` every (theta, theta') of each chain in ``runs`` with theta' later, by start, then by gap."""
    pairs = [(idx[a], idx[b]) for idx in runs for a in range(len(idx)) for b in range(a + 1, len(idx))]
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def pair_count(runs: list[list[int]]) -> int:
    """How many pairs ``all_pairs(runs)`` holds, without making them: C(n, 2) for a chain of n."""
    return sum(n * (n - 1) // 2 for n in map(len, runs))


class PairSampler:
    """Draws a step's (theta, theta') index pairs from chains of checkpoints (one per run, in
    step order) as G.pt's released code does: a run, then a gap g uniform over 1 .. n - 1, then
    theta uniform among the n - g checkpoints with one g places later. With ``balance_targets``
    bins, each pair's odds are divided by the mass of its target's bin (``balanced_weights``)."""

    def __init__(self, runs: list[list[int]], target_metrics: torch.Tensor | None = None,
                 balance_targets: int | None = None):
        self.count = pair_count(runs)
        if self.count == 0:
            raise GeneratorError("G.pt trains on pairs of checkpoints from one run, the second later: the zoo has "
                                 "no run with two checkpoints (use zoo.mode: trajectory with checkpoints >= 2)")
        self.pairs, self.weights = None, None  # with balance_targets: every pair and its probability
        if balance_targets is not None:
            if target_metrics is None:
                raise ValueError("balance_targets needs the metric of every checkpoint (target_metrics)")
            self.pairs = all_pairs(runs)
            self.weights = balanced_weights(self.policy_probabilities(runs), target_metrics[self.pairs[:, 1]],
                                            balance_targets)
        longest = max(len(idx) for idx in runs)
        self.lengths = torch.tensor([len(idx) for idx in runs])
        self.chains = torch.tensor([idx + [idx[-1]] * (longest - len(idx)) for idx in runs], dtype=torch.long)

    def __len__(self) -> int:
        return self.count

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``(n, 2)`` pairs, drawn with replacement."""
        if self.weights is not None:
            return self.pairs[torch.multinomial(self.weights, n, replacement=True, generator=gen)]
        run = torch.randint(len(self.chains), (n,), generator=gen)
        length = self.lengths[run]
        gap = 1 + (torch.rand(n, generator=gen) * (length - 1)).long().clamp(max=length - 2)
        first = (torch.rand(n, generator=gen) * (length - gap)).long().clamp(max=length - gap - 1)
        return torch.stack([self.chains[run, first], self.chains[run, first + gap]], 1)

    def policy_probabilities(self, runs: list[list[int]]) -> torch.Tensor:
        """The probability the run-gap-start draw gives each pair of ``all_pairs(runs)`` (same order):
        one of R runs, one of its n - 1 gaps, then one of the n - g starts."""
        parts = []
        for idx in runs:
            n = len(idx)
            for a in range(n):  # the order of all_pairs: by start, then by gap
                gaps = torch.arange(1, n - a, dtype=torch.float64)
                parts.append(1.0 / (len(runs) * (n - 1) * (n - gaps)))
        return torch.cat(parts)


def balanced_weights(base: torch.Tensor, targets: torch.Tensor, bins: int) -> torch.Tensor:
    """Pair probabilities ``base`` reweighted so the target values ``targets`` (one per pair) fall
    equally often into each of ``bins`` equal-width bins of their range (bins no pair reaches
    give their share to the rest); within a bin, pairs keep their relative ``base`` odds."""
    lo, hi = float(targets.min()), float(targets.max())
    which = ((targets.double() - lo) / max(hi - lo, 1e-12) * bins).long().clamp(0, bins - 1)
    mass = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, base)
    return base / mass[which]
