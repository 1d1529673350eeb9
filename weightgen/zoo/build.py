"""Build a zoo from a config: plan the runs, train the ones not done yet, store checkpoints.

Resuming is the default: runs already marked ``done`` are skipped, an interrupted run is
redone from its start, and so is a finished run whose shard is corrupt. Under ``torchrun``
every rank takes every ``world``-th run; rank 0 alone tidies orphans before the others start.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch.distributed as dist

from weightgen.config import ConfigError, ExperimentConfig, parse_config
from weightgen.nets import build_net, parameter_names
from weightgen.nets.fold_bn import FOLD_META, FoldError, fold_pairs
from weightgen.nets.permute import PermutationError
from weightgen.nets.symmetry import check_config as check_symmetry
from weightgen.progress import progress_bar
from weightgen.tasks import all_codes, get_task, parse_code

from .align import ALIGN_META, align_zoo
from .external import kept_zoo
from .fold import fold_zoo
from .store import ZooError, ZooWriter
from .train import Schedule, match_any, steps_per_epoch, train_member

log = logging.getLogger(__name__)

# The sections of a config that decide what a zoo contains: changing any of them
# on an existing zoo would mix two zoos in one manifest.
ZOO_SECTIONS = ("seed", "task", "net", "train", "zoo")


@dataclass
class RunPlan:
    """One run of a zoo: its number, its seed, its task code (``tasks`` mode) and its split."""

    run: int
    seed: int
    code: str | None = None
    split: str = "train"
    condition: dict = field(default_factory=dict)


def split_codes(cfg: ExperimentConfig, pool: list[str], parse: Callable[[str], str],
                what: str = "codes") -> tuple[list[str], list[str]]:
    """(training codes, held-out codes) from ``pool``, drawn with the config's seed: ``zoo.heldout`` as a
    number of codes or a list, ``zoo.codes`` as ``all`` the rest, a number of them or a list (each given
    code read by ``parse``). ``what`` names the codes in errors (``codes``, ``keys``)."""
    z = cfg.zoo
    rng = random.Random(cfg.seed)
    if isinstance(z.heldout, list):
        heldout = [parse(c) for c in z.heldout]
    else:
        heldout = sorted(rng.sample(pool, z.heldout)) if z.heldout else []
    rest = [c for c in pool if c not in set(heldout)]
    if z.codes == "all":
        train = rest
    elif isinstance(z.codes, int):
        if z.codes > len(rest):
            raise ZooError(f"zoo.codes asks for {z.codes} {what}; only {len(rest)} are left after the held-out ones")
        train = sorted(rng.sample(rest, z.codes))
    else:
        train = [parse(c) for c in z.codes]
        overlap = set(train) & set(heldout)
        if overlap:
            raise ZooError(f"{what} {sorted(overlap)} are both in zoo.codes and zoo.heldout")
    return train, heldout


def task_codes(cfg: ExperimentConfig) -> tuple[list[str], list[str]]:
    """(training codes, held-out codes) for ``tasks`` mode: 10-bit class-subset codes."""
    return split_codes(cfg, all_codes(10), lambda c: parse_code(c, 10))


def code_plans(cfg: ExperimentConfig, train: list[str], heldout: list[str]) -> list[RunPlan]:
    """``zoo.runs`` runs per training code, then per held-out code, the code stored as the condition."""
    plans = []
    for split, codes in (("train", train), ("heldout", heldout)):
        for code in codes:
            for _ in range(cfg.zoo.runs):
                i = len(plans)
                plans.append(RunPlan(i, cfg.seed + i, code, split, {"code": code}))
    return plans


def build_summary(plans: list[RunPlan], todo: list, redone: list | None = None) -> dict:
    """What a build returns: runs planned, trained now and kept from before, and runs redone for a corrupt shard."""
    summary = {"runs": len(plans), "trained": len(todo), "skipped": len(plans) - len(todo)}
    if redone:
        summary["redone"] = redone
    return summary


def plan_runs(cfg: ExperimentConfig) -> list[RunPlan]:
    """Every run of ``cfg``'s zoo, in order; run i is seeded with the config's seed + i."""
    z = cfg.zoo
    if z.mode == "fields":
        from weightgen.fields.zoo import plan_field_runs

        return plan_field_runs(cfg)
    if z.mode == "policies":
        from weightgen.control.zoo import plan_policy_runs

        return plan_policy_runs(cfg)
    if z.mode == "adapters":
        from weightgen.adapters.zoo import plan_adapter_runs

        return plan_adapter_runs(cfg)
    if z.mode == "tasks":
        return code_plans(cfg, *task_codes(cfg))
    if isinstance(z.heldout, list):
        raise ZooError("zoo.heldout is a list of codes, which only mode 'tasks' uses; give a number of runs")
    if z.heldout >= z.runs:
        raise ZooError(f"zoo.heldout ({z.heldout}) must be smaller than zoo.runs ({z.runs})")
    # The last `heldout` runs are held out: a fixed, documented choice.
    return [RunPlan(i, cfg.seed + i, None, "heldout" if i >= z.runs - z.heldout else "train") for i in range(z.runs)]


def trajectory_steps(main: int, k: int, spacing: str) -> list[int]:
    """``k`` distinct steps from 0 to ``main`` (both kept): ``main * (i / (k - 1))^p`` for
    ``p`` 1 (``linear``) or 2 (``quadratic``); needs ``2 <= k <= main + 1``."""
    power = {"linear": 1, "quadratic": 2}[spacing]
    # Rounding can crowd the first steps together: each step is pushed past the one before,
    # and kept below the room the later ones need, which still leaves ``main`` last.
    steps: list[int] = []
    for i in range(k):
        s = round(main * (i / (k - 1)) ** power)
        steps.append(min(max(s, steps[-1] + 1 if steps else 0), main - (k - 1 - i)))
    return steps


def make_schedule(cfg: ExperimentConfig, spe: int) -> Schedule:
    """Which steps of a run the zoo keeps, for ``zoo.mode``; ``spe`` is the steps per epoch."""
    z, main = cfg.zoo, cfg.train.epochs * spe
    if z.mode == "trajectory":
        if z.checkpoints == 1:
            return Schedule(main, [main])
        if z.checkpoints > main + 1:
            raise ZooError(f"zoo.checkpoints ({z.checkpoints}) exceeds the {main + 1} states of a {main}-step run")
        return Schedule(main, trajectory_steps(main, z.checkpoints, z.spacing))
    if z.mode == "tail":
        return Schedule(main, [main + z.every * (i + 1) for i in range(z.checkpoints)],
                        tail_steps=z.every * z.checkpoints, tail=tuple(z.tail))
    first = main - z.every * (z.checkpoints - 1)
    if first < 0:
        raise ZooError(
            f"zoo keeps {z.checkpoints} checkpoints {z.every} steps apart, but a run has only {main} steps "
            f"({cfg.train.epochs} epochs x {spe}); raise train.epochs or lower zoo.checkpoints/zoo.every"
        )
    return Schedule(main, [first + z.every * i for i in range(z.checkpoints)])


def pretrain(cfg: ExperimentConfig, base_task, spe: int) -> tuple[dict, dict]:
    """The network every run of ``zoo.init: pretrained`` fine-tunes: the zoo's recipe on the
    base task (all its classes), from the zoo seed's weights. Returns (state_dict, metrics)."""
    model = build_net(cfg.net.name, base_task.input_shape, base_task.num_classes, seed=cfg.seed, **cfg.net.kwargs)
    main = cfg.train.epochs * spe
    (_, state, metrics), = train_member(model, base_task, cfg.train, Schedule(main, [main]), cfg.seed, device=cfg.device)
    return state, metrics


