"""A ``policies`` zoo (``zoo.mode: policies``): trajectories of control policies trained by CMA-ES.

Each run is one CMA-ES run (the ``cma`` package, Hansen's reference implementation) from its own
seed's initial weights: a generation samples ``train.batch_size`` policies around the distribution's
mean, scores them by their mean return on the task's train episodes, and moves the mean toward the
best. CMA-ES needs no gradient of the return and scores a whole population at once, so the
populations of up to ``CHUNK`` runs are played in one vectorized pass (``envs.rollout``); a policy
of a hundred weights is solved in tens of generations, so hundreds of runs take minutes on two
cores, where a gradient method such as PPO trains one run in minutes.

``train.epochs`` is the number of generations, ``train.batch_size`` the population and ``train.lr``
CMA-ES's initial step size sigma0 (``train.optimizer``, ``momentum`` and ``weight_decay`` are not
used). A run's checkpoints are the distribution's mean at ``zoo.checkpoints`` generations from 0
(the initial weights) to the last, spaced as ``zoo.spacing`` says (``quadratic`` keeps more of the
early generations, where the return climbs), each with its return on every split and ``interactions``,
the environment steps CMA-ES has taken so far. The last ``zoo.heldout`` runs are held out.

Each run draws its samples from its own random state (``cma`` samples from numpy's global one, saved
and restored around each run's draws), so a run is the same whichever runs share its chunk; a chunk
is written as it finishes, and a killed build redoes the runs not marked done.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from weightgen.nets import build_net
from weightgen.progress import progress_bar

from .envs import ControlTask

log = logging.getLogger(__name__)

# Runs trained at once: their populations share one vector environment.
CHUNK = 128


def plan_policy_runs(cfg) -> list:
    """Every run of a ``policies`` zoo: run i seeded ``seed + i``; the last ``zoo.heldout`` held out."""
    from weightgen.zoo.build import RunPlan
    from weightgen.zoo.store import ZooError

    z = cfg.zoo
    if isinstance(z.heldout, list):
        raise ZooError("zoo.heldout is a list of codes, which only mode 'tasks' uses; give a number of runs")
    if z.heldout >= z.runs:
        raise ZooError(f"zoo.heldout ({z.heldout}) must be smaller than zoo.runs ({z.runs})")
    return [RunPlan(i, cfg.seed + i, None, "heldout" if i >= z.runs - z.heldout else "train") for i in range(z.runs)]


def kept_generations(cfg) -> list[int]:
    """The generations whose mean a run keeps, from 0 to ``train.epochs``."""
    from weightgen.zoo.build import trajectory_steps
    from weightgen.zoo.store import ZooError

    g, k = cfg.train.epochs, cfg.zoo.checkpoints
    if k == 1:
        return [g]
    if k > g + 1:
        raise ZooError(f"zoo.checkpoints ({k}) exceeds the {g + 1} means of a {g}-generation CMA-ES run "
                       "(train.epochs generations)")
    return trajectory_steps(g, k, cfg.zoo.spacing)


class _Names:
    """The policy's parameters as one flat vector and back (buffers kept from the initial weights)."""

    def __init__(self, net: torch.nn.Module):
        self.params = [(k, tuple(v.shape)) for k, v in net.named_parameters()]
        self.sizes = [int(np.prod(s)) for _, s in self.params]
        self.buffers = {k: v.detach().clone() for k, v in net.named_buffers()}

    def flat(self, net: torch.nn.Module) -> np.ndarray:
        return torch.cat([p.detach().flatten() for p in net.parameters()]).double().numpy()

    def stacked(self, x: np.ndarray) -> dict[str, torch.Tensor]:
        """``(B, D)`` flat vectors -> ``name -> (B, *shape)`` float32."""
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        out, at = {}, 0
        for (k, shape), n in zip(self.params, self.sizes):
            out[k] = x[:, at:at + n].reshape(len(x), *shape)
            at += n
        for k, v in self.buffers.items():
            out[k] = v[None].expand(len(x), *v.shape).clone()
        return out


