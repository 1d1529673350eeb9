"""Judging generated models against the originals and the two trivial baselines.

Every group (originals, weight average, each noise sigma, generated) is scored on the
task's test split by the task's headline metric (accuracy for classification), in the direction
the task says is better, and measured for novelty against all training checkpoints. The notes
then answer, with numbers, what the critique (Zeng et al. 2025) asks: is the generator
better than the originals and than their average, and is it more novel than noise-added
originals of the same quality, or merely a copy of its training data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn

from weightgen.tasks import Task

from .baselines import DEFAULT_SIGMAS, noise_added, run_averages, weight_average
from .batched import Evaluator, Scores
from .novelty import flatten_states, max_iou, nearest_distance
from .plots import NOISE_PREFIX
from .recalibrate import has_batchnorm, recalibrate_bn
from .report import _clean, _fmt, write_report

# A generated model nearer to a checkpoint than this fraction of the originals' typical
# distance to their own nearest neighbour is counted as a copy of that checkpoint.
COPY_FRACTION = 0.01


@dataclass(frozen=True)
class Objective:
    """The metric a report judges networks by (a task's ``headline``), and whether higher is better.

    It chooses the best of a group (the max or the min), the direction of every comparison in the
    notes, and their words: a classification report reads in accuracy and points, any other in the
    metric's own name and units."""

    metric: str = "accuracy"
    higher: bool = True

    @classmethod
    def of(cls, task: Task) -> "Objective":
        return cls(task.headline, task.higher_is_better())

    @property
    def direction(self) -> str:
        return f"({'higher' if self.higher else 'lower'} is better)"

    @property
    def fraction(self) -> bool:
        """A share of examples, compared in percentage points."""
        return self.metric in ("accuracy", "error")

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher else a < b

    def best(self, values) -> float | None:
        return _stat(values, np.max if self.higher else np.min)

    def worst(self, values) -> float | None:
        return _stat(values, np.min if self.higher else np.max)

    def fmt(self, v: float) -> str:
        return format(v, ".4f" if self.fraction else ".4g")

    def diff(self, a: float, b: float) -> str:
        return f"{100 * (a - b):+.1f} points" if self.fraction else f"{a - b:+.4g}"

    def words(self) -> dict[str, str]:
        """The phrases of the novelty notes, in accuracy's words or the metric's."""
        if self.metric == "accuracy":
            return {"reaches": "is that accurate", "top": "the most accurate", "better": "more accurate",
                    "worse": "less accurate", "least": "least", "worse_value": "lower accuracy"}
        m = self.metric
        return {"reaches": f"reaches that {m}", "top": "the best", "better": f"better in {m}",
                "worse": f"worse in {m}", "least": "worst", "worse_value": f"a worse {m}"}


ACCURACY = Objective()


def _array(values) -> np.ndarray:
    """A group's per-network list as floats, None (a non-finite network) as NaN: index i is still network i."""
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def _finite(values) -> np.ndarray:
    a = _array(values)
    return a[np.isfinite(a)]


def _stat(values, fn) -> float | None:
    a = _finite(values)
    return float(fn(a)) if a.size else None


def _group(scores: Scores, iou: Tensor, dist: Tensor, objective: Objective = ACCURACY) -> dict:
    """Summary and per-model lists (the metric's under its own name); a non-finite model counts in n
    and n_nonfinite only. ``best`` and ``worst`` follow the objective's direction."""
    fin = scores.finite
    nan = torch.tensor(math.nan)
    iou = torch.where(fin, iou.cpu().double(), nan)
    dist = torch.where(fin, dist.cpu().double(), nan)
    values = scores.metrics[objective.metric].double().tolist()
    return {
        "n": len(scores), "n_nonfinite": int((~fin).sum()),
        "best": objective.best(values), "mean": _stat(values, np.mean), "median": _stat(values, np.median),
        "worst": objective.worst(values),
        "max_iou_mean": _stat(iou.tolist(), np.mean), "max_iou_median": _stat(iou.tolist(), np.median),
        "nearest_distance_mean": _stat(dist.tolist(), np.mean),
        objective.metric: values, "max_iou": iou.tolist(), "nearest_distance": dist.tolist(),
    }


@dataclass
class Scored:
    """One group's networks judged one by one: their ``Scores`` and each one's nearest L2 distance to a
    training checkpoint (``[B]``; None for the originals, measured among themselves by ``judge_scored``).
    The blocks that several ranks score concatenate in rank order (``Scored.cat``) to one process's rows."""

    scores: Scores
    dist: Tensor | None = None

    @staticmethod
    def cat(parts: Iterable["Scored | None"]) -> "Scored":
        """The rows of several blocks in order; an empty block (None) adds none."""
        parts = [p for p in parts if p is not None]
        dists = [p.dist for p in parts if p.dist is not None]
        return Scored(Scores.cat([p.scores for p in parts]), torch.cat(dists) if dists else None)


def block(n: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of ``n`` that rank ``shard = (rank, world)`` scores: contiguous, sizes differing by one
    at most."""
    rank, world = shard or (0, 1)
    return rank * n // world, (rank + 1) * n // world


def _rows(stacked: dict[str, Tensor], shard: tuple[int, int] | None) -> dict[str, Tensor]:
    lo, hi = block(next(iter(stacked.values())).shape[0], shard)
    return {k: v[lo:hi] for k, v in stacked.items()}


def score_networks(net: nn.Module, task: Task, train_stacked: dict[str, Tensor],
                   generated_stacked: dict[str, Tensor] | Iterable[dict[str, Tensor]], names: list[str],
                   sigmas=DEFAULT_SIGMAS, n_noise: int = 100, seed: int = 0,
                   heldout_stacked: dict[str, Tensor] | None = None, recalibrate: bool = False,
                   runs: list[int] | None = None, project: Callable[[dict], dict] | None = None,
                   shard: tuple[int, int] | None = None) -> dict[str, Scored | None]:
    """Every network a report judges, scored on the task's test split and measured against the training
    checkpoints, by group in the report's order (original, weight_average, run_average, noise σ, generated,
    heldout); the arguments are ``judge``'s. This is the costly part of judging, and each network's result
    depends on that network alone, so it splits over processes (``weightgen eval --procs``).

    ``shard=(rank, world)``: only this rank's contiguous block of each group's rows (``block``), and
    ``generated_stacked`` is this rank's block of the samples already (the caller reads only those); a group
    with no row in the block is None. Every rank builds the baselines whole (seeded, so the same on each)
    and keeps its block.
    """
    names = list(names)
    ev = Evaluator(net, task, "test")
    ref_flat = flatten_states(train_stacked, names)
    x_train = task.split("train")[0]

    def score(batches: Iterable[dict[str, Tensor]], made: bool = True, measure: bool = True) -> Scored | None:
        parts = []
        for stacked in batches:
            if next(iter(stacked.values())).shape[0] == 0:
                continue
            if recalibrate and made:
                stacked = recalibrate_bn(net, x_train, stacked)
            dist = (nearest_distance(flatten_states(stacked, names).to(ref_flat.device), ref_flat).cpu()
                    if measure else None)
            parts.append(Scored(ev(stacked), dist))
        return Scored.cat(parts) if parts else None

    made = project or (lambda stacked: stacked)
    out = {"original": score([_rows(train_stacked, shard)], made=False, measure=False)}
    out["weight_average"] = score([_rows(made(weight_average(train_stacked, names)), shard)])
    if runs is not None and len(set(runs)) > 1:
        out["run_average"] = score([_rows(made(run_averages(train_stacked, names, runs)), shard)])
    for sigma in sigmas:
        noisy = made(noise_added(train_stacked, names, sigma, n_noise, seed))
        out[f"{NOISE_PREFIX}{sigma:g}"] = score([_rows(noisy, shard)])
    out["generated"] = score([generated_stacked] if isinstance(generated_stacked, dict) else generated_stacked)
    if heldout_stacked is not None:
        out["heldout"] = score([_rows(heldout_stacked, shard)], made=False)
    return out


def judge_scored(scored: dict[str, Scored], net: nn.Module, task: Task, train_stacked: dict[str, Tensor],
                 names: list[str], out_dir: Path | None, title: str = "", recalibrate: bool = False) -> dict:
    """The report of networks ``score_networks`` scored (every rank's blocks joined): max IoU against the
    originals' failure sets, the originals' distances among themselves, the group summaries and the notes;
    with ``out_dir``, report.json, report.md and novelty.png written there."""
    names = list(names)
    objective = Objective.of(task)
    ref_flat = flatten_states(train_stacked, names)
    originals = scored["original"].scores
    groups = {"original": _group(originals, max_iou(originals.failures, originals.failures, exclude_diagonal=True),
                                 nearest_distance(ref_flat, ref_flat, exclude_diagonal=True), objective)}
    for key, s in scored.items():
        if key != "original":
            groups[key] = _group(s.scores, max_iou(s.scores.failures, originals.failures), s.dist, objective)
    report = _clean({
        "title": title or f"{task.name}: generated vs originals and baselines",
        "task": task.name, "split": "test", "num_test": int(len(task.y_test)),
        "metric": objective.metric, "better": "higher" if objective.higher else "lower",
        "generated_names": names, "num_generated_params": int(ref_flat.shape[1]),
        "groups": groups, "notes": notes(groups, objective),
        "recalibrate_bn": bool(recalibrate and has_batchnorm(net)),
    })
    if out_dir is not None:
        write_report(report, Path(out_dir))
    return report


def judge(net: nn.Module, task: Task, train_stacked: dict[str, Tensor],
          generated_stacked: dict[str, Tensor] | Iterable[dict[str, Tensor]], names: list[str],
          out_dir: Path | None, sigmas=DEFAULT_SIGMAS, n_noise: int = 100, seed: int = 0, title: str = "",
          heldout_stacked: dict[str, Tensor] | None = None, recalibrate: bool = False,
          runs: list[int] | None = None, project: Callable[[dict], dict] | None = None) -> dict:
    """Score originals, weight average, noise-added originals and generated models; see the module doc.

    ``generated_stacked`` is one stacked dict or an iterable of them (streamed: one batch
    in memory at a time). ``heldout_stacked``: networks the zoo's own recipe made from
    seeds the generator never saw (its held-out runs), judged exactly as generated models are, as the
    reference for what a new network from the zoo's distribution scores (group ``heldout``).
    ``recalibrate``: every made network (weight average, noise-added originals, samples) gets its
    BatchNorm statistics recomputed on the task's training inputs first (``recalibrate.py``).
    ``runs``: the run of each training checkpoint, for a zoo of several runs of one recipe; then
    each run's own weight average is judged too (group ``run_average``, one model per run):
    the average a generator that learned each run's mean and nothing else would make.
    ``project``: what a compressed zoo's networks go through (``Tokenizer.project``: masked, snapped), applied to
    the weight average, run averages and noise-added originals, so the baselines are as compressed as the samples.
    Groups are judged by the task's headline metric in its direction (``Objective.of(task)``).
    Returns the report (nan written as None) and, with ``out_dir``, writes report.json,
    report.md and novelty.png there. It is ``score_networks`` then ``judge_scored``; several processes run
    the first on blocks of the rows and one the second (weightgen/eval_distributed.py).
    """
    scored = score_networks(net, task, train_stacked, generated_stacked, names, sigmas, n_noise, seed,
                            heldout_stacked, recalibrate, runs, project)
    return judge_scored(scored, net, task, train_stacked, names, out_dir, title, recalibrate)


# -- notes: the judgement in words --------------------------------------------------------

def _noise_points(groups: dict) -> list[tuple[str, float, float]]:
    """(sigma label, mean metric, mean max IoU) per noise level, in sigma order."""
    out = []
    for key, g in groups.items():
        if key.startswith(NOISE_PREFIX) and g["mean"] is not None and g["max_iou_mean"] is not None:
            out.append((key[len(NOISE_PREFIX):], g["mean"], g["max_iou_mean"]))
    return sorted(out, key=lambda p: float(p[0]))


def _noise_iou_at(points, acc: float, tolerance: float = 0.0) -> tuple[float, str] | None:
    """The noise curve's max IoU at metric value ``acc``, interpolated between neighbouring
    sigmas; a noise level within ``tolerance`` of ``acc`` counts as equally good. Where
    several qualify, the lowest IoU is the bar (the most novel noise level of that quality)."""
    found = []
    for (s0, a0, i0), (s1, a1, i1) in zip(points, points[1:]):
        if min(a0, a1) <= acc <= max(a0, a1):
            t = 0.5 if a1 == a0 else (acc - a0) / (a1 - a0)
            found.append((i0 + t * (i1 - i0), f"interpolated between σ={s0} and σ={s1}"))
    found += [(i, f"at σ={s}" if a == acc else f"σ={s} at {a:.4f}, within the mean's standard error "
                                                 f"{tolerance:.4f}") for s, a, i in points if abs(a - acc) <= tolerance]
    return min(found) if found else None


def _standard_error(values: list[float]) -> float:
    """Standard error of the mean of the finite ``values`` (0 for fewer than two)."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def novelty_note(groups: dict, key: str = "generated", head: str | None = None,
                 who: str = "generated models", objective: Objective = ACCURACY) -> str:
    """Whether group ``key`` sits at lower max IoU than noise-added originals of its quality (its mean
    ``objective`` metric); ``head`` opens the note (default: "novelty at equal <metric>: generated"),
    ``who`` names the group's models in it."""
    o, w = objective, objective.words()
    m = o.metric
    head = head or f"novelty at equal {m}: generated"
    gen, points = groups[key], _noise_points(groups)
    acc, iou = gen["mean"], gen["max_iou_mean"]
    if not points or iou is None:
        return f"{head} models: none finite, or no noise-added originals to compare with"
    head = f"{head} mean {m} {o.fmt(acc)} at mean max IoU {iou:.3f}; "
    same = f"noise-added originals at the same {m}"
    # A noise level whose metric differs from the generated mean by less than that mean's
    # standard error is as good as far as the evaluation can tell: without this, 0.9889
    # against 0.9886 would count as "more accurate than every noise level".
    at = _noise_iou_at(points, acc, _standard_error(gen.get(m, [])))
    if at is not None:
        noise_iou, where = at
        if iou < noise_iou:
            return head + (f"noise-added originals reach {noise_iou:.3f} at that {m} ({where}): {who} sit "
                           f"at LOWER max IoU than {same}")
        return head + (f"noise-added originals reach {noise_iou:.3f} at that {m} ({where}): {who} are "
                       f"not more novel than {same}")
    s, a, i = min(points, key=lambda p: abs(p[1] - acc))
    if o.better(acc, a):  # better than every noise level
        if iou < i:
            return head + (f"no noise level {w['reaches']}; {w['top']} (σ={s}: {o.fmt(a)}, max IoU {i:.3f}) is "
                           f"both {w['worse']} and less novel: {who} sit at LOWER max IoU than "
                           f"noise-added originals while being {w['better']}")
        return head + (f"no noise level {w['reaches']}; {w['top']} (σ={s}: {o.fmt(a)}) has max IoU {i:.3f}: "
                       f"{w['better']}, but not shown to be more novel than {same}")
    if i <= iou:
        return head + (f"noise σ={s} is both {w['better']} ({o.fmt(a)}) and lower in max IoU ({i:.3f}): {who} "
                       f"are not more novel than {same}")
    return head + (f"every noise level is {w['better']} ({w['least']}: σ={s} at {o.fmt(a)}, max IoU {i:.3f}); the "
                   f"lower max IoU comes with {w['worse_value']}: not shown to be more novel than {same}")


def notes(groups: dict, objective: Objective = ACCURACY) -> list[str]:
    """Plain statements, computed from the group summaries, that answer the critique; every
    comparison of quality is in ``objective``'s metric and direction."""
    o = objective
    gen, orig, avg = groups["generated"], groups["original"], groups["weight_average"]
    out = []
    if orig["max_iou_mean"] is not None:
        out.append(f"originals among themselves: mean max IoU {orig['max_iou_mean']:.3f}, mean nearest L2 distance "
                   f"{_fmt(orig['nearest_distance_mean'], '.4g')} (the spread a new model should show)")
    if gen["n_nonfinite"]:
        out.append(f"{gen['n_nonfinite']} of {gen['n']} generated models have non-finite weights or outputs: counted "
                   f"as failures, left out of the {o.metric} and novelty statistics")
    if gen["mean"] is None:
        out.append("no generated model is finite: there is nothing to compare")
        return out
    if orig["best"] is not None:
        at_least = gen["best"] == orig["best"] or o.better(gen["best"], orig["best"])
        op = (">=" if at_least else "<") if o.higher else ("<=" if at_least else ">")
        name = "" if o.metric == "accuracy" else f" {o.metric}"
        out.append(f"generated best{name} {o.fmt(gen['best'])} {op} original best {o.fmt(orig['best'])} {o.direction}")
        for stat in ("mean", "median"):
            out.append(f"generated {stat} {o.fmt(gen[stat])} vs original {stat} {o.fmt(orig[stat])} "
                       f"({o.diff(gen[stat], orig[stat])})")
    if avg["mean"] is not None:
        verb = "beats" if o.better(gen["mean"], avg["mean"]) else "does not beat"
        out.append(f"generated mean {o.fmt(gen['mean'])} {verb} the weight average {o.fmt(avg['mean'])} "
                   f"({o.diff(gen['mean'], avg['mean'])})")
    else:
        out.append("the weight average has non-finite weights or outputs")
    if groups.get("run_average", {}).get("mean") is not None:
        ra = groups["run_average"]
        verb = "beats" if o.better(gen["mean"], ra["mean"]) else "does not beat"
        out.append(f"generated mean {o.fmt(gen['mean'])} {verb} the {ra['n']} runs' own weight averages (one model per "
                   f"run: best {o.fmt(ra['best'])}, mean {o.fmt(ra['mean'])}, max IoU {ra['max_iou_mean']:.3f}; "
                   f"{o.diff(gen['mean'], ra['mean'])}); generated best {o.fmt(gen['best'])} against their best "
                   f"{o.fmt(ra['best'])}")
    out.append(novelty_note(groups, objective=o))
    out.extend(_copy_notes(gen, orig, o))
    if "heldout" in groups:
        out.append(_heldout_note(groups, o))
    return out


def _heldout_note(groups: dict, objective: Objective = ACCURACY) -> str:
    """The same novelty test applied to the zoo's held-out runs: networks its own recipe made from
    new seeds, so what the test says of a network that is new and drawn from the zoo's distribution."""
    o = objective
    h = groups["heldout"]
    if h["mean"] is None:
        return f"held-out runs: none of the {h['n']} is finite"
    verdict = novelty_note(groups, "heldout", "held-out runs (the zoo's recipe, seeds the generator never saw), "
                                               "judged as generated models are:", "held-out runs", o)
    g = groups["generated"]
    against = ""
    if g["mean"] is not None and g["max_iou_mean"] is not None and h["max_iou_mean"] is not None:
        against = (f"; generated models against them: mean {o.metric} {o.fmt(g['mean'])} vs {o.fmt(h['mean'])}, "
                   f"mean max IoU {g['max_iou_mean']:.3f} vs {h['max_iou_mean']:.3f}")
    return (f"{verdict}; they lie {_fmt(h['nearest_distance_mean'], '.4g')} (mean) from their nearest training "
            f"checkpoint, best / median {o.fmt(h['best'])} / {o.fmt(h['median'])}{against}")


def _copy_notes(gen: dict, orig: dict, objective: Objective = ACCURACY) -> list[str]:
    o = objective
    spread = _stat(orig["nearest_distance"], np.median)
    tol = COPY_FRACTION * spread if spread else 0.0
    dist = _finite(gen["nearest_distance"])
    iou = _array(gen["max_iou"])  # aligned with the metric's values; NaN compares false below
    out = []
    copies = int((dist <= tol).sum())
    if copies:
        out.append(f"{copies} of {gen['n']} generated models are copies of a training checkpoint (nearest L2 distance "
                   f"<= {tol:.3g}, {COPY_FRACTION:.0%} of the originals' median nearest-neighbour distance): not novel")
    same = int((iou >= 1.0).sum())
    if same:
        # The best network may be one of these: say what the best one that fails as no checkpoint does reaches.
        values = _array(gen[o.metric])
        others = values[(iou < 1.0) & np.isfinite(values)]
        rest = (f"; the best of the other {others.size}: {o.fmt(o.best(others))}" if others.size else
                "; there are no others")
        what = "err on" if o.metric == "accuracy" else "fail on"
        out.append(f"{same} of {gen['n']} generated models {what} exactly the same test samples as some training "
                   f"checkpoint (max IoU 1.0){rest}")
    if not copies and dist.size and spread:
        out.append(f"generated models lie {float(np.median(dist)):.4g} (median) from their nearest training checkpoint; "
                   f"originals lie {spread:.4g} (median) from each other")
    return out
