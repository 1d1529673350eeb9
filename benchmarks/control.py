"""CartPole policies generated for a prompted return (issue 59): prompt alignment, the share of policies
prompted for 500 that reach 475, what one generated step is worth in CMA-ES generations, policy
evaluations and environment interactions, generation against training wall time, the generator as a
black-box optimizer against CMA-ES with the same episode budget, and how long scoring 1,000 policies takes.

    python benchmarks/control.py [--runs 200] [--heldout 20] [--steps 4000] [--starts 10] [--tag T]

The zoo is the built-in config `cartpole` (weightgen/configs/cartpole.yaml) with ``--runs`` CMA-ES runs, the
last ``--heldout`` held out; the generator is its G.pt with ``--steps`` fit steps (reused from
benchmarks/work/control/ when already fitted with the same settings). Every number is measured from the
first checkpoint (the untrained initial weights) of ``--starts`` held-out runs:

- prompt alignment: 20 prompts spread over the zoo's range of test return, one policy each; R² of the achieved
  test return against the prompt (the identity line). Target: at least 0.9.
- solved share: ``--per-start`` policies prompted for 500 from each start; the share reaching 475 on the test
  episodes. Target: at least 80%.
- one step: each start's held-out run is CMA-ES from the same initial weights; it is rerun here with its mean
  scored at every generation, and the generations (and policy evaluations, environment interactions) it needs
  to reach the median return of the policies generated from that start are counted. Target: 100 optimizer steps.
- wall time: sampling one policy (one G.pt call, batch of one) against the first start's CMA-ES run trained
  alone until its mean first reaches 475 on the test episodes (its optimizer time: ask, play the population,
  tell); the generator's fit time stated beside it. Target: 100x less.
- black-box optimizer: ``--rounds`` rounds of ``--per-start`` policies generated for 500, each played on the
  train episodes; the best is kept and is the next round's start, prompted from its train return. CMA-ES
  from the same start gets the same number of episodes (its generations x population x episodes). Both
  are judged on the test episodes.
- seconds per solved generated policy: the sampling time of the policies prompted for 500 over the number of
  them that reach 475, set against the CMA-ES run alone.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from common import ROOT, command, machine, write_json, write_section
from weightgen.config import load_config
from weightgen.control.report import policy_strip, prompt_starts, prompted, r_squared
from weightgen.control.zoo import _Names, train_policies
from weightgen.generators import load_generator, set_sampling
from weightgen.pipeline import fit_generator, zoo_task
from weightgen.zoo import Zoo, build_zoo

WORK = ROOT / "benchmarks" / "work" / "control"
PICTURE = ROOT / "docs" / "benchmarks" / "control_policy.png"
PROMPTS = 20


def config(args):
    cfg = load_config(ROOT / "weightgen" / "configs" / "cartpole.yaml")
    zoo = cfg.zoo.model_copy(update={"runs": args.runs, "heldout": args.heldout})
    gen = cfg.generator.model_copy(update={"steps": args.steps})
    return cfg.model_copy(update={"zoo": zoo, "generator": gen})


def scoring_time(zoo: Zoo, task, net, count: int = 1000) -> dict:
    """Seconds to score ``count`` zoo policies (cycled; random to solved) on the test episodes in one call."""
    members = zoo.members("train")
    states = [zoo.load(members[i % len(members)]) for i in range(count)]
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    start = time.perf_counter()
    scores = task.evaluate(net, stacked, "test")
    seconds = time.perf_counter() - start
    return {"policies": count, "episodes_each": task.episodes, "seconds": seconds,
            "mean_return": float(scores.metrics["return"].mean())}


def cma_trace(cfg, task, net, seed: int, until: float | None = None) -> dict:
    """One CMA-ES run alone (the zoo's recipe and seed), its mean scored on the test episodes at every
    generation; ``seconds[g]``: optimizer time to reach generation g (scoring the mean excluded). With
    ``until``, it stops at the first generation whose mean reaches that test return."""
    names = _Names(net)
    gens, returns, interactions, seconds = [], [], [], []
    clock, t0 = 0.0, time.perf_counter()
    for g, means, inter in train_policies(net, task, [seed], cfg.train.epochs, cfg.train.batch_size, cfg.train.lr,
                                          list(range(cfg.train.epochs + 1)), [seed], cfg.net.name, cfg.net.kwargs):
        clock += time.perf_counter() - t0
        value = float(task.evaluate(net, names.stacked(means), "test").metrics["return"][0])
        gens.append(g), returns.append(value), interactions.append(int(inter[0])), seconds.append(clock)
        if until is not None and value >= until:
            break
        t0 = time.perf_counter()
    return {"generation": gens, "test_return": returns, "interactions": interactions, "seconds": seconds}


def cma_traces(cfg, task, net, seeds: list[int]) -> list[dict]:
    """The CMA-ES runs of ``seeds`` (the zoo's recipe), trained together, each mean scored on the test
    episodes at every generation (scored after training, all at once)."""
    names = _Names(net)
    kept = list(train_policies(net, task, seeds, cfg.train.epochs, cfg.train.batch_size, cfg.train.lr,
                               list(range(cfg.train.epochs + 1)), seeds, cfg.net.name, cfg.net.kwargs))
    means = np.concatenate([m for _, m, _ in kept])  # generation-major: (G + 1) * R rows
    returns = task.evaluate(net, names.stacked(means), "test").metrics["return"].view(len(kept), len(seeds))
    return [{"generation": [g for g, _, _ in kept], "test_return": returns[:, i].tolist(),
             "interactions": [int(x[i]) for _, _, x in kept]} for i in range(len(seeds))]


def blackbox(gen, zoo, task, net, start, rounds: int, per_round: int, seed: int, sampler: str, steps) -> list[dict]:
    """G.pt as a black-box optimizer: ``per_round`` policies prompted for 500 from the current start, each
    played on the train episodes; the best (by its train return) is the next round's start, prompted from
    that return. Returns, per round, the episodes spent so far and the kept policy's test return."""
    state, value, out, spent = zoo.load(start), start.metrics["train_return"], [], 0
    for r in range(rounds):
        batch = next(gen.sample(per_round, {"start": state, "start_metric": value, "target_metric": 500.0},
                                seed=seed + r, batch_size=per_round, sampler=sampler, steps=steps))
        train = task.evaluate(net, batch, "train").metrics["return"]
        spent += per_round * task.episodes
        best = int(train.argmax())
        if float(train[best]) >= value or r == 0:
            state, value = {k: v[best] for k, v in batch.items()}, float(train[best])
        test = float(task.evaluate(net, {k: v[None] for k, v in state.items()}, "test").metrics["return"][0])
        out.append({"episodes": spent, "train_return": value, "test_return": test})
    return out


def reach(trace: dict, value: float) -> int | None:
    """The first index of ``trace`` whose test return reaches ``value``; None if none does."""
    return next((i for i, r in enumerate(trace["test_return"]) if r >= value), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--heldout", type=int, default=20)
    p.add_argument("--steps", type=int, default=4000, help="G.pt fit steps")
    p.add_argument("--starts", type=int, default=10, help="held-out starts judged")
    p.add_argument("--per-start", type=int, default=10, help="policies prompted for 500 from each start")
    p.add_argument("--rounds", type=int, default=3, help="black-box rounds (sample, score, keep the best)")
    p.add_argument("--temperature", type=float, default=None, help="G.pt's sampling temperature (default: the config's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="")
    p.add_argument("--note", default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config(args)
    if args.temperature is not None:
        diff = cfg.generator.diffusion.model_copy(update={"temperature": args.temperature})
        cfg = cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"diffusion": diff})})
    zoo_dir = WORK / f"zoo-r{args.runs}-h{args.heldout}"
    t0 = time.perf_counter()
    build_zoo(cfg, zoo_dir, show_progress=False)
    zoo_seconds = time.perf_counter() - t0
    zoo = Zoo.open(zoo_dir)
    task, net = zoo_task(zoo), zoo.build_net().eval()
    gen_dir = WORK / f"gpt-r{args.runs}-h{args.heldout}-s{args.steps}"
    if (gen_dir / "fit.json").exists():
        fit = json.loads((gen_dir / "fit.json").read_text())
    else:
        gen, fit = fit_generator(cfg, zoo, show_progress=False)
        gen.save(gen_dir)
        (gen_dir / "fit.json").write_text(json.dumps(fit, default=float))
    gen = load_generator(gen_dir, "cpu")
    set_sampling(gen.spec, cfg.generator.diffusion.temperature)
    s = cfg.sample
    lo, hi = fit["metric_range"]
    print(f"zoo {len(zoo.members('train'))} train checkpoints, test return {lo:.1f}..{hi:.1f}; fit {fit['fit_seconds']:.0f} s",
          flush=True)

    scoring = scoring_time(zoo, task, net)
    print(f"scored {scoring['policies']} policies in {scoring['seconds']:.2f} s", flush=True)

    targets = [float(v) for v in np.linspace(lo, hi, PROMPTS)]
    starts = prompt_starts(zoo, args.starts)
    sweep = prompted(gen, zoo, task, net, targets, len(starts), s.seed, s.sampler, s.steps)
    r2 = r_squared(sweep["prompted"], sweep["achieved"])
    print(f"prompt R² {r2:.3f}", flush=True)

    traces = cma_traces(cfg, task, net, [m.seed for m in starts])
    alone = cma_trace(cfg, task, net, starts[0].seed, until=task.info.solved)  # timed alone, until solved
    print(f"CMA-ES traces done; run {starts[0].run} alone reaches {alone['test_return'][-1]:.0f} in "
          f"{alone['seconds'][-1]:.1f} s", flush=True)
    rows, picture_policy = [], None
    for i, start in enumerate(starts):
        one = prompted(gen, zoo, task, net, [500.0] * args.per_start, [start], s.seed + 1000 + i, s.sampler, s.steps)
        batch = one["policies"][0]
        achieved = np.asarray(one["achieved"])
        t1 = time.perf_counter()  # one policy, alone: the generation's wall time
        next(gen.sample(1, {"start": zoo.load(start), "start_metric": start.metrics[gen.spec.metric],
                            "target_metric": 500.0}, seed=s.seed + 2000 + i, batch_size=1, sampler=s.sampler,
                        steps=s.steps))
        one_seconds = time.perf_counter() - t1
        trace = traces[i]
        median = float(np.median(achieved))
        at = reach(trace, median)
        solved_at = reach(trace, task.info.solved)
        per_gen = cfg.train.batch_size * task.episodes  # episodes one CMA-ES generation plays
        bb = blackbox(gen, zoo, task, net, start, args.rounds, args.per_start, s.seed + 3000 + 10 * i, s.sampler,
                      s.steps)
        budget_gens = max(1, round(bb[-1]["episodes"] / per_gen))
        rows.append({
            "run": start.run, "start_return": start.metrics[gen.spec.metric],
            "achieved_500": achieved.tolist(), "solved_share": float((achieved >= task.info.solved).mean()),
            "median_achieved": median,
            "cma_generations_to_median": trace["generation"][at] if at is not None else None,
            "cma_policy_evaluations_to_median": trace["generation"][at] * cfg.train.batch_size if at is not None else None,
            "cma_interactions_to_median": trace["interactions"][at] if at is not None else None,
            "generated_interactions": 0,
            "cma_generations_to_solved": trace["generation"][solved_at] if solved_at is not None else None,
            "cma_seconds_to_solved": (alone["seconds"][-1] if i == 0 and alone["test_return"][-1] >= task.info.solved
                                      else None),
            "sample_one_seconds": one_seconds, "sample_batch_seconds": one["sample_seconds"],
            "blackbox": {"episodes": bb[-1]["episodes"], "rounds": bb, "generator_best_test": bb[-1]["test_return"],
                         "first_round_best_test": bb[0]["test_return"],
                         "cma_generations": budget_gens,
                         "cma_test": trace["test_return"][min(budget_gens, len(trace["test_return"]) - 1)]},
            "cma_trace": trace,
        })
        if picture_policy is None or achieved.max() > picture_policy[0]:
            picture_policy = (float(achieved.max()), {k: v[int(achieved.argmax())] for k, v in batch.items()})
        r = rows[-1]
        print(f"start run {start.run} ({r['start_return']:.0f}): 500-prompts {np.round(achieved).tolist()}, CMA-ES "
              f"reaches the median {median:.0f} at generation {r['cma_generations_to_median']}, solved at "
              f"{r['cma_generations_to_solved']}; one sample {one_seconds:.3f} s", flush=True)

    picture = policy_strip(zoo.build_net(), picture_policy[1], task.env_id, PICTURE, task.seeds("test")[0])
    solved_all = [a >= task.info.solved for r in rows for a in r["achieved_500"]]
    gens = [r["cma_generations_to_median"] for r in rows]
    reached = [g for g in gens if g is not None]
    train_secs = [r["cma_seconds_to_solved"] for r in rows if r["cma_seconds_to_solved"] is not None]
    one_secs = [r["sample_one_seconds"] for r in rows]
    summary = {
        "r2": r2, "solved_share": float(np.mean(solved_all)),
        "one_step_cma_generations_median": statistics.median(reached) if reached else None,
        "one_step_policy_evaluations_median": statistics.median(g * cfg.train.batch_size for g in reached) if reached else None,
        "one_step_interactions_median": statistics.median(r["cma_interactions_to_median"] for r in rows
                                                          if r["cma_interactions_to_median"] is not None) if reached else None,
        "starts_where_cma_reaches_the_median": len(reached),
        "cma_seconds_to_solved_median": statistics.median(train_secs) if train_secs else None,
        "sample_one_seconds_median": statistics.median(one_secs),
        "wall_time_ratio": (statistics.median(train_secs) / statistics.median(one_secs)) if train_secs else None,
        "wall_time_ratio_per_solved": None,
        "fit_seconds": fit["fit_seconds"],
        "blackbox_rounds": args.rounds, "blackbox_episodes": rows[0]["blackbox"]["episodes"],
        "blackbox_generator_best_test_mean": statistics.mean(r["blackbox"]["generator_best_test"] for r in rows),
        "blackbox_generator_first_round_test_mean": statistics.mean(r["blackbox"]["first_round_best_test"] for r in rows),
        "blackbox_generator_solved": sum(r["blackbox"]["generator_best_test"] >= 475 for r in rows),
        "blackbox_cma_solved": sum(r["blackbox"]["cma_test"] >= 475 for r in rows),
        "sample_seconds_per_solved_policy": (sum(r["sample_batch_seconds"] for r in rows) / sum(solved_all)
                                             if sum(solved_all) else None),
        "blackbox_cma_test_mean": statistics.mean(r["blackbox"]["cma_test"] for r in rows),
    }
    if summary["sample_seconds_per_solved_policy"] and train_secs:
        summary["wall_time_ratio_per_solved"] = statistics.median(train_secs) / summary["sample_seconds_per_solved_policy"]
    summary["targets"] = {"r2_ge_0.9": r2 >= 0.9, "solved_share_ge_0.8": summary["solved_share"] >= 0.8,
                          "one_step_ge_100_optimizer_steps": bool(reached) and summary["one_step_cma_generations_median"] >= 100,
                          # a solved policy: the sampling time per generated policy that reaches 475
                          "wall_time_ratio_ge_100": bool(summary["wall_time_ratio_per_solved"])
                          and summary["wall_time_ratio_per_solved"] >= 100}
    payload = {"command": command(), "machine": machine(), "note": args.note, "per_start": args.per_start, "zoo": {
        "runs": args.runs, "heldout": args.heldout, "train_checkpoints": len(zoo.members("train")),
        "test_return_range": [lo, hi], "build_seconds": zoo_seconds, "recipe": cfg.train.model_dump(),
        "episodes": task.episodes}, "generator": cfg.generator.model_dump(mode="json"), "fit": fit,
        "scoring": scoring, "summary": summary, "prompt_sweep": {k: sweep[k] for k in ("prompted", "achieved")},
        "starts": rows, "picture": {"file": str(PICTURE.relative_to(ROOT)), **picture}}
    name = f"control-{args.tag}" if args.tag else "control"
    path = write_json(name, payload)
    write_section(name, markdown(payload))
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")


def markdown(p: dict) -> str:
    s, z, f = p["summary"], p["zoo"], p["fit"]
    verdict = {True: "reached", False: "missed"}
    t = s["targets"]
    lines = [
        f"## CartPole policies for a prompted return: {z['runs']} CMA-ES runs ({z['heldout']} held out), G.pt {p['generator']['steps']} steps",
        "",
        f"Made by `{p['command']}` on {p['machine'].get('cpu') or p['machine'].get('platform')}"
        f" ({p['machine'].get('cpu_count', '?')} CPUs, {p['machine'].get('torch_threads')} torch thread(s)). {p['note']}",
        "",
        "| measure | value | target | verdict |",
        "|---|---|---|---|",
        f"| prompt alignment R² (20 prompts from each of {len(p['starts'])} held-out starts) | {s['r2']:.3f} | ≥ 0.9 | {verdict[t['r2_ge_0.9']]} |",
        f"| policies prompted for 500 reaching 475 | {100 * s['solved_share']:.0f}% | ≥ 80% | {verdict[t['solved_share_ge_0.8']]} |",
        f"| one generated step = CMA-ES generations (median over starts; policy evaluations; interactions) "
        f"| {s['one_step_cma_generations_median']} ({s['one_step_policy_evaluations_median']}; {s['one_step_interactions_median']}) "
        f"| ≥ 100 optimizer steps | {verdict[t['one_step_ge_100_optimizer_steps']]} |",
        f"| wall time: one CMA-ES run alone to 475 / one sampled policy (median) | {_f(s['cma_seconds_to_solved_median'])} s / "
        f"{s['sample_one_seconds_median']:.3f} s = {_f(s['wall_time_ratio'], '.1f')}x (fit {f['fit_seconds']:.0f} s) | – | – |",
        f"| a solved policy: one CMA-ES run alone to 475 / sampling time per generated policy reaching 475 | "
        f"{_f(s['wall_time_ratio_per_solved'], '.1f')}x ({_f(s['sample_seconds_per_solved_policy'], '.3f')} s per solved policy; "
        f"fit {f['fit_seconds']:.0f} s) | ≥ 100x | {verdict[t['wall_time_ratio_ge_100']]} |",
        f"| black box, {s['blackbox_episodes']} episodes ({s['blackbox_rounds']} rounds of {p['per_start']} prompted policies, "
        f"the best by train return kept and prompted from): test return, mean over starts (solved starts) | "
        f"G.pt {s['blackbox_generator_best_test_mean']:.1f} ({s['blackbox_generator_solved']} of {len(p['starts'])}; "
        f"first round {s['blackbox_generator_first_round_test_mean']:.1f}) vs CMA-ES's mean after as many episodes "
        f"{s['blackbox_cma_test_mean']:.1f} ({s['blackbox_cma_solved']}) | – | – |",
        f"| scoring {p['scoring']['policies']} policies x {p['scoring']['episodes_each']} episodes, one vectorized pass | "
        f"{p['scoring']['seconds']:.2f} s | – | – |",
        "",
        f"Zoo: {z['train_checkpoints']} training checkpoints, test return {z['test_return_range'][0]:.1f} to "
        f"{z['test_return_range'][1]:.1f}; this command's build time {z['build_seconds']:.0f} s (a zoo already built is reused).",
        "",
        "| start (run, return) | 500-prompts: median, share ≥ 475 | CMA-ES generations to that median | CMA-ES generations to 475 |",
        "|---|---|---|---|",
    ]
    for r in p["starts"]:
        lines.append(f"| {r['run']}, {r['start_return']:.0f} | {r['median_achieved']:.0f}, {100 * r['solved_share']:.0f}% "
                     f"| {_f(r['cma_generations_to_median'], 'd')} | {_f(r['cma_generations_to_solved'], 'd')} |")
    lines += ["", "The classification analogue (docs/results.md, 'Prompted metrics'): G.pt `units` prompted by test error "
                  "on the digits MLP, 1,000 SGD runs, reaches prompt R² 0.935 and one step worth 204 SGD steps; "
                  "test error, like a return, has no gradient."]
    lines += ["", f"![a generated policy balancing the pole](control_policy.png) (the best policy prompted for 500, "
                  f"test episode 0: return {p['picture']['return']:.0f})", ""]
    return "\n".join(lines)


def _f(v, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


if __name__ == "__main__":
    main()
