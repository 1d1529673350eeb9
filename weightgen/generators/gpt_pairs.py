"""Training pairs of G.pt: which (theta, theta') of a trajectory zoo one step learns from.

Each run of the zoo is a chain of checkpoints in step order; a pair is two checkpoints of one
chain, theta' the later one. ``PairSampler`` draws them as ``GPTSpec.pair_sampling`` says and,
with ``GPTSpec.balance_targets`` (ours), reweights them so the metric of theta' (the target a
prompt will ask for) is spread evenly over the zoo's range instead of piling up where runs spend
most of their checkpoints (trained: in the quadratic digits MLP zoo of benchmarks/gpt_prompt.py,
68% of the checkpoints have a test error under 0.12 and 14% one between 0.2 and 0.8, where
13 of the benchmark's 20 evenly spaced prompts from an initialization fall).
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


def all_pairs(runs: list[list[int]], max_gap: int | None = None) -> torch.Tensor:
    """``(P, 2)`` every (theta, theta') of each chain in ``runs`` with theta' later, at most
    ``max_gap`` places after theta when given."""
    pairs = [(idx[a], idx[b]) for idx in runs for a in range(len(idx))
             for b in range(a + 1, len(idx) if max_gap is None else min(len(idx), a + 1 + max_gap))]
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def pair_count(runs: list[list[int]], max_gap: int | None = None) -> int:
    """How many pairs ``all_pairs(runs, max_gap)`` holds, without making them: a chain of n has
    n - g pairs of gap g."""
    return sum(n - g for n in map(len, runs) for g in range(1, n if max_gap is None else min(n, max_gap + 1)))


class PairSampler:
    """Draws a step's (theta, theta') index pairs from chains of checkpoints (one per run, in
    step order): ``uniform_pair`` picks among all pairs, ``uniform_gap`` (G.pt's released
    code) picks a run, a gap, then a start (see ``GPTSpec.pair_sampling``)."""

    def __init__(self, runs: list[list[int]], policy: str = "uniform_gap", max_gap: int | None = None,
                 target_metrics: torch.Tensor | None = None, balance_targets: int | None = None):
        self.policy, self.max_gap = policy, max_gap
        self.count = pair_count(runs, max_gap)
        if self.count == 0:
            raise GeneratorError("G.pt trains on pairs of checkpoints from one run, the second later: the zoo has "
                                 "no run with two checkpoints (use zoo.mode: trajectory with checkpoints >= 2)")
        self.weights = None  # with balance_targets: every pair's probability, drawn from directly
        if balance_targets is not None:
            if target_metrics is None:
                raise ValueError("balance_targets needs the metric of every checkpoint (target_metrics)")
            self.pairs = all_pairs(runs, max_gap)
            self.weights = balanced_weights(self.policy_probabilities(runs), target_metrics[self.pairs[:, 1]],
                                            balance_targets)
        else:
            self.pairs = all_pairs(runs, max_gap) if policy == "uniform_pair" else None  # drawn from directly
        longest = max(len(idx) for idx in runs)
        self.lengths = torch.tensor([len(idx) for idx in runs])
        self.chains = torch.tensor([idx + [idx[-1]] * (longest - len(idx)) for idx in runs], dtype=torch.long)

    def __len__(self) -> int:
        return self.count

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``(n, 2)`` pairs, drawn with replacement."""
        if self.weights is not None:
            return self.pairs[torch.multinomial(self.weights, n, replacement=True, generator=gen)]
        if self.policy == "uniform_pair":
            return self.pairs[torch.randint(len(self.pairs), (n,), generator=gen)]
        run = torch.randint(len(self.chains), (n,), generator=gen)
        length = self.lengths[run]
        widest = length - 1 if self.max_gap is None else (length - 1).clamp(max=self.max_gap)
        gap = 1 + (torch.rand(n, generator=gen) * widest).long().clamp(max=widest - 1)
        first = (torch.rand(n, generator=gen) * (length - gap)).long().clamp(max=length - gap - 1)
        return torch.stack([self.chains[run, first], self.chains[run, first + gap]], 1)

    def policy_probabilities(self, runs: list[list[int]]) -> torch.Tensor:
        """The probability ``sample`` gives each pair of ``all_pairs(runs, max_gap)`` (same order)
        under the policy alone: ``uniform_gap`` picks one of R runs, a gap g among its ``widest``,
        then one of the n - g starts; ``uniform_pair``, one of all pairs."""
        if self.policy == "uniform_pair":
            return torch.full((self.count,), 1.0 / self.count, dtype=torch.float64)
        parts = []
        for idx in runs:
            n = len(idx)
            widest = n - 1 if self.max_gap is None else min(n - 1, self.max_gap)
            for a in range(n):  # the order of all_pairs: by start, then by gap
                gaps = torch.arange(1, min(n - a, widest + 1), dtype=torch.float64)
                parts.append(1.0 / (len(runs) * widest * (n - gaps)))
        return torch.cat(parts)


def balanced_weights(base: torch.Tensor, targets: torch.Tensor, bins: int) -> torch.Tensor:
    """Pair probabilities ``base`` reweighted so the target values ``targets`` (one per pair) fall
    equally often into each of ``bins`` equal-width bins of their range (bins no pair reaches
    give their share to the rest); within a bin, pairs keep their relative ``base`` odds."""
    lo, hi = float(targets.min()), float(targets.max())
    which = ((targets.double() - lo) / max(hi - lo, 1e-12) * bins).long().clamp(0, bins - 1)
    mass = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, base)
    return base / mass[which]