def start_from(model, pretrained: dict) -> None:
    """Copy into ``model`` every pretrained tensor of the same shape; the rest (a head for
    another number of classes) keeps the model's own initial values."""
    own = model.state_dict()
    model.load_state_dict({k: pretrained[k] if k in pretrained and pretrained[k].shape == v.shape else v
                           for k, v in own.items()})


def _check_same_config(writer: ZooWriter, cfg: ExperimentConfig, path: Path) -> None:
    """Refuse to resume a zoo built from other ``ZOO_SECTIONS``, naming the first that differs."""
    stored = writer.get_meta("config")
    if stored is None:
        return
    try:  # read with today's defaults: a setting added since, at its default, changes nothing
        stored = parse_config(stored, f"{path} (stored config)", stored=True).model_dump(mode="json")
    except ConfigError:
        pass  # a setting since removed or renamed: compared as stored, so the error names the section
    new = cfg.model_dump(mode="json")
    for key in ZOO_SECTIONS:
        if stored.get(key) != new.get(key):
            raise ZooError(
                f"{path} was built with a different '{key}' section ({stored.get(key)!r}, now {new.get(key)!r}); "
                "use another zoo path or the original config"
            )


def redo_corrupt_runs(writer: ZooWriter) -> list[int]:
    """The finished runs with a corrupt shard (``ZooWriter.corrupt_runs``), marked unfinished so that
    the build redoes them; each is named in a warning. Folding and alignment are then run again
    (both skip what is already done), so the redone runs' checkpoints get them too."""
    bad = writer.corrupt_runs()
    for run, problems in bad.items():
        log.warning("run %d is trained again: %s", run, "; ".join(problems))
    if bad:
        writer.reopen_runs(list(bad))
        writer.delete_meta(FOLD_META)
        writer.delete_meta(ALIGN_META)
        writer.delete_meta("compress")  # weightgen.compress.zoo.COMPRESS_META: the redone runs are compressed too
    return sorted(bad)


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_zoo(cfg: ExperimentConfig, path: str | Path, show_progress: bool = True) -> dict:
    """Train every run of ``cfg`` not yet in the zoo at ``path``; returns a small summary."""
    path = Path(path)
    rank, world = _dist_info()
    # Rank 0 creates the manifest (schema, WAL mode) alone: SQLite answers "database is locked"
    # without waiting when two processes switch a new file to WAL at the same moment.
    if world > 1 and rank != 0:
        dist.barrier()
    writer = ZooWriter(path)
    if world > 1 and rank == 0:
        dist.barrier()
    try:
        kept = kept_zoo(cfg, writer, path)  # imported or recorded checkpoints: nothing to train
        if kept is not None:
            return kept
        if cfg.zoo.mode == "fields":  # fitted many at once (weightgen.fields.zoo)
            from weightgen.fields.zoo import build_field_zoo

            return build_field_zoo(cfg, path, writer, show_progress)
        if cfg.zoo.mode == "policies":  # CMA-ES runs trained many at once (weightgen.control.zoo)
            from weightgen.control.zoo import build_policy_zoo

            return build_policy_zoo(cfg, path, writer, show_progress)
        if cfg.zoo.mode == "adapters":  # peft LoRA adapters on a base made first (weightgen.adapters.zoo)
            from weightgen.adapters.zoo import build_adapter_zoo

            return build_adapter_zoo(cfg, path, writer, show_progress)
        return _build(cfg, path, writer, show_progress)
    finally:
        writer.close()