def train_policies(net: torch.nn.Module, task: ControlTask, seeds: list[int], generations: int, popsize: int,
                   sigma0: float, keep: list[int], init_seeds: list[int], net_name: str, net_kwargs: dict):
    """CMA-ES runs trained together, one per seed; yields ``(generation, means (R, D), interactions (R,))`` at
    every generation in ``keep``. ``init_seeds`` seed each run's initial weights. ``interactions`` counts
    each run's environment steps so far."""
    import cma

    names = None
    starts = []
    for s in init_seeds:
        member = build_net(net_name, task.input_shape, task.num_classes, seed=s, **net_kwargs)
        names = names or _Names(member)
        starts.append(names.flat(member))
    runs, states = [], []
    saved = np.random.get_state()
    try:
        for s, x0 in zip(seeds, starts):
            np.random.seed(s % 2**32)
            runs.append(cma.CMAEvolutionStrategy(x0, sigma0, {"popsize": popsize, "seed": s % (2**32 - 1) + 1,
                                                              "verbose": -9, "maxiter": generations + 1}))
            states.append(np.random.get_state())
        interactions = np.zeros(len(runs), dtype=np.int64)
        train_seeds = task.seeds("train")
        for g in range(generations + 1):
            if g in keep:
                yield g, np.stack([es.mean for es in runs]), interactions.copy()
            if g == generations:
                break
            population = []
            for i, es in enumerate(runs):
                np.random.set_state(states[i])
                population.append(np.stack(es.ask()))
                states[i] = np.random.get_state()
            flat = np.concatenate(population)
            returns, lengths, _ = _rollout(net, names.stacked(flat), task, train_seeds)
            fitness = returns.mean(1).double().numpy().reshape(len(runs), popsize)
            interactions += lengths.sum(1).numpy().reshape(len(runs), popsize).sum(1)
            for i, es in enumerate(runs):
                es.tell(list(population[i]), list(-fitness[i]))  # cma minimizes
    finally:
        np.random.set_state(saved)


def _rollout(net, stacked, task: ControlTask, seeds: list[int]):
    from .envs import rollout

    return rollout(net, stacked, task.env_id, seeds)


def build_policy_zoo(cfg, path: Path, writer, show_progress: bool = True) -> dict:
    """Train every CMA-ES run of ``cfg``'s zoo not yet done at ``path`` (``writer`` open on it)."""
    from weightgen.tasks import get_task
    from weightgen.zoo.build import _check_same_config, _dist_info, build_summary, redo_corrupt_runs
    from weightgen.zoo.store import ZooError

    if _dist_info()[1] > 1:
        raise ZooError("zoo.mode 'policies' trains its runs in one process (many at once); build it without --procs")
    task = get_task(cfg.task.name, cfg.task.code, **cfg.task.kwargs)
    if not isinstance(task, ControlTask):
        raise ZooError(f"zoo.mode 'policies' needs a control task (cartpole, acrobot, control); "
                       f"'{cfg.task.name}' is a {task.kind} task")
    z = cfg.zoo
    if z.align != "none" or z.fold_bn or z.init == "pretrained":
        raise ZooError("zoo.mode 'policies' keeps CMA-ES's means as they are: leave out zoo.align, zoo.fold_bn "
                       "and zoo.init: pretrained")
    if cfg.train.batch_size < 2:
        raise ZooError(f"zoo.mode 'policies': train.batch_size is CMA-ES's population, at least 2; got "
                       f"{cfg.train.batch_size}")
    plans = plan_policy_runs(cfg)
    keep = kept_generations(cfg)
    _check_same_config(writer, cfg, path)
    removed = writer.remove_orphans()
    if removed:
        log.info("removed %d orphaned shard file(s) left by an interrupted build", removed)
    net = build_net(cfg.net.name, task.input_shape, task.num_classes, seed=cfg.seed, **cfg.net.kwargs)
    from .envs import check_policy

    check_policy(net, {k: v[None] for k, v in net.state_dict().items()}, task.env_id)
    redone = redo_corrupt_runs(writer)
    writer.set_config(cfg, net, task.input_shape, task.num_classes)
    net.eval()
    done = writer.done_runs()
    todo = [p for p in plans if p.run not in done]
    names = _Names(net)
    with progress_bar(enabled=show_progress) as bar:
        job = bar.add_task(f"policies {path.name}", total=len(todo))
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            init_seeds = [p.seed if z.init == "run" else cfg.seed for p in chunk]
            t0 = time.perf_counter()
            kept = []
            for g, means, interactions in train_policies(net, task, [p.seed for p in chunk], cfg.train.epochs,
                                                         cfg.train.batch_size, cfg.train.lr, keep, init_seeds,
                                                         cfg.net.name, cfg.net.kwargs):
                kept.append((g, names.stacked(means), interactions))
            seconds = (time.perf_counter() - t0) / len(chunk)
            # every kept mean of the chunk scored on every split at once
            allm = {k: torch.cat([s[k] for _, s, _ in kept]) for k in kept[0][1]}
            scores = {split: task.evaluate(net, allm, split).metrics["return"].view(len(kept), len(chunk))
                      for split in ("train", "val", "test")}
            for i, plan in enumerate(chunk):
                writer.begin_run(plan.run, plan.seed, cfg.task.name, plan.condition, plan.split)
                for c, (g, stacked, interactions) in enumerate(kept):
                    metrics = {f"{split}_return": float(scores[split][c, i]) for split in scores}
                    metrics["interactions"] = int(interactions[i])
                    writer.add_checkpoint(plan.run, c, g, {k: v[i].contiguous() for k, v in stacked.items()}, metrics)
                writer.finish_run(plan.run, seconds)
            bar.advance(job, len(chunk))
    return build_summary(plans, todo, redone)
