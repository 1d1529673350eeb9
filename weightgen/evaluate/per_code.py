"""Judging a task-conditioned generator code by code, on a ``tasks`` zoo.

For each class-subset code, the networks generated for that code are scored on the code's
binary task. They are compared with the zoo's networks trained on that task with the zoo's
recipe (from scratch, or fine-tuned with ``zoo.init: pretrained``). Held-out codes are
trained and stored but never shown to the generator. The retrieval baseline is a copy of
the zoo's networks for the nearest seen code (fewest differing bits). A generator that only
looked up its training data scores like that copy; one that learned the map from code to
weights beats it on unseen codes. When a ``CodeRegression`` (``regression.py``) is given,
its network for each code is scored too: what plain regression from the code gives,
without diffusion. See docs/results.md, 'Unseen tasks'.
"""
from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict

import numpy as np
import torch

from weightgen.tasks import binary_subset, get_task

from .batched import Evaluator, Scores, stack_states
from .judging import _stat
from .report import _fmt, write_split_report


def hamming(a: str, b: str) -> int:
    """How many bits two codes differ in."""
    return sum(x != y for x, y in zip(a, b))


def _stats(acc: torch.Tensor) -> dict:
    """Accuracy summary of one group of models; non-finite models count in n and n_nonfinite only."""
    vals = acc.double().tolist()
    return {"mean": _stat(vals, np.mean), "best": _stat(vals, np.max), "worst": _stat(vals, np.min),
            "n": len(acc), "n_nonfinite": int(torch.isnan(acc).sum())}


def evaluate_codes(gen, zoo, codes: list[str], n: int, seed: int = 0, sampler: str = "ddim",
                   steps: int | None = None, split: str = "test", regression=None) -> list[dict]:
    """One row per code: generated vs trained (the zoo's recipe) vs nearest-seen-code copy (vs the
    regression baseline, when given), and the seconds to generate one network vs to train one
    (the zoo run's optimizer time)."""
    cfg = zoo.config
    base = get_task(cfg.task.name, cfg.task.code, **cfg.task.kwargs)
    net = zoo.build_net()
    members, train_seconds = defaultdict(list), {}
    for m in zoo.members(None):
        members[m.condition.get("code")].append(m)
    for r in zoo.runs():
        if r["train_seconds"]:
            train_seconds.setdefault(r["condition"].get("code"), []).append(r["train_seconds"])
    seen = sorted({m.condition["code"] for m in zoo.members("train")})
    rows = []
    for code in codes:
        ev = Evaluator(net, binary_subset(base, code), split)
        start = time.perf_counter()
        generated = Scores.cat([ev(batch) for batch in gen.sample(n, code, seed, n, sampler, steps)])
        seconds = time.perf_counter() - start
        row = {"code": code, "seen": code in seen, "generated": _stats(generated.accuracy),
               "generate_seconds_per_model": seconds / n}
        if members.get(code):
            row["trained"] = _stats(ev(stack_states([zoo.load(m) for m in members[code]])).accuracy)
            row["train_seconds"] = statistics.fmean(train_seconds[code]) if code in train_seconds else None
        others = [c for c in seen if c != code]
        if others:
            near = min(others, key=lambda c: (hamming(c, code), c))
            row["nearest_seen"] = {"code": near, "bits_differ": hamming(near, code),
                                   **_stats(ev(stack_states([zoo.load(m) for m in members[near]])).accuracy)}
        if regression is not None:
            row["regression"] = _stats(ev(stack_states([regression.predict(code)])).accuracy)
        rows.append(row)
    return rows


def summarize_codes(rows: list[dict]) -> dict:
    """Means over codes of each group's mean accuracy, the worst code, and the ratio a
    task-conditioned generator aims to bring to 1 (generated mean / trained mean)."""
    def mean_of(key: str) -> float | None:
        vals = [r[key]["mean"] for r in rows if r.get(key) and r[key]["mean"] is not None]
        return statistics.fmean(vals) if vals else None

    gen_means = [(r["generated"]["mean"] if r["generated"]["mean"] is not None else 0.0, r["code"]) for r in rows]
    worst = min(gen_means) if gen_means else (None, None)
    g, t = mean_of("generated"), mean_of("trained")
    times = [r["train_seconds"] / r["generate_seconds_per_model"] for r in rows
             if r.get("train_seconds") and r["generate_seconds_per_model"]]
    return {"codes": len(rows), "generated_mean": g, "trained_mean": t, "nearest_seen_mean": mean_of("nearest_seen"),
            "regression_mean": mean_of("regression"),
            "ratio": g / t if g is not None and t else None, "worst_code": worst[1], "worst_code_mean": worst[0],
            "codes_beating_nearest_seen": sum(1 for r in rows if r.get("nearest_seen") and r["generated"]["mean"]
                                              is not None and r["generated"]["mean"] > r["nearest_seen"]["mean"]),
            # The median over codes: one run's optimizer time can be inflated by other jobs.
            "train_over_generate_time": statistics.median(times) if times else None}


def tasks_report(gen, zoo, n: int, seed: int = 0, sampler: str = "ddim", steps: int | None = None,
                 seen_codes: int | None = None, title: str = "") -> dict:
    """Every held-out code of the zoo and as many seen ones (a fixed draw with ``seed``):
    rows, summaries per split, and notes that state the comparison in words."""
    heldout = sorted({m.condition["code"] for m in zoo.members("heldout")})
    seen_all = sorted({m.condition["code"] for m in zoo.members("train")})
    k = min(len(seen_all), seen_codes if seen_codes is not None else max(len(heldout), 1))
    seen = sorted(random.Random(seed).sample(seen_all, k))
    rows = {"heldout": evaluate_codes(gen, zoo, heldout, n, seed, sampler, steps) if heldout else [],
            "seen": evaluate_codes(gen, zoo, seen, n, seed, sampler, steps)}
    summary = {split: summarize_codes(r) for split, r in rows.items() if r}
    notes = []
    for split, s in summary.items():
        notes.append(
            f"{split} codes ({s['codes']}): generated mean accuracy {s['generated_mean']:.4f} vs "
            f"{s['trained_mean']:.4f} for networks trained on those tasks with the zoo's recipe (ratio {s['ratio']:.3f}); "
            f"a copy of the nearest seen code's networks scores {s['nearest_seen_mean']:.4f}; generated beats that "
            f"copy on {s['codes_beating_nearest_seen']} of {s['codes']} codes; worst code {s['worst_code']} at "
            f"{s['worst_code_mean']:.4f}")
    if not heldout:
        notes.append("the zoo holds no held-out codes: nothing here shows generation for unseen tasks")
    return {"kind": "tasks", "title": title, "samples_per_code": n, "summary": summary, "rows": rows, "notes": notes}


def write_tasks_report(report: dict, out_dir) -> None:
    """report.json and a per-code report.md."""
    def cells(r):
        g, t, c = r["generated"], r.get("trained") or {}, r.get("nearest_seen") or {}
        return [r["code"], f"{_fmt(g['mean'])} ({_fmt(g['worst'])})", _fmt(t.get("mean")),
                f"{c.get('code', '–')} ({c.get('bits_differ', '–')})", _fmt(c.get("mean"))]

    write_split_report(report, out_dir, "codes", ["code", "generated mean (worst)", "trained (zoo recipe)",
                                                  "nearest seen code (bits)", "its copy's accuracy here"], cells)
