"""Resumable fits: the whole state of a generator's fit saved every N steps, atomically.

A fit is one or more calls of ``diffusion.loop.train_steps`` (p-diff: the autoencoder, then the
latent diffusion), its *phases*. Every ``every`` steps, and at the end of each phase, the loop hands
its state to the active ``FitCheckpoint``, which writes one safetensors file:

- tensors: every component of the generator (weights, EMA and its update count), the optimizer's
  state, the RNG streams (torch's global CPU and CUDA generators and the fit's own
  ``torch.Generator`` objects), and the losses so far;
- its JSON metadata: the phase and step, the optimizer's hyper-parameters, the learning-rate
  schedule, Python's and NumPy's RNG states, and the config sections the fit depends on.

The file goes to a temporary name, is fsynced, and is renamed over the previous one, so a kill or a
full disk at any moment leaves the previous checkpoint whole. Run again with the same config, the
fit reloads it and goes on from its step: on a CPU the result is the same, bit for bit, as a fit
never interrupted. Nothing is pickled.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "fit_checkpoint.safetensors"
FORMAT = 1
# Config sections a checkpoint does not depend on: how networks are sampled and judged, and where.
IGNORED_SECTIONS = ("name", "sample", "evaluate", "device")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: another config's, or unreadable."""


def config_sections(cfg) -> dict[str, Any]:
    """The sections of an ``ExperimentConfig`` that decide a fit, as JSON-able values."""
    dumped = cfg.model_dump(mode="json")
    return {k: v for k, v in dumped.items() if k not in IGNORED_SECTIONS}


def _json_rng() -> dict:
    state = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"python": [version, list(internal), gauss],
            "numpy": [state[0], state[1].tolist(), int(state[2]), int(state[3]), float(state[4])]}


