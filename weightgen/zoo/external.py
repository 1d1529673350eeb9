"""Checkpoints made outside a build: the net and task they belong to, the checks each one passes,
and the manifest records that let every command read such a zoo as a built one.

``weightgen zoo import`` (``importer.py``) and ``Recorder`` (``recorder.py``) share this module. A zoo
of imported or recorded checkpoints stores the config it implies: the task and net as given, and a
``zoo`` section that describes its runs (``seeds``: one checkpoint per run, ``trajectory``: several,
``tasks``: every run has a class-subset ``code``). Its ``origin`` meta key says where the
checkpoints came from, and ``build_zoo`` then trains nothing (``kept_zoo``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel

from weightgen.config import ConfigError, ExperimentConfig, parse_config
from weightgen.nets import build_net
from weightgen.tasks import Task, get_task

from .store import ZooError, ZooWriter

ORIGIN_META = "origin"  # {"kind": "import" | "recorder", ...}: checkpoints made outside a build


class CheckpointError(ZooError):
    """A checkpoint that cannot be read safely or does not fit the zoo's net."""


# -- specs and the config they imply ---------------------------------------------------------------
def spec_dict(value: Any, what: str) -> dict:
    """A net or task spec as a config section: a name (``"mlp"``, ``"pkg.mod:make_net"``), a mapping
    (``{"name": "mlp", "hidden": [37, 23]}``), the YAML text of either, or a ``NetSpec``/``TaskSpec``."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ConfigError(f"{what}: not a valid YAML mapping: {' '.join(str(e).split())}") from None
        else:
            value = {"name": text}
    if not isinstance(value, dict):
        raise ConfigError(f"{what}: give a name or a mapping with a 'name' key, got {type(value).__name__} {value!r}")
    if "name" not in value:
        raise ConfigError(f"{what}: the mapping needs a 'name' key, got keys {', '.join(map(str, value)) or 'none'}")
    return dict(value)


def external_config(net: Any, task: Any, base: ExperimentConfig | dict | None = None, name: str | None = None,
                    seed: int | None = None, device: str | None = None) -> ExperimentConfig:
    """The config of a zoo made outside a build: ``base`` (a config, or its sections as a dict) with
    ``net`` and ``task`` set where given; validated as any config is."""
    if isinstance(base, ExperimentConfig):
        data = base.model_dump(mode="json")
    else:
        data = dict(base or {})
    if net is not None:
        data["net"] = spec_dict(net, "net")
    if task is not None:
        data["task"] = spec_dict(task, "task")
    for key, value in (("name", name), ("seed", seed), ("device", device)):
        if value is not None:
            data[key] = value
    if "net" not in data or "task" not in data:
        missing = " and ".join(k for k in ("net", "task") if k not in data)
        raise ConfigError(f"checkpoints made outside a build need their {missing}: name it (--net, --task, "
                          "or the net and task sections of --config)")
    return parse_config(data, "the net and task given")


def implied_zoo(runs: dict[int, dict], mode: str | None = None) -> dict:
    """The ``zoo`` section that describes ``runs`` (run -> split, condition, steps): ``mode`` as given,
    else ``tasks`` when every run has a class-subset code, ``trajectory`` when a run has several
    checkpoints, ``seeds`` otherwise."""
    counts = [len(r["steps"]) for r in runs.values()] or [1]
    codes = [r["condition"].get("code") for r in runs.values()]
    if mode not in (None, "seeds", "trajectory", "tasks"):
        raise CheckpointError(f"a zoo of checkpoints made outside a build has mode seeds, trajectory or tasks, "
                              f"not {mode!r}")
    if mode == "tasks" and None in codes:
        raise CheckpointError("mode 'tasks' needs a class-subset code for every run (a 'code' condition)")
    if mode is None:
        mode = "tasks" if codes and None not in codes else "trajectory" if max(counts) > 1 else "seeds"
    zoo: dict = {"mode": mode, "runs": max(1, len(runs)), "checkpoints": max(1, max(counts))}
    if mode == "tasks":
        per_code: dict[str, int] = {}
        for c in codes:
            per_code[c] = per_code.get(c, 0) + 1
        zoo["runs"] = max(per_code.values(), default=1)
        zoo["codes"] = sorted({r["condition"]["code"] for r in runs.values() if r["split"] == "train"})
        zoo["heldout"] = sorted({r["condition"]["code"] for r in runs.values() if r["split"] == "heldout"})
    else:
        zoo["heldout"] = sum(r["split"] == "heldout" for r in runs.values())
    return zoo


# -- what every checkpoint must be --------------------------------------------------------------------
@dataclass
class Target:
    """The net a zoo's checkpoints load into and the task they are scored on.

    ``binary``: the runs solve class-subset tasks (a ``code`` condition), so the net has two outputs.
    """

    cfg: ExperimentConfig
    binary: bool = False
    device: str = "cpu"
    task: Task = field(init=False)
    model: torch.nn.Module = field(init=False)
    _tasks: dict = field(init=False, default_factory=dict)

    def __post_init__(self):
        t = self.cfg.task
        self.task = get_task(t.name, t.code, **t.kwargs)
        num_classes = 2 if self.binary else self.task.num_classes
        self.model = build_net(self.cfg.net.name, self.task.input_shape, num_classes, seed=self.cfg.seed,
                               **self.cfg.net.kwargs)
        self.entries = {k: v for k, v in self.model.state_dict().items()}

    @property
    def num_classes(self) -> int:
        return 2 if self.binary else self.task.num_classes

    @property
    def net_label(self) -> str:
        return f"net '{self.cfg.net.name}'"

    def task_for(self, code: str | None) -> Task:
        """The task a checkpoint is scored on: the config's, or its class-subset ``code``'s."""
        if code is None or code == self.cfg.task.code:
            return self.task
        if code not in self._tasks:
            t = self.cfg.task
            self._tasks[code] = get_task(t.name, code, **t.kwargs)
        return self._tasks[code]

    def conform(self, state: dict, what: str) -> dict[str, torch.Tensor]:
        """``state`` in the net's order and dtypes, or a ``CheckpointError`` naming ``what``, the key and
        both shapes. Keys that carry one common prefix (``model.``, ``module.``) are read without it."""
        bad = next(((k, v) for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
        if bad is not None:
            raise CheckpointError(f"{what}: entry '{bad[0]}' is a {type(bad[1]).__name__}, not a tensor; "
                                  "a checkpoint holds a state dict (model.state_dict())")
        state = strip_prefix(state, self.entries)
        missing = [k for k in self.entries if k not in state]
        extra = [k for k in state if k not in self.entries]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            instead = f"; it has '{extra[0]}' {shape_str(state[extra[0]])}, which the net has not" if extra else ""
            raise CheckpointError(f"{what}: no tensor '{missing[0]}'{more}, which {self.net_label} has "
                                  f"{shape_str(self.entries[missing[0]])}{instead}")
        if extra:
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            raise CheckpointError(f"{what}: tensor '{extra[0]}' {shape_str(state[extra[0]])}{more} is not in "
                                  f"{self.net_label}")
        for k, ref in self.entries.items():
            if state[k].shape != ref.shape:
                raise CheckpointError(f"{what}: tensor '{k}' has shape {shape_str(state[k])} where {self.net_label} "
                                      f"has {shape_str(ref)}")
        out, seen = {}, set()
        for k, ref in self.entries.items():
            t = state[k].detach().to("cpu", ref.dtype).contiguous()
            if t.untyped_storage().data_ptr() in seen:  # tied weights: safetensors stores each tensor once
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
            out[k] = t
        return out

    def evaluate(self, state: dict[str, torch.Tensor], code: str | None = None) -> dict[str, float]:
        """The metrics a build stores (``zoo.train.score``) of a conformed ``state`` on its task."""
        from .train import resolve_device, score

        device = resolve_device(self.device)
        self.model.load_state_dict(state)
        self.model.to(device)
        return score(self.model, self.task_for(code), device)


def shape_str(t: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def strip_prefix(state: dict, entries: dict) -> dict:
    """``state`` with one prefix common to all its keys removed when that makes its keys the net's
    (a Lightning module's ``model.``, DataParallel's ``module.``); otherwise ``state`` unchanged."""
    if not state or not entries or set(state) == set(entries):
        return state
    first = next(iter(entries))
    for key in state:
        if key.endswith(first) and key != first:
            prefix = key[: -len(first)]
            if all(k.startswith(prefix) for k in state) and {k[len(prefix):] for k in state} == set(entries):
                return {k[len(prefix):]: v for k, v in state.items()}
    return state


# -- the manifest ------------------------------------------------------------------------------------
def write_meta(writer: ZooWriter, cfg: ExperimentConfig, target: Target, origin: dict) -> None:
    """The records a build writes (config, net build, parameter names) plus ``origin``."""
    writer.set_config(cfg, target.model, target.task.input_shape, target.num_classes)
    writer.set_meta(ORIGIN_META, origin)


def check_same_sections(stored: dict | None, cfg: ExperimentConfig, path: Path, keys=("task", "net")) -> None:
    """Refuse to add checkpoints of another task or net to the zoo at ``path``, naming the section."""
    if stored is None:
        return
    try:  # read with today's defaults, as a build does
        stored = parse_config(stored, f"{path} (stored config)", stored=True).model_dump(mode="json")
    except ConfigError:
        pass
    new = cfg.model_dump(mode="json")
    for key in keys:
        if stored.get(key) != new.get(key):
            raise ZooError(f"{path} holds checkpoints of another '{key}' ({stored.get(key)!r}, now {new.get(key)!r}); "
                           "use another zoo path or the same net and task")


def kept_zoo(cfg: ExperimentConfig, writer: ZooWriter, path: Path) -> dict | None:
    """For a zoo of imported or recorded checkpoints, a build's summary with nothing trained (after
    checking that ``cfg`` names the same task and net); None for any other zoo."""
    origin = writer.get_meta(ORIGIN_META)
    if origin is None:
        return None
    check_same_sections(writer.get_meta("config"), cfg, path)
    runs = len(writer.run_rows())
    return {"runs": runs, "trained": 0, "skipped": runs, "origin": origin.get("kind")}
