"""``zoo.compress``: every checkpoint of a finished zoo pruned and/or quantized, judged as what it is.

Runs once every run is trained, after ``fold_bn`` and ``align`` (a shared mask is then in the aligned
order). Each checkpoint is pruned by the recipe (``prune.py``), quantized (``quantize.py``), rescored on
every split (its metrics are now the compressed network's), rewritten dense in its shard
(``ZooWriter.replace_checkpoint``, never half-written) and written compactly to
``compressed/c<id>.safetensors`` (``store.py``). Progress is recorded per checkpoint, so an interrupted
pass resumes where it stopped (a checkpoint killed between its rewrite and its record is done again: pruning
keeps a pruned checkpoint's mask, and snapping is idempotent); the zoo's metadata ``compress`` records the spec, which tensors were
pruned and quantized, each one's density, whether every training checkpoint shares one mask, and the
bytes of the dense and compact forms.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from weightgen.config import ExperimentConfig
from weightgen.tasks import get_task
from weightgen.zoo.store import SHARDS, Member, Zoo, ZooWriter
from weightgen.zoo.train import resolve_device, score, steps_per_epoch

from .prune import magnitude_masks, prune_checkpoint, targets
from .quantize import snap
from .store import read_masks, write_compact

log = logging.getLogger(__name__)

COMPRESS_META = "compress"
PROGRESS_META = "compress_progress"
COMPACT_DIR = "compressed"
SHARED_MASK = "shared_mask.safetensors"


def compact_path(root: str | Path, member: Member) -> Path:
    return Path(root) / COMPACT_DIR / f"c{member.id:06d}.safetensors"


def zoo_masks(zoo: Zoo, member: Member) -> dict[str, Tensor]:
    """The masks of a pruned zoo's checkpoint (empty when the zoo is not pruned)."""
    record = zoo.meta(COMPRESS_META)
    if not record or not record.get("pruned"):
        return {}
    return read_masks(compact_path(zoo.root, member))


def shared_mask(zoo: Zoo, spec, root: Path) -> dict[str, Tensor]:
    """``mask: shared``: one mask for the zoo, from the mean magnitude of its training checkpoints
    (written once, so a resumed pass uses the same)."""
    path = root / COMPACT_DIR / SHARED_MASK
    if path.is_file():
        return {k: v.bool() for k, v in load_file(str(path)).items()}
    members = zoo.members("train")
    model = zoo.build_net()
    names = [full for _, _, full in targets(model, spec.include)]
    mean = {n: torch.zeros_like(model.state_dict()[n]) for n in names}
    for m in members:
        state = zoo.load(m, names)
        for n in names:
            mean[n] += state[n].abs() / len(members)
    model.load_state_dict(mean, strict=False)
    masks = magnitude_masks(model, spec.include, spec.sparsity, spec.scope)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.uint8) for k, v in masks.items()}, str(path))
    return masks


def compress_zoo(cfg: ExperimentConfig, path: str | Path, writer: ZooWriter) -> dict:
    """Compress every checkpoint of the zoo at ``path`` as ``cfg.zoo.compress`` says; returns (and
    stores as metadata ``compress``) the record described in the module doc."""
    done = writer.get_meta(COMPRESS_META)
    if done is not None:
        return done
    spec, root = cfg.zoo.compress, Path(path)
    pspec, qspec = spec.prune, spec.quantize
    progress = set(writer.get_meta(PROGRESS_META, []))
    task = get_task(cfg.task.name, cfg.task.code, **cfg.task.kwargs)
    device = resolve_device(cfg.device)
    main_steps = cfg.train.epochs * steps_per_epoch(task, cfg.train.batch_size)
    tail = tuple(cfg.zoo.tail) if cfg.zoo.mode == "tail" else ()
    with Zoo.open(path) as zoo:
        probe = zoo.build_net()
        pruned = [full for _, _, full in targets(probe, pspec.include)] if pspec else []
        quantized = [full for _, _, full in targets(probe, qspec.include)] if qspec else []
        shared = shared_mask(zoo, pspec, root) if pspec and pspec.mask == "shared" else None
        members = zoo.members(None)
        for m in members:
            if m.id in progress:
                continue
            model = zoo.build_net()
            stored = zoo.load(m)
            order = list(stored)
            model.load_state_dict(stored)
            masks: dict[str, Tensor] = {}
            if pspec:
                init = None
                if pspec.recipe == "lottery":
                    init = zoo.build_net(seed=m.seed if cfg.zoo.init == "run" else cfg.seed).state_dict()
                masks, metrics = prune_checkpoint(model, pspec, task, cfg.train, m.seed, init, main_steps, shared,
                                                  cfg.device, tail)
            pruned_state = model.state_dict()  # pruning re-registers parameters: back to the stored order
            state = {k: pruned_state[k].detach().cpu().clone() for k in order}
            if qspec:
                state.update({n: snap(state[n], qspec.bits) for n in quantized})
                model.load_state_dict(state)
            if qspec or not pspec:
                metrics = score(model.to(device), task, device)
            write_compact(compact_path(root, m), state, masks, qspec.bits if qspec else None, quantized)
            writer.replace_checkpoint(m, state, metrics=metrics)
            progress.add(m.id)
            writer.set_meta(PROGRESS_META, sorted(progress))
    with Zoo.open(path) as zoo:
        info = record(zoo, spec.model_dump(mode="json"), pruned, quantized)
    writer.set_meta(COMPRESS_META, info)  # the progress stays: runs redone later are compressed alone
    log.info("compressed %d checkpoints: density %.3f, %d -> %d bytes", len(members), info.get("density", 1.0),
             info["dense_bytes"], info["compact_bytes"])
    return info


def record(zoo: Zoo, spec: dict, pruned: list[str], quantized: list[str]) -> dict:
    """What the zoo's metadata says of its compression (module doc)."""
    members = zoo.members(None)
    train_ids = {m.id for m in zoo.members("train")}
    info = {"spec": spec, "pruned": pruned, "quantized": quantized,
            "bits": (spec.get("quantize") or {}).get("bits"),
            "dense_bytes": sum((zoo.root / SHARDS / m.shard).stat().st_size for m in members),
            "compact_bytes": sum(compact_path(zoo.root, m).stat().st_size for m in members)}
    if pruned:
        first, kept, total, same = None, {n: 0 for n in pruned}, {n: 0 for n in pruned}, True
        for m in members:
            masks = read_masks(compact_path(zoo.root, m))
            for n in pruned:
                kept[n] += int(masks[n].sum())
                total[n] += masks[n].numel()
            if m.id in train_ids:
                if first is None:
                    first = masks
                else:
                    same = same and all(torch.equal(first[n], masks[n]) for n in pruned)
        info["densities"] = {n: kept[n] / total[n] for n in pruned}
        info["density"] = sum(kept.values()) / sum(total.values())
        info["masks_shared"] = same
    return info
