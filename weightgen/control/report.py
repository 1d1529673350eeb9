"""What ``weightgen run`` writes for a ``policies`` zoo: policies generated for a prompted return.

A generator conditioned on a return (G.pt: a start checkpoint, its return and the return wanted;
RPG with ``condition: metric``: the return wanted alone) is prompted with ``PROMPTS`` returns spread
evenly over the zoo's range, from ``sample.n``'s worth of starts: G.pt from the first checkpoints
(the untrained initial weights) of the held-out runs, RPG from as many seeds. Every policy is played
on the task's episodes of the metric's split, and the report gives the prompt alignment (R² of the
achieved against the prompted return, against the identity line), the share of policies prompted for
the zoo's best return that reach the environment's solved return, the usual judgement of those best-
prompted policies against the zoo's originals and baselines (``evaluate.judge``), and a strip of
frames of the best generated policy playing one test episode (``policy.png``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from weightgen.generators import GeneratorError

from .envs import ControlTask, env_info

# Prompts per start, spread evenly over the zoo's range of the metric (the 20).
PROMPTS = 20


def r_squared(prompted, achieved) -> float:
    """R² against the identity line: 1 - sum (achieved - prompted)² / sum (prompted - mean prompted)²."""
    p, a = np.asarray(prompted, dtype=float), np.asarray(achieved, dtype=float)
    ss = float(((p - p.mean()) ** 2).sum())
    return float(1.0 - ((a - p) ** 2).sum() / ss) if ss > 0 else float("nan")


def metric_range(zoo, metric: str) -> tuple[float, float]:
    """The range of ``metric`` over the zoo's training checkpoints."""
    from weightgen.generators.base import member_metric

    values = [member_metric(m, metric) for m in zoo.members("train")]
    return min(values), max(values)


def prompt_starts(zoo, count: int) -> list:
    """G.pt's starts: the first checkpoint of each of the first ``count`` held-out runs (training runs
    where the zoo holds none out)."""
    members = zoo.members("heldout") or zoo.members("train")
    firsts: dict[int, object] = {}
    for m in members:
        if m.run not in firsts or m.step < firsts[m.run].step:
            firsts[m.run] = m
    return [firsts[r] for r in sorted(firsts)][:count]


def prompted(gen, zoo, task: ControlTask, net, targets: list[float], starts, seed: int = 0,
             sampler: str = "ddim", steps: int | None = None) -> dict:
    """Policies generated for each of ``targets`` from ``starts`` starts (a number, or G.pt's start
    checkpoints as zoo members), and the returns they achieve on the metric's split. Returns prompted
    and achieved returns (one per policy), the stacked policies, and the seconds spent sampling."""
    metric = gen.spec.metric
    split = metric.partition("_")[0]
    out = {"prompted": [], "achieved": [], "start_return": [], "policies": [], "sample_seconds": 0.0}
    if gen.method == "gpt":
        for i, member in enumerate(prompt_starts(zoo, starts) if isinstance(starts, int) else starts):
            start_value = member.metrics[metric]
            t0 = time.perf_counter()
            batch = next(gen.sample(len(targets), {"start": zoo.load(member), "start_metric": start_value,
                                                   "target_metric": list(targets)},
                                    seed=seed + i, batch_size=len(targets), sampler=sampler, steps=steps))
            out["sample_seconds"] += time.perf_counter() - t0
            _add(out, task, net, batch, split, targets, start_value)
    elif getattr(gen.spec, "condition", None) == "metric":
        for j, target in enumerate(targets):
            t0 = time.perf_counter()
            batch = next(gen.sample(starts, target, seed=seed + j, batch_size=starts, sampler=sampler, steps=steps))
            out["sample_seconds"] += time.perf_counter() - t0
            _add(out, task, net, batch, split, [target] * starts, None)
    else:
        raise GeneratorError(f"a policies zoo is sampled for a prompted return: use generator.method gpt, or rpg "
                             f"with condition: metric (got {gen.method} with condition "
                             f"{getattr(gen.spec, 'condition', 'none')!r})")
    return out


def _add(out: dict, task, net, batch: dict, split: str, targets: list[float], start_value) -> None:
    scores = task.evaluate(net, batch, split)
    out["prompted"] += [float(t) for t in targets]
    out["achieved"] += [float(v) for v in scores.metrics["return"]]
    out["start_return"] += [start_value] * len(targets)
    out["policies"].append(batch)


def stacked_rows(batches: list[dict], rows) -> dict[str, torch.Tensor]:
    """The policies at ``rows`` of the concatenated ``batches``."""
    cat = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    return {k: v[list(rows)] for k, v in cat.items()}


