"""``weightgen zoo import``: checkpoint files trained anywhere, turned into a zoo every command reads.

Sources are ``.safetensors`` files, or PyTorch files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) read only
with ``torch.load(weights_only=True)``: a file that needs full unpickling is refused, never run. A file
holds a state dict, or a dict with one under ``state_dict`` (a Lightning checkpoint). Every file is
checked against the net before anything is written, so a wrong key or shape stops the import at once.

Where run and step come from, first match wins:

- a metrics table (``--metrics``, CSV or JSON), one row per file: ``file``, then optional ``run``,
  ``step``, ``seed``, ``split`` (train or heldout), ``code`` (a class-subset code, the condition of a
  task-conditioned generator), ``condition.<key>`` for any other condition, and any other column is a
  metric (``test_loss``, ``test_accuracy``, ...);
- the file's path: ``run<N>`` or ``seed<N>`` names the run, ``step<N>``, ``iter<N>``, ``epoch<N>`` or
  ``checkpoint<N>`` (in that order) the step, with an optional ``-``, ``_`` or ``=`` before the number,
  in the file name or a folder name (``run3_step100.safetensors``, ``seed-3/step-100.pt``,
  ``epoch=4-step=100.ckpt``, ``checkpoint-500/model.safetensors``); a file stem that is a number is a step;
- otherwise every file is a run of its own (0, 1, ... in name order) at step 0.

The import is as crash-safe as a build: each checkpoint is written shard, fsync, rename, then its row
together with its source's path and sha256. A run is marked done after its last file, so readers see
whole runs only. Killed and run again, it skips every file already imported with the same content.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from weightgen.config import ExperimentConfig
from weightgen.progress import progress_bar
from weightgen.tasks import parse_code

from .external import ORIGIN_META, CheckpointError, Target, check_same_sections, implied_zoo, write_meta
from .store import ZooWriter

SAFETENSORS = (".safetensors",)
TORCH_FILES = (".pt", ".pth", ".bin", ".ckpt")
SUFFIXES = SAFETENSORS + TORCH_FILES
RESERVED = ("file", "run", "step", "seed", "split", "code")  # metrics-table columns that are not metrics
SPLITS = ("train", "heldout")

_RUN = re.compile(r"(?:^|[^a-z])(?:run|seed)[-_=]?(\d+)", re.IGNORECASE)
_STEPS = [re.compile(rf"(?:^|[^a-z])(?:{word})[-_=]?(\d+)", re.IGNORECASE)
          for word in ("step", "iter|iteration", "epoch", "checkpoint|ckpt")]


@dataclass
class Source:
    """One checkpoint file to import: where it is, what it becomes (run, step, split, condition, metrics)."""

    path: Path
    rel: str  # the path relative to the source folder, as shown in messages
    run: int | None = None
    step: int | None = None
    seed: int | None = None
    split: str = "train"
    condition: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


# -- finding and reading files ----------------------------------------------------------------------
def find_sources(source: str | Path) -> tuple[Path, list[Path]]:
    """(folder, checkpoint files) of ``source``: a folder (searched recursively), a glob, or one file."""
    text = str(source)
    if any(c in text for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        root = Path(re.split(r"[*?\[]", text, maxsplit=1)[0] or ".")
        root = root if root.is_dir() else root.parent
        files = [f for f in files if f.suffix.lower() in SUFFIXES]
        if not files:
            raise CheckpointError(f"{text}: no checkpoint files match ({', '.join(SUFFIXES)})")
    else:
        path = Path(text)
        if path.is_file():
            return path.parent, [path]
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such folder or file")
        root = path
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise CheckpointError(f"{path}: no checkpoint files in it ({', '.join(SUFFIXES)})")
    return root, sorted(files, key=lambda p: natural_key(str(p)))


def natural_key(text: str) -> list:
    """Sort key that puts ``step2`` before ``step10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def read_state(path: Path, data: bytes | None = None) -> dict:
    """The state dict in ``path``; PyTorch files only through ``torch.load(weights_only=True)``."""
    data = path.read_bytes() if data is None else data
    if path.suffix.lower() in SAFETENSORS:
        try:
            return st_load(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())})") from None
    import io

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" (it holds a {found.group(1)})" if found else ""
        raise CheckpointError(f"{path}: needs full unpickling{what}, which weightgen never does; save "
                              "model.state_dict() with torch.save or safetensors") from None
    except Exception as e:  # a truncated or foreign file: torch raises several types
        first = " ".join(str(e).split()).split(". ")[0]
        raise CheckpointError(f"{path}: not a readable PyTorch file ({type(e).__name__}: {first[:160]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict; save model.state_dict()")
    return obj


