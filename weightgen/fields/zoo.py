"""A ``fields`` zoo (``zoo.mode: fields``): one field network per item of a field family.

``zoo.runs`` is the number of fields, the family's first ``runs`` items (item i is run i, seeded
``seed + i``); the last ``zoo.heldout`` of them are held out, as in ``seeds`` mode. Every network is
fitted by ``fit_fields`` with Adam at ``train.lr`` (``train.optimizer`` must be ``adam``) for
``train.epochs`` passes over the field's coordinates, ``train.batch_size`` coordinates a step.
``zoo.init: shared`` starts every field from the same weights (drawn with the config's seed), which
keeps the networks of one zoo in one basin, as HyperDiffusion does; ``run`` starts each from its own.

Each run has one checkpoint, at its last step, with ``train_loss`` and ``train_psnr``; its condition
is ``{"class", "code", "item"}``, the code the one-hot class, so RPG's ``condition: task_code``
conditions on the class and ``weightgen sample GEN --classes 3`` asks for a 3. Fields are fitted
``CHUNK`` at a time and each chunk is written through ``ZooWriter`` as it finishes, so a killed
build loses at most one chunk and resumes with the fields not yet done.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from weightgen.nets import build_net
from weightgen.progress import progress_bar

from .digits import FieldFamily, get_family
from .fit import fit_fields

log = logging.getLogger(__name__)

# Fields fitted at once: large enough that the batched products dominate, small enough that a kill
# loses little (and activations stay small: CHUNK x batch_size x width floats).
CHUNK = 256


def zoo_family(cfg) -> FieldFamily:
    """The field family a ``fields`` zoo of ``cfg`` is built from (its task and the task's kwargs)."""
    from weightgen.zoo.store import ZooError

    try:
        return get_family(cfg.task.name, **cfg.task.kwargs)
    except (ValueError, TypeError) as e:
        raise ZooError(str(e)) from None


def plan_field_runs(cfg) -> list:
    """Every run of a ``fields`` zoo: item i of the family is run i, seeded ``seed + i``."""
    from weightgen.zoo.build import RunPlan
    from weightgen.zoo.store import ZooError

    z, family = cfg.zoo, zoo_family(cfg)
    if isinstance(z.heldout, list):
        raise ZooError("zoo.heldout is a list of codes, which only mode 'tasks' uses; give a number of fields")
    if z.runs > len(family):
        raise ZooError(f"zoo.runs asks for {z.runs} fields; task '{cfg.task.name}' has {len(family)}")
    if z.heldout >= z.runs:
        raise ZooError(f"zoo.heldout ({z.heldout}) must be smaller than zoo.runs ({z.runs})")
    return [RunPlan(i, cfg.seed + i, None, "heldout" if i >= z.runs - z.heldout else "train", family.condition(i))
            for i in range(z.runs)]


def build_field_zoo(cfg, path: Path, writer, show_progress: bool = True) -> dict:
    """Fit every field of ``cfg``'s zoo not yet done at ``path`` (``writer`` open on it); returns a summary."""
    from weightgen.zoo.build import _check_same_config, build_summary, redo_corrupt_runs
    from weightgen.zoo.store import ZooError

    from weightgen.zoo.build import _dist_info

    if _dist_info()[1] > 1:
        raise ZooError("zoo.mode 'fields' fits its fields in one process (many at once); build it without --procs")
    if cfg.train.optimizer != "adam":
        raise ZooError(f"zoo.mode 'fields' fits with Adam (stacked over the fields); set train.optimizer: adam, "
                       f"not {cfg.train.optimizer!r}")
    z = cfg.zoo
    if z.checkpoints != 1 or z.align != "none" or z.fold_bn:
        raise ZooError("zoo.mode 'fields' keeps one checkpoint per field, unaligned and unfolded: leave out "
                       "zoo.checkpoints, zoo.align and zoo.fold_bn")
    if cfg.zoo.init == "pretrained":
        raise ZooError("zoo.mode 'fields' starts fields from 'run' or 'shared' weights, not 'pretrained'")
    family = zoo_family(cfg)
    plans = plan_field_runs(cfg)
    dims = family.coords.shape[1]
    _check_same_config(writer, cfg, path)
    removed = writer.remove_orphans()
    if removed:
        log.info("removed %d orphaned shard file(s) left by an interrupted build", removed)
    net = build_net(cfg.net.name, (dims,), 1, seed=cfg.seed, **cfg.net.kwargs)
    redone = redo_corrupt_runs(writer)
    writer.set_config(cfg, net, (dims,), 1)
    done = writer.done_runs()
    todo = [p for p in plans if p.run not in done]
    n_points = family.coords.shape[0]
    steps = cfg.train.epochs * math.ceil(n_points / cfg.train.batch_size)
    with progress_bar(enabled=show_progress) as bar:
        job = bar.add_task(f"fields {path.name}", total=len(todo))
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            seeds = [p.seed if cfg.zoo.init == "run" else cfg.seed for p in chunk]
            items = [p.condition["item"] for p in chunk]
            t0 = time.perf_counter()
            stacked, psnr = fit_fields(cfg.net.name, family.coords, family.values[items], seeds, steps,
                                       lr=cfg.train.lr, batch_coords=cfg.train.batch_size, seed=cfg.seed,
                                       data_range=family.data_range, device=_device(cfg.device),
                                       **cfg.net.kwargs)
            seconds = (time.perf_counter() - t0) / len(chunk)
            for i, plan in enumerate(chunk):
                p = float(psnr[i])
                metrics = {"train_loss": family.data_range ** 2 * 10.0 ** (-p / 10.0), "train_psnr": p}
                writer.begin_run(plan.run, plan.seed, cfg.task.name, plan.condition, plan.split)
                writer.add_checkpoint(plan.run, 0, steps, {k: v[i].contiguous() for k, v in stacked.items()}, metrics)
                writer.finish_run(plan.run, seconds)
            bar.advance(job, len(chunk))
    return build_summary(plans, todo, redone)


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
