"""The zoo on disk: a SQLite manifest (WAL) and one safetensors shard per checkpoint.

Layout of a zoo directory::

    manifest.sqlite      meta (config, net), runs (status per training run), checkpoints
    shards/r00003_c0007.safetensors

Crash safety comes from the order of writes: a shard is written to a temporary name,
fsynced, renamed into place, and only then is its row inserted (with its sha256). A
row therefore never points at a missing or half-written file; a file without a row
(killed between rename and insert) is an orphan that the next writer deletes. A run
is marked ``done`` by a statement of its own after its last checkpoint: a run that
was interrupted is still ``running`` and is redone from scratch on resume, while
readers only ever see checkpoints of ``done`` runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

MANIFEST = "manifest.sqlite"
SHARDS = "shards"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run INTEGER PRIMARY KEY, seed INTEGER NOT NULL, task TEXT NOT NULL, condition TEXT NOT NULL,
    split TEXT NOT NULL, status TEXT NOT NULL, started REAL, finished REAL,
    train_seconds REAL  -- optimizer time only (no scoring, no I/O): what SGD costs per run
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run INTEGER NOT NULL, seed INTEGER NOT NULL, step INTEGER NOT NULL,
    task TEXT NOT NULL, condition TEXT NOT NULL, split TEXT NOT NULL, metrics TEXT NOT NULL,
    shard TEXT NOT NULL UNIQUE, sha256 TEXT NOT NULL, tensors TEXT NOT NULL, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS checkpoints_run ON checkpoints(run);
-- Where an imported checkpoint came from (``weightgen zoo import``): a rerun skips what is here.
CREATE TABLE IF NOT EXISTS sources (checkpoint INTEGER PRIMARY KEY, path TEXT NOT NULL, sha256 TEXT NOT NULL);
"""


class ZooError(RuntimeError):
    """A zoo that cannot be read or written as asked."""


class ZooCorruptError(ZooError):
    """A shard whose bytes do not match its manifest row."""


@dataclass(frozen=True)
class Member:
    """One checkpoint's manifest row (metadata only: tensors load on demand)."""

    id: int
    run: int
    seed: int
    step: int
    task: str
    condition: dict
    split: str
    metrics: dict
    shard: str
    sha256: str
    tensors: dict  # name -> [shape, dtype]


LOCKED_RETRIES = 300  # x 0.1 s
SHOWN_PROBLEMS = 5  # corrupt shards named in one error; the rest are counted


def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    con = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)
    con.execute("PRAGMA busy_timeout = 60000")
    if not readonly:
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = FULL")
    return con


