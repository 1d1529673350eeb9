"""Judging adapters generated for a key: held-out keys (and as many seen ones), key by key.

For each key, the generated adapters are scored on the key's task (character accuracy on the fixed
test strings, merged into the base) against: the zoo's adapters trained on that key (the last
checkpoint of each run), the base model with no adapter, a copy of the nearest seen key's adapter
(fewest differing bits: retrieval), and a ``CodeRegression`` from the key's bits to the adapter
(a hypernetwork without diffusion, as Text-to-LoRA is). Times: generating one adapter (a batch of
``n``, per adapter) against training one (the zoo run's optimizer time).
"""
from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict

import torch

from weightgen.evaluate.per_code import hamming
from weightgen.evaluate.report import _fmt, write_split_report

from .peft_io import score_adapters
from .zoo import load_base, zoo_task


def _stats(scores: torch.Tensor) -> dict:
    vals = [v for v in scores.double().tolist() if v == v]
    return {"mean": statistics.fmean(vals) if vals else None, "worst": min(vals) if vals else None,
            "best": max(vals) if vals else None, "n": len(scores), "n_nonfinite": len(scores) - len(vals)}


def load_zoo_base(zoo):
    """The zoo's base model and the adapters' peft config."""
    return load_base(zoo), zoo.meta("net_build")["adapter"]["config"]


def last_checkpoints(zoo) -> dict[str, list]:
    """``key -> the last checkpoint of each of its runs``, over every split."""
    last: dict[int, object] = {}
    for m in zoo.members(None):
        if m.run not in last or m.step > last[m.run].step:
            last[m.run] = m
    out = defaultdict(list)
    for m in last.values():
        out[m.condition["code"]].append(m)
    return out


def training_time(zoo, key: str, seed: int = 0) -> dict:
    """Training one adapter for ``key`` as the zoo trained its adapters, timed (optimizer time): the
    whole run, and until the adapter first scores what it scores at the end (its score reached).
    Measured in the same process as generating, so both see the same machine and load."""
    from .zoo import adapter_steps, train_adapter

    cfg = zoo.config
    base, config = load_zoo_base(zoo)
    steps, _ = adapter_steps(cfg)
    timing: dict = {}
    curve = []  # (step, seconds, test score)
    init_seed = cfg.seed if cfg.zoo.init == "shared" else seed
    headline = f"test_{zoo_task(cfg).headline}"
    for step, _, metrics in train_adapter(base, zoo_task(cfg, key), config, cfg.train, steps, list(range(steps + 1)),
                                          seed, init_seed, timing):
        curve.append((step, timing["train_seconds"], metrics[headline]))
    final = curve[-1][2]
    step, seconds, _ = next(c for c in curve if c[2] >= final)
    return {"key": key, "steps": steps, "train_seconds": curve[-1][1], "score": final,
            "steps_to_score": step, "seconds_to_score": seconds}


