"""``Recorder``: checkpoints from your own training loop, written into a zoo as a build writes them.

::

    with Recorder("zoos/mine", net={"name": "mlp", "hidden": [37, 23]}, task="digits") as rec:
        for step in range(steps):
            ...                                   # your own optimizer step
            if step % 50 == 0:
                rec.record(model, run=seed, step=step, metrics={"test_loss": loss})

Each ``record`` writes one shard (temporary name, fsync, rename) and then its row, so a kill loses at
most the checkpoint being written. A run is visible to readers from its first checkpoint on, and
reopening the folder appends to it. The zoo stores the config it implies (``external.implied_zoo``),
so ``zoo info``, ``train``, ``run --zoo``, ``sample`` and ``eval`` read it as a built one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from weightgen.config import ExperimentConfig

from .external import ORIGIN_META, CheckpointError, Target, check_same_sections, external_config, implied_zoo, \
    write_meta
from .store import ZooWriter


class Recorder:
    """Appends checkpoints of a user's training loop to the zoo at ``path``.

    Args:
        path: the zoo folder; created, or appended to when it holds a recorded zoo of the same net and task.
        net: the architecture, as a config's ``net`` section: a name (``"mlp"``, ``"my_pkg.nets:make_net"``),
            a dict (``{"name": "mlp", "hidden": [37, 23]}``) or a ``NetSpec``.
        task: the task, likewise: what the checkpoints are scored on and what the zoo's config names.
        config: optional; a config (or its sections as a dict) whose other sections the zoo records.
        evaluate: score every checkpoint on the task as a build does (``zoo.train.score``), besides the
            metrics given to ``record``.
        mode: the zoo mode recorded (default: ``seeds`` while every run has one checkpoint, else
            ``trajectory``; ``tasks`` when every run has a class-subset ``code`` condition).
        seed, device: the config's seed and device (evaluation runs there).
    """

    def __init__(self, path: str | Path, net: Any = None, task: Any = None, *,
                 config: ExperimentConfig | dict | None = None, evaluate: bool = False, mode: str | None = None,
                 seed: int | None = None, device: str | None = "cpu"):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise CheckpointError(f"{self.path}: is a file; a recorder writes a zoo folder")
        self.cfg = external_config(net, task, config, seed=seed, device=device)
        self.evaluate = evaluate
        self.mode = mode
        self._writer = ZooWriter(self.path)
        try:
            stored = self._writer.get_meta("config")
            if stored is not None and self._writer.get_meta(ORIGIN_META) is None:
                raise CheckpointError(f"{self.path}: a zoo built by `weightgen zoo build`; record into another folder")
            check_same_sections(stored, self.cfg, self.path)
            self._writer.remove_orphans()  # a shard whose row a kill prevented
            self._runs = self._writer.run_rows()
            for run, info in self._runs.items():  # a kill between a run's first row and its 'done' mark
                if info["status"] != "done" and info["steps"]:
                    self._writer.finish_run(run)
                    info["status"] = "done"
            stored_net = self._writer.get_meta("net_build")
            binary = bool(stored_net) and stored_net["num_classes"] == 2 and any(
                "code" in r["condition"] for r in self._runs.values())
            self._target = Target(self.cfg, binary=binary, device=self.cfg.device)
            self._origin = self._writer.get_meta(ORIGIN_META) or {"kind": "recorder"}
            self._write_meta()
        except BaseException:
            self._writer.close()
            raise

    # -- recording ---------------------------------------------------------------------------------
    def record(self, model_or_state_dict: nn.Module | dict, run: int = 0, step: int | None = None,
               metrics: dict | None = None, condition: dict | None = None, split: str = "train") -> str:
        """Store one checkpoint of ``run`` at ``step`` (default: the run's count of checkpoints so far).

        ``metrics``: numbers by name (``test_loss``, ``val_accuracy``, ...); with ``evaluate`` the task's
        scores are added. ``condition``: what a conditional generator is told (``{"code": "0100100001"}``
        for a class-subset task); ``split``: ``train``, or ``heldout`` for runs the generator never sees.
        A run has one split and condition. Returns the shard's file name.
        """
        if self._writer is None:
            raise CheckpointError(f"{self.path}: the recorder is closed")
        if split not in ("train", "heldout"):
            raise CheckpointError(f"split is train or heldout, got {split!r}")
        condition = dict(condition or {})
        if "code" in condition:
            from weightgen.tasks import parse_code

            condition["code"] = parse_code(condition["code"], self._target.task.num_classes)
        if ("code" in condition) != self._target.binary:
            if any(r["steps"] for r in self._runs.values()):
                has = "has a" if "code" in condition else "has no"
                raise CheckpointError(f"{self.path}: run {run} {has} class-subset code and earlier runs differ; "
                                      "a zoo's runs all have one or none")
            self._target = Target(self.cfg, binary="code" in condition, device=self.cfg.device)
        state = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
        if not isinstance(state, dict):
            raise CheckpointError(f"record takes an nn.Module or a state dict, got {type(state).__name__}")
        info = self._runs.get(run)
        if info is not None and (info["split"], info["condition"]) != (split, condition):
            raise CheckpointError(f"run {run} was recorded with split {info['split']!r} and condition "
                                  f"{info['condition']}, now {split!r} and {condition}; a run has one of each")
        if step is None:
            step = len(info["steps"]) if info else 0
        if info is not None and step in info["steps"]:
            raise CheckpointError(f"{self.path}: run {run} already has a checkpoint at step {step}")
        state = self._target.conform(state, f"run {run}, step {step}")
        values = {k: _number(v, k) for k, v in (metrics or {}).items()}
        if self.evaluate:
            values.update(self._target.evaluate(state, condition.get("code")))
        if info is None:
            task = self._target.task_for(condition.get("code"))
            self._writer.begin_run(run, run, task.name, condition, split)
            info = self._runs[run] = {"split": split, "condition": condition, "steps": [], "status": "running"}
        name = self._writer.add_checkpoint(run, len(info["steps"]), step, state, values)
        info["steps"].append(step)
        if info["status"] != "done":
            self._writer.finish_run(run)
            info["status"] = "done"
        self._write_meta()
        return name

    def _write_meta(self) -> None:
        """The config the runs so far imply; rewritten as they grow (a few small rows)."""
        runs = {r: v for r, v in self._runs.items() if v["steps"]}
        zoo = type(self.cfg.zoo).model_validate(implied_zoo(runs, self.mode))
        self.cfg = self.cfg.model_copy(update={"zoo": zoo})
        write_meta(self._writer, self.cfg, self._target, self._origin)

    # -- lifetime -----------------------------------------------------------------------------------
    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _number(value: Any, name: str) -> float:
    """A metric as a float: a Python number or a one-element tensor."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise CheckpointError(f"metric '{name}' is a tensor of shape {tuple(value.shape)}, not one number")
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"metric '{name}' is a number, got {value!r}") from None