def _set_json_rng(saved: dict) -> None:
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FitCheckpoint:
    """The checkpoint of one fit at ``directory / CHECKPOINT_FILE``.

    Args:
        directory: where the file lives (``weightgen train``: the generator's folder).
        every: save every this many optimizer steps (and at the end of each phase).
        sections: the config sections the fit depends on (``config_sections``); a checkpoint
            written under other sections is refused, naming them.
        modules: the generator's components by name, saved and restored whole.
        write: whether this process writes (under a distributed fit, rank 0 only).
    """

    def __init__(self, directory: str | Path, every: int, sections: dict[str, Any],
                 modules: dict[str, nn.Module], write: bool = True):
        if every < 1:
            raise CheckpointError(f"checkpoint every must be at least 1 step, got {every}")
        self.path = Path(directory) / CHECKPOINT_FILE
        self.every, self.sections, self.modules, self.write = every, sections, modules, write
        self.phase = -1  # the phase the loop is in; train_steps advances it
        self.saved: dict[str, Any] | None = None  # the checkpoint's metadata, when resuming
        self.tensors: dict[str, torch.Tensor] = {}
        self.done_phases: dict[int, list[float]] = {}  # the losses of every phase finished
        if self.path.is_file():
            self._read()

    # -- reading ----------------------------------------------------------------------------
    def _read(self) -> None:
        try:
            with safe_open(str(self.path), "pt") as f:
                meta = json.loads((f.metadata() or {})["fit"])
            tensors = load_file(str(self.path))
        except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
            raise CheckpointError(f"{self.path}: unreadable fit checkpoint ({e}); delete it to start the fit over") from None
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{self.path}: checkpoint format {meta.get('format')!r}, this version reads {FORMAT}")
        theirs = meta["sections"]
        differ = sorted(k for k in set(theirs) | set(self.sections) if theirs.get(k) != self.sections.get(k))
        if differ:
            raise CheckpointError(f"{self.path}: a checkpoint of another config (section{'s' * (len(differ) > 1)} "
                                  f"{', '.join(differ)} differ{'s' * (len(differ) == 1)}); train with the config that "
                                  f"wrote it, or delete it to start the fit over")
        self.saved, self.tensors = meta, tensors
        log.info("resuming the fit from %s (phase %d, step %d)", self.path, meta["phase"], meta["step"])

    def next_phase(self) -> None:
        """Called by ``train_steps`` as it starts: the first phase reloads every component."""
        self.phase += 1
        if self.phase == 0 and self.saved is not None:
            for name, module in self.modules.items():
                prefix = f"model.{name}."
                state = {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}
                module.load_state_dict(state)

    def skipped_losses(self) -> list[float] | None:
        """The losses of this phase when the checkpoint is past it (the phase is not run again)."""
        if self.saved is None or self.phase >= self.saved["phase"]:
            return None
        return self.tensors[f"losses.{self.phase}"].tolist()

    def restore(self, opt: torch.optim.Optimizer, sched, rngs: dict[str, torch.Generator]) -> tuple[int, list[float]]:
        """(first step, losses so far) of this phase, with the optimizer, schedule and RNG streams
        put back where the checkpoint left them; (0, []) when it holds nothing of this phase."""
        if self.saved is None or self.phase != self.saved["phase"]:
            return 0, []
        meta, t = self.saved, self.tensors
        missing = sorted(set(rngs) - set(meta["rngs"]))
        if missing:
            raise CheckpointError(f"{self.path}: holds no RNG stream {missing[0]!r}; delete it to start the fit over")
        state: dict[int, dict] = {}
        for key, value in t.items():
            if key.startswith("opt."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        if sched is not None:
            sched.load_state_dict(meta["sched"])
        torch.set_rng_state(t["rng.torch"])
        if torch.cuda.is_available() and meta["cuda_rng"]:
            torch.cuda.set_rng_state_all([t[f"rng.cuda.{i}"] for i in range(meta["cuda_rng"])])
        for name, g in rngs.items():
            g.set_state(t[f"rng.gen.{name}"])
        _set_json_rng(meta["json_rng"])
        return meta["step"], t[f"losses.{self.phase}"].tolist()

    # -- writing ----------------------------------------------------------------------------
    def due(self, done: int, total: int) -> bool:
        return self.write and (done % self.every == 0 or done == total)

    def save(self, done: int, losses: list[float], opt: torch.optim.Optimizer, sched,
             rngs: dict[str, torch.Generator]) -> bool:
        """Write the state after ``done`` steps of this phase; False (and a warning) when the
        write fails, in which case the previous checkpoint stays as it was."""
        tensors = {f"model.{name}.{k}": v.detach().cpu().contiguous()
                   for name, m in self.modules.items() for k, v in m.state_dict().items()}
        opt_state = opt.state_dict()
        for index, entries in opt_state["state"].items():
            for name, value in entries.items():
                tensors[f"opt.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        for i, s in enumerate(cuda):
            tensors[f"rng.cuda.{i}"] = s.cpu()
        for name, g in rngs.items():
            tensors[f"rng.gen.{name}"] = g.get_state().cpu()
        for phase, values in {**self.done_phases, self.phase: losses}.items():
            tensors[f"losses.{phase}"] = torch.tensor(values, dtype=torch.float64)
        meta = {"format": FORMAT, "phase": self.phase, "step": done, "sections": self.sections,
                "param_groups": opt_state["param_groups"], "sched": sched.state_dict() if sched is not None else None,
                "cuda_rng": len(cuda), "rngs": sorted(rngs), "json_rng": _json_rng()}
        tmp = self.path.with_name(f".{self.path.name}.partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp), metadata={"fit": json.dumps(meta)})
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("could not save the fit's checkpoint at step %d (%s); the previous one in %s stays, "
                        "and the fit goes on", done, e, self.path)
            return False
        return True

    def remove(self) -> None:
        """Delete the checkpoint once the fitted generator is saved."""
        if self.write:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


_ACTIVE: FitCheckpoint | None = None


def active() -> FitCheckpoint | None:
    """The checkpoint of the fit now running (set by ``checkpointing``), read by ``train_steps``."""
    return _ACTIVE


@contextlib.contextmanager
def checkpointing(checkpoint: FitCheckpoint | None) -> Iterator[FitCheckpoint | None]:
    """Every ``train_steps`` call in the block saves to, and resumes from, ``checkpoint``."""
    global _ACTIVE
    before, _ACTIVE = _ACTIVE, checkpoint
    try:
        yield checkpoint
    finally:
        _ACTIVE = before