def evaluate_keys(gen, zoo, keys: list[str], n: int, seed: int = 0, sampler: str = "ddim", steps: int | None = None,
                  regression=None) -> list[dict]:
    """One row per key: generated vs trained vs base vs nearest seen key's adapter (vs regression)."""
    cfg = zoo.config
    base, config = load_zoo_base(zoo)
    by_key = last_checkpoints(zoo)
    seen = sorted({m.condition["code"] for m in zoo.members("train")})
    train_seconds = defaultdict(list)
    for r in zoo.runs():
        if r["train_seconds"]:
            train_seconds[r["condition"].get("code")].append(r["train_seconds"])
    rows = []
    for key in keys:
        task = zoo_task(cfg, key)

        def score(states):
            return score_adapters(base, task, states, config)

        start = time.perf_counter()
        made = [{k: v[i] for k, v in batch.items()} for batch in gen.sample(n, key, seed, n, sampler, steps)
                for i in range(next(iter(batch.values())).shape[0])]
        seconds = time.perf_counter() - start
        row = {"key": key, "seen": key in seen, "generated": _stats(score(made)),
               "generate_seconds_per_adapter": seconds / n, "base": _stats(score([None]))}
        if by_key.get(key):
            row["trained"] = _stats(score([zoo.load(m) for m in by_key[key]]))
            row["train_seconds"] = statistics.fmean(train_seconds[key]) if train_seconds.get(key) else None
        others = [c for c in seen if c != key]
        if others:
            near = min(others, key=lambda c: (hamming(c, key), c))
            row["nearest_seen"] = {"key": near, "bits_differ": hamming(near, key),
                                   **_stats(score([zoo.load(m) for m in by_key[near]]))}
        if regression is not None:
            row["regression"] = _stats(score([regression.predict(key)]))
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Means over keys of each group's mean, the ratio generated / trained, and the time ratio."""
    def mean_of(group: str) -> float | None:
        vals = [r[group]["mean"] for r in rows if r.get(group) and r[group]["mean"] is not None]
        return statistics.fmean(vals) if vals else None

    g, t = mean_of("generated"), mean_of("trained")
    times = [r["train_seconds"] / r["generate_seconds_per_adapter"] for r in rows
             if r.get("train_seconds") and r["generate_seconds_per_adapter"]]
    out = {"keys": len(rows), **{f"{k}_mean": mean_of(k) for k in ("generated", "trained", "base", "nearest_seen",
                                                                    "regression")},
           "ratio": g / t if g is not None and t else None,
           "train_over_generate_time": statistics.median(times) if times else None}
    out["baselines_beaten"] = {k: out[f"{k}_mean"] is not None and g is not None and g > out[f"{k}_mean"]
                               for k in ("base", "nearest_seen", "regression") if out[f"{k}_mean"] is not None}
    return out


def adapters_report(gen, zoo, n: int, seed: int = 0, sampler: str = "ddim", steps: int | None = None,
                    seen_keys: int | None = None, regression=None, title: str = "") -> dict:
    """Every held-out key of the zoo and as many seen ones (a fixed draw with ``seed``)."""
    heldout = sorted({m.condition["code"] for m in zoo.members("heldout")})
    seen_all = sorted({m.condition["code"] for m in zoo.members("train")})
    k = min(len(seen_all), seen_keys if seen_keys is not None else max(len(heldout), 1))
    seen = sorted(random.Random(seed).sample(seen_all, k))
    rows = {"heldout": evaluate_keys(gen, zoo, heldout, n, seed, sampler, steps, regression) if heldout else [],
            "seen": evaluate_keys(gen, zoo, seen, n, seed, sampler, steps, regression) if seen else []}
    summary = {split: summarize(r) for split, r in rows.items() if r}
    notes = []
    for split, s in summary.items():
        notes.append(f"{split} keys ({s['keys']}): generated adapters {_fmt(s['generated_mean'])} character accuracy vs "
                     f"{_fmt(s['trained_mean'])} trained (ratio {_fmt(s['ratio'], '.3f')}); base with no adapter "
                     f"{_fmt(s['base_mean'])}, nearest seen key's adapter {_fmt(s['nearest_seen_mean'])}, regression "
                     f"{_fmt(s['regression_mean'])}; training takes {_fmt(s['train_over_generate_time'], '.0f')}x "
                     "the time of generating")
    if not heldout:
        notes.append("the zoo holds no held-out keys: nothing here shows adapters for unseen tasks")
    return {"kind": "adapters", "title": title, "samples_per_key": n, "summary": summary, "rows": rows,
            "notes": notes}


def write_adapters_report(report: dict, out_dir) -> None:
    """report.json and a per-key report.md."""
    def cells(r):
        g, t, c = r["generated"], r.get("trained") or {}, r.get("nearest_seen") or {}
        return [r["key"], f"{_fmt(g['mean'])} ({_fmt(g['worst'])})", _fmt(t.get("mean")), _fmt(r["base"]["mean"]),
                f"{_fmt(c.get('mean'))} ({c.get('bits_differ', '–')})", _fmt((r.get("regression") or {}).get("mean"))]

    write_split_report(report, out_dir, "keys", ["key", "generated mean (worst)", "trained", "base",
                                                 "nearest seen (bits)", "regression"], cells)