def policy_strip(net, state: dict[str, torch.Tensor], env_id: str, path: Path, seed: int, frames: int = 8) -> dict:
    """A PNG strip of ``frames`` frames of one greedy episode (seeded ``seed``) of the policy ``state``,
    evenly spread over the episode; returns the episode's return and length."""
    import gymnasium as gym
    from PIL import Image

    env_info(env_id)
    env = gym.make(env_id, render_mode="rgb_array")
    shots, total = [], 0.0
    try:
        obs, _ = env.reset(seed=seed)
        net.load_state_dict(state)
        net.eval()
        while True:
            shots.append(env.render())
            with torch.no_grad():
                action = int(net(torch.as_tensor(obs, dtype=torch.float32)[None]).argmax(-1))
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            if terminated or truncated:
                shots.append(env.render())
                break
    finally:
        env.close()
    picks = sorted({round(i * (len(shots) - 1) / (frames - 1)) for i in range(frames)})
    h, w = shots[0].shape[:2]
    rows = np.nonzero((np.stack([shots[k] for k in picks]) < 250).any(axis=(0, 2, 3)))[0]  # the drawn part
    top, bottom = (max(0, int(rows[0]) - 10), min(h, int(rows[-1]) + 10)) if len(rows) else (0, h)
    scale = 0.5
    fw, fh = int(w * scale), int((bottom - top) * scale)
    strip = Image.new("RGB", (fw * len(picks) + 4 * (len(picks) - 1), fh), "white")
    for i, k in enumerate(picks):
        strip.paste(Image.fromarray(shots[k][top:bottom]).resize((fw, fh)), (i * (fw + 4), 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path)
    return {"return": total, "steps": len(shots) - 1, "frames_at_steps": picks}


def control_report(gen, zoo, cfg, run_dir: Path, title: str) -> dict:
    """Prompt alignment, the share solved when prompted for the best return, the judgement of those
    policies, and the picture; written to ``run_dir`` (report.json, report.md, policy.png)."""
    from weightgen.evaluate.report import markdown
    from weightgen.pipeline import evaluate_samples, zoo_task

    task = zoo_task(zoo)
    net = zoo.build_net().eval()
    metric = gen.spec.metric
    lo, hi = metric_range(zoo, metric)
    info = task.info
    s = cfg.sample
    starts = max(1, min(s.n // PROMPTS, 10)) if gen.method == "gpt" else max(1, s.n // PROMPTS)
    targets = [float(v) for v in np.linspace(lo, hi, PROMPTS)]
    sweep = prompted(gen, zoo, task, net, targets, starts, s.seed, s.sampler, s.steps)
    best = prompted(gen, zoo, task, net, [hi] * max(1, s.n // max(starts, 1)), starts, s.seed + 1000, s.sampler,
                    s.steps)
    achieved = np.asarray(best["achieved"])
    solved = float((achieved >= info.solved).mean())
    judged = evaluate_samples(zoo, best["policies"], gen.tokenizer.names, None, cfg, title=title)
    top = int(achieved.argmax())
    picture = policy_strip(net, {k: v[0] for k, v in stacked_rows(best["policies"], [top]).items()}, task.env_id,
                           run_dir / "policy.png", task.seeds("test")[0])
    report = {**judged, "prompted": {
        "metric": metric, "zoo_range": [lo, hi], "prompts_per_start": PROMPTS, "starts": starts,
        "prompted": sweep["prompted"], "achieved": sweep["achieved"], "r2": r_squared(sweep["prompted"], sweep["achieved"]),
        "best_prompt": hi, "best_prompt_returns": best["achieved"], "solved_return": info.solved,
        "share_solved": solved, "sample_seconds": sweep["sample_seconds"] + best["sample_seconds"],
        "num_policies": len(sweep["achieved"]) + len(achieved)}, "picture": {"file": "policy.png", **picture}}
    p = report["prompted"]
    report["notes"] = [f"prompted {metric} over the zoo's range {lo:.1f} to {hi:.1f}: R² of achieved against prompted "
                       f"{p['r2']:.3f} ({len(p['prompted'])} policies from {starts} held-out starts)",
                       f"prompted for {hi:.1f}: {100 * solved:.0f}% of {len(achieved)} policies reach "
                       f"{info.solved:.0f} (mean {achieved.mean():.1f})", *report["notes"]]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    (run_dir / "report.md").write_text(prompt_markdown(report) + "\n" + markdown(report).split("\n", 1)[1])
    return report


def prompt_markdown(report: dict) -> str:
    """The prompted part of report.md: alignment by prompt, the share solved, and the picture."""
    p = report["prompted"]
    by = {}
    for t, a in zip(p["prompted"], p["achieved"]):
        by.setdefault(round(t, 1), []).append(a)
    lines = [f"# {report['title']}", "",
             f"Prompted {p['metric']} over the zoo's range {p['zoo_range'][0]:.1f} to {p['zoo_range'][1]:.1f}: "
             f"R² of achieved against prompted **{p['r2']:.3f}** ({len(p['prompted'])} policies, "
             f"{p['prompts_per_start']} prompts from each of {p['starts']} starts).",
             f"Prompted for {p['best_prompt']:.1f}: **{100 * p['share_solved']:.0f}%** of {len(p['best_prompt_returns'])} "
             f"policies reach the solved return {p['solved_return']:.0f} (mean {np.mean(p['best_prompt_returns']):.1f}).",
             "", "| prompted | achieved (mean) | achieved (min) | achieved (max) |", "|---|---|---|---|"]
    lines += [f"| {t:.1f} | {np.mean(a):.1f} | {min(a):.1f} | {max(a):.1f} |" for t, a in sorted(by.items())]
    pic = report["picture"]
    lines += ["", f"The best policy prompted for {p['best_prompt']:.1f} on test episode 0 (return {pic['return']:.0f}, "
                  f"{pic['steps']} steps; frames at steps {pic['frames_at_steps']}):", "", "![policy](policy.png)", ""]
    return "\n".join(lines)