def _build(cfg: ExperimentConfig, path: Path, writer: ZooWriter, show_progress: bool) -> dict:
    rank, world = _dist_info()
    plans = plan_runs(cfg)
    base_task = get_task(cfg.task.name, cfg.task.code, **cfg.task.kwargs)
    redone: list[int] = []
    if rank == 0:
        _check_same_config(writer, cfg, path)
        removed = writer.remove_orphans()
        if removed:
            log.info("removed %d orphaned shard file(s) left by an interrupted build", removed)
        net = build_net(cfg.net.name, base_task.input_shape, 2 if cfg.zoo.mode == "tasks" else base_task.num_classes,
                        seed=cfg.seed, **cfg.net.kwargs)
        tail = list(cfg.zoo.tail)
        if tail and not any(match_any(n, tail) for n in parameter_names(net)):
            raise ZooError(f"zoo.tail patterns {tail} match no parameter of net '{cfg.net.name}'")
        try:  # zoo.align and G.pt permute hidden units: say so before any run is trained if none are found
            check_symmetry(cfg, {"name": cfg.net.name, "kwargs": cfg.net.kwargs,
                                 "input_shape": list(base_task.input_shape)}, net)
        except PermutationError as e:
            raise ZooError(str(e)) from None
        if cfg.zoo.fold_bn:  # say so before any run is trained
            try:
                pairs = fold_pairs(net)
            except FoldError as e:
                raise ZooError(f"zoo.fold_bn: {e}") from None
            if not pairs:
                raise ZooError(f"zoo.fold_bn: net '{cfg.net.name}' has no BatchNorm right after a conv or linear "
                               "layer to fold; use zoo.fold_bn: false")
        redone = redo_corrupt_runs(writer)  # after every check of the config: a refused build changes nothing
        writer.set_config(cfg, net, base_task.input_shape, 2 if cfg.zoo.mode == "tasks" else base_task.num_classes)
    if world > 1:
        dist.barrier()
    done = writer.done_runs()
    todo = [p for p in plans if p.run % world == rank and p.run not in done]
    spe = steps_per_epoch(base_task, cfg.train.batch_size)
    schedule = make_schedule(cfg, spe)
    pretrained = None
    if cfg.zoo.init == "pretrained" and todo:  # recomputed on resume: seeded, so the same network
        pretrained, metrics = pretrain(cfg, base_task, spe)
        if rank == 0:
            writer.set_meta("pretrained_metrics", metrics)
    with progress_bar(enabled=show_progress and rank == 0) as bar:
        job = bar.add_task(f"zoo {path.name}", total=len(todo))
        for plan in todo:
            task = get_task(cfg.task.name, plan.code, **cfg.task.kwargs) if plan.code else base_task
            init_seed = plan.seed if cfg.zoo.init == "run" else cfg.seed
            model = build_net(cfg.net.name, task.input_shape, task.num_classes, seed=init_seed, **cfg.net.kwargs)
            if pretrained is not None:
                start_from(model, pretrained)
            writer.begin_run(plan.run, plan.seed, task.name, plan.condition, plan.split)
            timing: dict = {}
            for i, (step, state, metrics) in enumerate(train_member(model, task, cfg.train, schedule, plan.seed, timing, cfg.device)):
                writer.add_checkpoint(plan.run, i, step, state, metrics)
            writer.finish_run(plan.run, timing["train_seconds"])
            bar.advance(job)
    if world > 1:
        dist.barrier()
    summary = {"runs": len(plans), "trained": len(todo), "skipped": len([p for p in plans if p.run in done])}
    if rank == 0 and redone:
        summary["redone"] = redone
    if cfg.zoo.fold_bn and rank == 0:  # every run is done here (the barrier above); before aligning
        summary["bn_folded"] = fold_zoo(path, writer)
    if cfg.zoo.align != "none" and rank == 0:  # every run is done here (the barrier above)
        summary["aligned"] = align_zoo(path, writer, cfg.seed)
    if cfg.zoo.compress is not None and rank == 0:  # last: the masks are in the aligned order
        from weightgen.compress.zoo import compress_zoo

        summary["compressed"] = compress_zoo(cfg, path, writer)
    return summary