def _read_meta(con: sqlite3.Connection, key: str, default=None):
    """One JSON value of the manifest's meta table (reader and writer share it)."""
    row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else default


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def shard_bytes(path: Path, sha256: str | None) -> bytes:
    """The bytes of shard ``path``, checked against its manifest row's ``sha256`` unless None;
    ZooCorruptError names the file when it is missing or does not match."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ZooCorruptError(f"{path}: shard listed in the manifest is missing") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ZooCorruptError(f"{path}: sha256 does not match the manifest (file corrupt or changed)")
    return data


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


class Zoo:
    """Read a zoo lazily: the manifest is small; tensors are read one shard at a time."""

    def __init__(self, root: Path, con: sqlite3.Connection):
        self.root = root
        self._con = con

    @classmethod
    def open(cls, path: str | Path) -> "Zoo":
        root = Path(path)
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise ZooError(f"{root}: not a zoo (no {MANIFEST}); build one with `weightgen zoo build CONFIG`")
        try:
            con = _connect(manifest, readonly=True)
            con.execute("SELECT count(*) FROM checkpoints").fetchone()
        except sqlite3.DatabaseError as e:
            raise ZooCorruptError(f"{manifest}: unreadable manifest ({e})") from None
        return cls(root, con)

    # -- metadata -------------------------------------------------------------------
    def meta(self, key: str, default=None):
        """One value the builder stored (``config``, ``net_build``, ``aligned``, ...)."""
        return _read_meta(self._con, key, default)

    @property
    def config(self):
        from weightgen.config import parse_config

        return parse_config(self.meta("config"), f"{self.root}/{MANIFEST}", stored=True)

    @property
    def parameter_names(self) -> list[str]:
        return self.meta("parameter_names", [])

    def build_net(self, seed: int = 0, num_classes: int | None = None) -> torch.nn.Module:
        """An untrained instance of the zoo's architecture (weights come from a member)."""
        from weightgen.nets import build_net

        net = self.meta("net_build")
        return build_net(net["name"], net["input_shape"], num_classes or net["num_classes"], seed=seed, **net["kwargs"])

    def members(self, split: str | None = "train") -> list[Member]:
        """Checkpoints of finished runs, in (run, step) order; ``split=None`` for all."""
        sql = (
            "SELECT c.id, c.run, c.seed, c.step, c.task, c.condition, c.split, c.metrics, c.shard, c.sha256, c.tensors"
            " FROM checkpoints c JOIN runs r ON r.run = c.run WHERE r.status = 'done'"
        )
        args: tuple = ()
        if split is not None:
            sql += " AND c.split = ?"
            args = (split,)
        rows = self._con.execute(sql + " ORDER BY c.run, c.step", args).fetchall()
        return [
            Member(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], json.loads(r[7]), r[8], r[9], json.loads(r[10]))
            for r in rows
        ]

    def runs(self) -> list[dict]:
        """Every run's row (finished or not), in run order, with its optimizer time."""
        rows = self._con.execute(
            "SELECT run, seed, task, condition, split, status, train_seconds FROM runs ORDER BY run").fetchall()
        return [dict(run=r[0], seed=r[1], task=r[2], condition=json.loads(r[3]), split=r[4], status=r[5],
                     train_seconds=r[6]) for r in rows]

    # -- tensors --------------------------------------------------------------------
    def shard_path(self, member: Member) -> Path:
        return self.root / SHARDS / member.shard

    def _read(self, member: Member, verify: bool = True) -> dict[str, torch.Tensor]:
        """Every tensor of the member's shard; ZooCorruptError names the shard when it is missing,
        does not match the manifest's sha256 (with ``verify``) or cannot be parsed."""
        path = self.shard_path(member)
        data = shard_bytes(path, member.sha256 if verify else None)
        try:
            return st_load(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise ZooCorruptError(f"{path}: not a readable safetensors file ({e})") from None

    def load(self, member: Member, names: list[str] | None = None, verify: bool = True) -> dict[str, torch.Tensor]:
        """The member's tensors (all, or ``names``), checked against the manifest's sha256. A corrupt
        shard's error names every corrupt shard of the zoo, so that one repair mends them all."""
        path = self.shard_path(member)
        try:
            tensors = self._read(member, verify)
        except ZooCorruptError as e:
            raise self._every_corrupt(e) from None
        if names is None:
            # safetensors does not keep insertion order; the manifest does (state_dict order).
            return {k: tensors[k] for k in member.tensors}
        missing = [n for n in names if n not in tensors]
        if missing:
            raise ZooError(f"{path}: has no tensor named {missing[0]!r}")
        return {n: tensors[n] for n in names}

    def iter_state_dicts(self, split: str | None = "train", names: list[str] | None = None) -> Iterator[tuple[Member, dict]]:
        for m in self.members(split):
            yield m, self.load(m, names)

    def verify(self) -> list[str]:
        """Check every shard; return the problems found (empty when the zoo is sound)."""
        problems = []
        for m in self.members(split=None):
            try:
                self._read(m)
            except ZooError as e:
                problems.append(str(e))
        return problems

    def _every_corrupt(self, first: ZooCorruptError) -> ZooCorruptError:
        """``first``, or one error naming every corrupt shard (the first few and a count) when
        there are more."""
        problems = self.verify()
        if len(problems) <= 1:
            return first
        more = (f"; and {len(problems) - SHOWN_PROBLEMS} more (`weightgen zoo info {self.root} --verify` lists them)"
                if len(problems) > SHOWN_PROBLEMS else "")
        return ZooCorruptError(f"{len(problems)} corrupt shards in {self.root}: "
                               f"{'; '.join(problems[:SHOWN_PROBLEMS])}{more}")

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "Zoo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ZooWriter:
    """Appends runs and checkpoints to a zoo, safely under SIGKILL and from several processes."""

    def __init__(self, path: str | Path):
        self.root = Path(path)
        try:
            (self.root / SHARDS).mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file in the way, no permission, a read-only file system
            raise ZooError(f"{self.root}: cannot write a zoo there ({e.strerror or e})") from None
        manifest = self.root / MANIFEST
        # Creating the schema and switching a new file to WAL can answer "database is locked"
        # without consulting the busy handler when several writers start together: retry those.
        for attempt in range(LOCKED_RETRIES):
            try:
                self._con = _connect(manifest)
                self._con.executescript(SCHEMA)
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == LOCKED_RETRIES - 1:
                    raise ZooError(f"{manifest}: could not open the manifest for writing ({e})") from None
                time.sleep(0.1)
            except sqlite3.DatabaseError as e:
                raise ZooCorruptError(f"{manifest}: unreadable manifest ({e})") from None

    def set_meta(self, key: str, value) -> None:
        self._con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default=None):
        return _read_meta(self._con, key, default)

    def set_config(self, cfg, net, input_shape, num_classes: int) -> None:
        """The records every later command reads to rebuild the zoo's net and task: the config (as data
        and as YAML), the net's parameter names, and how to build the net (``Generator.build_net``)."""
        from weightgen.config import dump_config
        from weightgen.nets import parameter_names

        self.set_meta("config", cfg.model_dump(mode="json"))
        self.set_meta("config_yaml", dump_config(cfg))
        self.set_meta("parameter_names", parameter_names(net))
        self.set_meta("net_build", {"name": cfg.net.name, "kwargs": cfg.net.kwargs,
                                    "input_shape": list(input_shape), "num_classes": num_classes})

    def delete_meta(self, key: str) -> None:
        self._con.execute("DELETE FROM meta WHERE key = ?", (key,))

    def done_runs(self) -> set[int]:
        """The runs a resumed build skips."""
        return {r[0] for r in self._con.execute("SELECT run FROM runs WHERE status = 'done'")}

    def corrupt_runs(self) -> dict[int, list[str]]:
        """Finished runs with a shard that is missing or does not match its row's sha256 (as
        ``Zoo.verify`` checks), each with its problems: what a resumed build redoes, not skips."""
        rows = self._con.execute("SELECT c.run, c.shard, c.sha256 FROM checkpoints c JOIN runs r ON r.run = c.run"
                                 " WHERE r.status = 'done' ORDER BY c.run, c.step").fetchall()
        bad: dict[int, list[str]] = {}
        for run, shard, sha256 in rows:
            try:
                shard_bytes(self.root / SHARDS / shard, sha256)
            except ZooCorruptError as e:
                bad.setdefault(run, []).append(str(e))
        return bad

    def reopen_runs(self, runs: list[int]) -> None:
        """Mark finished ``runs`` unfinished: readers stop seeing them, and a build redoes them."""
        self._con.executemany("UPDATE runs SET status = 'running' WHERE run = ?", [(r,) for r in runs])

    def remove_orphans(self) -> int:
        """Delete shard files that no row points at (and temporary files). Single-writer only."""
        known = {r[0] for r in self._con.execute("SELECT shard FROM checkpoints")}
        removed = 0
        for f in (self.root / SHARDS).iterdir():
            if f.name not in known:
                f.unlink()
                removed += 1
        return removed

    def begin_run(self, run: int, seed: int, task: str, condition: dict, split: str) -> None:
        """Start (or restart) a run: anything an interrupted attempt left is removed first."""
        stale = [r[0] for r in self._con.execute("SELECT shard FROM checkpoints WHERE run = ?", (run,))]
        self._con.execute("BEGIN IMMEDIATE")
        self._con.execute("DELETE FROM checkpoints WHERE run = ?", (run,))
        self._con.execute(
            "INSERT OR REPLACE INTO runs(run, seed, task, condition, split, status, started) VALUES (?,?,?,?,?,?,?)",
            (run, seed, task, json.dumps(condition), split, "running", time.time()),
        )
        self._con.execute("COMMIT")
        for name in stale:
            (self.root / SHARDS / name).unlink(missing_ok=True)

    def _write_shard(self, name: str, tensors: dict[str, torch.Tensor]) -> bytes:
        """Write ``tensors`` to shard ``name`` durably (temporary file, fsync, rename); returns its bytes."""
        data = st_save(tensors)
        final = self.root / SHARDS / name
        tmp = final.with_name(f".tmp-{os.getpid()}-{name}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return data

    def add_checkpoint(self, run: int, ckpt: int, step: int, state: dict[str, torch.Tensor], metrics: dict,
                       source: tuple[str, str] | None = None) -> str:
        """Write one checkpoint's tensors, then its row. Returns the shard's file name.
        ``source``: the (path, sha256) of the file it was imported from, stored with the row in one transaction."""
        info = self._con.execute("SELECT seed, task, condition, split FROM runs WHERE run = ?", (run,)).fetchone()
        if info is None:
            raise ZooError(f"run {run} was not begun")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        name = f"r{run:05d}_c{ckpt:04d}.safetensors"
        data = self._write_shard(name, tensors)
        spec = {k: [list(v.shape), _dtype_name(v)] for k, v in tensors.items()}
        row = ("INSERT INTO checkpoints(run, seed, step, task, condition, split, metrics, shard, sha256, tensors, created)"
               " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
               (run, info[0], step, info[1], info[2], info[3], json.dumps(metrics), name,
                hashlib.sha256(data).hexdigest(), json.dumps(spec), time.time()))
        if source is None:
            self._con.execute(*row)
            return name
        self._con.execute("BEGIN IMMEDIATE")
        try:
            cur = self._con.execute(*row)
            self._con.execute("INSERT INTO sources(checkpoint, path, sha256) VALUES (?,?,?)",
                              (cur.lastrowid, source[0], source[1]))
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        return name

    def run_rows(self) -> dict[int, dict]:
        """Every run, finished or not, with its split, condition, status and the steps of its
        checkpoints: what an import or a recorder appends to."""
        runs = {r[0]: {"seed": r[1], "task": r[2], "condition": json.loads(r[3]), "split": r[4], "status": r[5],
                       "steps": []}
                for r in self._con.execute("SELECT run, seed, task, condition, split, status FROM runs")}
        for run, step in self._con.execute("SELECT run, step FROM checkpoints ORDER BY run, step"):
            runs[run]["steps"].append(step)
        return runs

    def sources(self) -> dict[str, dict]:
        """The files imported so far, by path: their sha256 and the run and step they became."""
        rows = self._con.execute(
            "SELECT s.path, s.sha256, c.run, c.step FROM sources s JOIN checkpoints c ON c.id = s.checkpoint")
        return {r[0]: {"sha256": r[1], "run": r[2], "step": r[3]} for r in rows}

    def replace_checkpoint(self, member: Member, state: dict[str, torch.Tensor], metrics: dict | None = None) -> str:
        """Store new tensors for an existing checkpoint (same names and shapes; e.g. its hidden
        units permuted). Written under a new shard name, and only then is the row pointed at it
        (in one statement) and the old file removed: killed at any moment, the row names a complete
        file whose sha256 it holds, and a leftover file is an orphan. ``metrics``: the new network's,
        when it computes another function (a pruned one), set in the same statement. Returns the new shard name."""
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        spec = {k: [list(v.shape), _dtype_name(v)] for k, v in tensors.items()}
        if spec != member.tensors:
            raise ZooError(f"checkpoint {member.shard}: new tensors differ in names, shapes or dtypes from the stored ones")
        stem, _, rev = member.shard.removesuffix(".safetensors").partition(".v")
        name = f"{stem}.v{int(rev or 0) + 1}.safetensors"
        data = self._write_shard(name, tensors)
        digest = hashlib.sha256(data).hexdigest()
        if metrics is None:
            self._con.execute("UPDATE checkpoints SET shard = ?, sha256 = ? WHERE id = ?", (name, digest, member.id))
        else:
            self._con.execute("UPDATE checkpoints SET shard = ?, sha256 = ?, metrics = ? WHERE id = ?",
                              (name, digest, json.dumps(metrics), member.id))
        (self.root / SHARDS / member.shard).unlink(missing_ok=True)
        return name

    def finish_run(self, run: int, train_seconds: float | None = None) -> None:
        """Mark ``run`` done: from now on readers see its checkpoints."""
        self._con.execute("UPDATE runs SET status = 'done', finished = ?, train_seconds = ? WHERE run = ?",
                          (time.time(), train_seconds, run))

    def close(self) -> None:
        self._con.close()