# -- run, step and metrics of each file -------------------------------------------------------------
def from_name(rel: str) -> tuple[int | None, int | None]:
    """(run, step) read from a path relative to the source folder, innermost part first; None where absent."""
    parts = list(reversed(Path(rel).with_suffix("").parts))
    run = next((int(m.group(1)) for p in parts for m in [_RUN.search(p)] if m), None)
    step = None
    for pattern in _STEPS:
        step = next((int(m.group(1)) for p in parts for m in [pattern.search(p)] if m), None)
        if step is not None:
            break
    if step is None and Path(rel).stem.isdigit():
        step = int(Path(rel).stem)
    return run, step


def read_table(path: Path) -> list[dict]:
    """The rows of a metrics table: CSV with a header, or JSON (a list of objects, or an object by file)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such metrics file")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict):
            data = [{"file": k, **v} if isinstance(v, dict) else {"file": k, "_bad": v} for k, v in data.items()]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise CheckpointError(f"{path}: a metrics JSON is a list of objects with a 'file' key, "
                                  "or an object from file name to its values")
        rows = []
        for r in data:  # nested "metrics" and "condition" objects are read as their columns
            r = dict(r)
            r.update(r.pop("metrics", None) or {})
            r.update({f"condition.{k}": v for k, v in (r.pop("condition", None) or {}).items()})
            rows.append(r)
        return rows
    if path.suffix.lower() != ".csv":
        raise CheckpointError(f"{path}: a metrics file is .csv or .json")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "file" not in rows[0]:
        raise CheckpointError(f"{path}: needs a 'file' column; its columns are {', '.join(rows[0])}")
    return rows


def apply_table(sources: list[Source], rows: list[dict], table: Path, root: Path) -> None:
    """Fill each source's run, step, split, condition and metrics from its row of ``table``."""
    by_key: dict[str, Source | None] = {}
    for s in sources:
        for key in {s.rel, str(s.path), str(s.path.resolve()), s.path.name}:
            by_key[key] = None if key in by_key and by_key[key] is not s else s  # None: ambiguous
    seen: dict[int, int] = {}
    for i, row in enumerate(rows, start=2 if table.suffix.lower() == ".csv" else 1):
        name = str(row.get("file") or "").strip()
        if "_bad" in row:
            raise CheckpointError(f"{table}: the value for '{name}' is not an object of its metrics")
        s = by_key.get(name) or by_key.get(str((root / name)))
        if s is None:
            why = "matches several files; give its path" if name in by_key else \
                f"is not one of the {len(sources)} checkpoint files found under {root}"
            raise CheckpointError(f"{table}: row {i} names file '{name}', which {why}")
        if id(s) in seen:
            raise CheckpointError(f"{table}: rows {seen[id(s)]} and {i} both name {s.rel}")
        seen[id(s)] = i
        for key, value in row.items():
            if key is None or value is None or (isinstance(value, str) and not value.strip()) or key == "file":
                continue
            where = f"{table}: row {i} ({s.rel}), column '{key}'"
            if key in ("run", "step", "seed"):
                setattr(s, key, _as_int(value, where))
            elif key == "split":
                if value not in SPLITS:
                    raise CheckpointError(f"{where}: split is train or heldout, got {value!r}")
                s.split = value
            elif key == "code" or key.startswith("condition."):
                s.condition[key.removeprefix("condition.")] = str(value) if key == "code" else value
            else:
                s.metrics[key] = _as_float(value, where)
    missing = [s.rel for s in sources if id(s) not in seen]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{table}: no row for {missing[0]}{more}; give one row per checkpoint file")


def _as_int(value: Any, where: str) -> int:
    try:
        f = float(value)
        if f != int(f):
            raise ValueError
        return int(f)
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: a whole number is needed, got {value!r}") from None


def _as_float(value: Any, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: a metric is a number, got {value!r}") from None


def plan_sources(root: Path, files: list[Path], table: Path | None = None) -> list[Source]:
    """Every file with its run and step (from ``table``, else its name, else one run per file)."""
    sources = []
    for p in files:
        try:
            rel = p.relative_to(root).as_posix()
        except ValueError:
            rel = str(p)
        sources.append(Source(p, rel))
    if table is not None:
        apply_table(sources, read_table(table), table, root)
    named = [from_name(s.rel) for s in sources]
    if all(s.run is None and s.step is None for s in sources) and all(r is None and t is None for r, t in named):
        for i, s in enumerate(sources):  # nothing says which run: each file is one
            s.run, s.step = i, 0
    for s, (run, step) in zip(sources, named):
        s.run = s.run if s.run is not None else run if run is not None else 0
        s.step = s.step if s.step is not None else step if step is not None else 0
    at: dict[tuple[int, int], Source] = {}
    for s in sources:
        if (s.run, s.step) in at:
            raise CheckpointError(f"{at[s.run, s.step].rel} and {s.rel} are both run {s.run}, step {s.step}; "
                                  "name runs and steps in the file names (run3_step100) or in --metrics")
        at[s.run, s.step] = s
    runs: dict[int, Source] = {}
    for s in sorted(sources, key=lambda s: (s.run, s.step)):
        first = runs.setdefault(s.run, s)
        if (s.split, s.condition) != (first.split, first.condition):
            raise CheckpointError(f"run {s.run}: {first.rel} is split {first.split!r} with condition "
                                  f"{first.condition}, {s.rel} split {s.split!r} with {s.condition}; "
                                  "a run has one split and condition")
    return sorted(sources, key=lambda s: (s.run, s.step))


# -- the import -----------------------------------------------------------------------------------------
def import_checkpoints(source: str | Path, out: str | Path, cfg: ExperimentConfig, metrics: str | Path | None = None,
                       evaluate: bool = False, mode: str | None = None, show_progress: bool = True) -> dict:
    """Import the checkpoint files of ``source`` into the zoo at ``out`` for ``cfg``'s task and net.

    ``metrics``: a CSV or JSON table, one row per file (see the module's docstring). ``evaluate``: score
    every checkpoint on the task as a build does (``zoo.train.score``); those values replace given ones
    of the same name. ``mode``: the zoo mode recorded (default: ``seeds`` for one checkpoint per run,
    ``trajectory`` for several, ``tasks`` where every run has a ``code``). Returns a summary.
    """
    out = Path(out)
    root, files = find_sources(source)
    sources = plan_sources(root, files, Path(metrics) if metrics else None)
    target = Target(cfg, binary=any("code" in s.condition for s in sources), device=cfg.device)
    for s in sources:
        if "code" in s.condition:
            try:
                s.condition["code"] = parse_code(s.condition["code"], target.task.num_classes)
            except ValueError as e:
                raise CheckpointError(f"{s.path}: {e}") from None
    # Every file is read and checked before the zoo is touched: a wrong file costs nothing.
    hashes: list[str] = []
    with progress_bar(enabled=show_progress) as bar:
        job = bar.add_task("checking files", total=len(sources))
        for s in sources:
            data = s.path.read_bytes()
            target.conform(read_state(s.path, data), str(s.path))
            hashes.append(hashlib.sha256(data).hexdigest())
            bar.advance(job)
    out_ok(out)
    writer = ZooWriter(out)
    try:
        if writer.get_meta("config") is not None and writer.get_meta(ORIGIN_META) is None:
            raise CheckpointError(f"{out}: a zoo built by `weightgen zoo build`; import into another folder")
        check_same_sections(writer.get_meta("config"), cfg, out)
        writer.remove_orphans()
        done = writer.sources()
        existing = writer.run_rows()
        todo = []
        for i, s in enumerate(sources):
            key, sha = str(s.path.resolve()), hashes[i]
            prior = done.get(key)
            if prior is not None and prior["sha256"] != sha:
                raise CheckpointError(f"{s.path}: changed since it was imported into {out} (its sha256 differs); "
                                      "import into a new zoo")
            if prior is not None:
                continue
            run = existing.get(s.run)
            if run is not None and s.step in run["steps"]:
                if any(v["sha256"] == sha and (v["run"], v["step"]) == (s.run, s.step) for v in done.values()):
                    continue  # the same file under another path
                raise CheckpointError(f"{out} already holds run {s.run}, step {s.step}, not from {s.path}; "
                                      "import into a new zoo")
            if run is not None and (run["split"], run["condition"]) != (s.split, s.condition):
                raise CheckpointError(f"{s.path}: run {s.run} in {out} is split {run['split']!r} with condition "
                                      f"{run['condition']}, this file split {s.split!r} with {s.condition}")
            todo.append(i)
        runs_after = {r: {"split": v["split"], "condition": v["condition"], "steps": list(v["steps"])}
                      for r, v in existing.items()}
        for s in sources:
            r = runs_after.setdefault(s.run, {"split": s.split, "condition": s.condition, "steps": []})
            if s.step not in r["steps"]:
                r["steps"].append(s.step)
        zoo_section = implied_zoo(runs_after, mode)
        cfg = cfg.model_copy(update={"zoo": type(cfg.zoo).model_validate(zoo_section)})
        shown = str(source) if any(c in str(source) for c in "*?[") else str(Path(source).resolve())
        write_meta(writer, cfg, target, {"kind": "import", "source": shown})
        counts = {r: len(v["steps"]) for r, v in existing.items()}
        last = {s.run: i for i, s in enumerate(sources)}  # sources are in (run, step) order
        with progress_bar(enabled=show_progress) as bar:
            job = bar.add_task(f"import {out.name}", total=len(todo))
            for i in todo:
                s = sources[i]
                if s.run not in existing:
                    task = target.task_for(s.condition.get("code"))
                    writer.begin_run(s.run, s.seed if s.seed is not None else s.run, task.name, s.condition, s.split)
                    existing[s.run] = {"split": s.split, "condition": s.condition, "steps": [], "status": "running"}
                data = s.path.read_bytes()
                if hashlib.sha256(data).hexdigest() != hashes[i]:
                    raise CheckpointError(f"{s.path}: changed while it was being imported; run the import again")
                state = target.conform(read_state(s.path, data), str(s.path))
                metrics = dict(s.metrics)
                if evaluate:
                    metrics.update(target.evaluate(state, s.condition.get("code")))
                ckpt = counts.get(s.run, 0)
                writer.add_checkpoint(s.run, ckpt, s.step, state, metrics, source=(str(s.path.resolve()), hashes[i]))
                counts[s.run] = ckpt + 1
                existing[s.run]["steps"].append(s.step)
                if i == last[s.run]:
                    writer.finish_run(s.run)
                    existing[s.run]["status"] = "done"
                bar.advance(job)
        for run, info in existing.items():  # a run whose last file was imported before an interruption
            if info.get("status") != "done" and run in {s.run for s in sources}:
                writer.finish_run(run)
    finally:
        writer.close()
    return {"files": len(sources), "imported": len(todo), "skipped": len(sources) - len(todo),
            "runs": len({s.run for s in sources}), "mode": zoo_section["mode"]}


def out_ok(out: Path) -> None:
    """Refuse an ``--out`` that is a file, or a folder that holds something other than a zoo."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: is a file; --out names a folder for the zoo")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.sqlite").is_file():
        raise CheckpointError(f"{out}: a folder that is not empty and not a zoo; name a new folder")
