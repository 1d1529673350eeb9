"""Shared tiny configs and zoos for the test suite.

Everything here is sized so that the whole foundation suite runs in well under a
minute and a half on a 2-core CPU: MLPs with one hidden layer of 8 units, one epoch
of training, a handful of runs.
"""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
import torch
import yaml

# Tiny models on a small shared CPU: intra-op threads only add contention (measured:
# one thread is several times faster than two for these nets when the machine is busy).
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "task": {"name": "digits"},
    "net": {"name": "mlp", "hidden": [8]},
    "train": {"optimizer": "adam", "lr": 0.01, "batch_size": 64, "epochs": 1},
    "zoo": {"mode": "seeds", "runs": 2, "checkpoints": 2, "every": 2},
}

# digits: 1078 training samples -> ceil(1078 / 64) = 17 optimizer steps per epoch.
DIGITS_TRAIN = 1078
STEPS_PER_EPOCH_64 = 17


def tiny_cfg(**sections) -> dict:
    """The tiny config as a dict; each keyword replaces a whole section (``zoo={...}``)."""
    data = copy.deepcopy(TINY)
    for key, value in sections.items():
        data[key] = copy.deepcopy(value)
    return data


def write_config(path: Path, data: dict) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def parse(data: dict):
    from weightgen.config import parse_config

    return parse_config(data)


def build(data: dict, path: Path) -> dict:
    from weightgen.zoo import build_zoo

    return build_zoo(parse(data), path, show_progress=False)


def rerun_as_if_interrupted(zoo_dir: Path, meta_key: str, step):
    """``step(zoo_dir, writer)`` (a post-training zoo step such as ``align_zoo``) run again on a finished
    zoo whose metadata ``meta_key`` is removed: a build interrupted after the rewrite, before recording it."""
    from weightgen.zoo import ZooWriter

    writer = ZooWriter(zoo_dir)
    try:
        writer._con.execute("DELETE FROM meta WHERE key = ?", (meta_key,))
        return step(zoo_dir, writer)
    finally:
        writer.close()


def manifest_rows(zoo_dir: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Read the manifest directly, read-only (never through the code under test)."""
    con = sqlite3.connect(f"file:{Path(zoo_dir) / 'manifest.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def checkpoint_rows(zoo_dir: Path) -> list[tuple]:
    """(run, shard, sha256, created) of every checkpoint row, finished run or not."""
    return manifest_rows(zoo_dir, "SELECT run, shard, sha256, created FROM checkpoints ORDER BY run, step")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def subprocess_env() -> dict:
    """Environment for child Python processes: one thread each, this checkout importable."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("COLUMNS", None)
    return env


PYTHON = sys.executable

# The input shape a registered net is tested with: images of digits, or coordinates for field nets.
DIGITS_SHAPE = (1, 8, 8)
NET_INPUT = {"field-mlp": (2,), "siren": (2,), "char-lm": (8,)}  # char-lm: a sequence of 8 symbols


def net_input(name: str) -> tuple[int, ...]:
    return NET_INPUT.get(name, DIGITS_SHAPE)

# -- session zoos -----------------------------------------------------------------------
# Seeds zoo: 3 runs (the last held out) x 2 checkpoints, 17 steps each -> steps 15, 17.
SEEDS_ZOO_CFG = tiny_cfg(zoo={"mode": "seeds", "runs": 3, "heldout": 1, "checkpoints": 2, "every": 2})

# Tail zoo (p-diff style): a BatchNorm CNN, then only head.* keeps training.
TAIL_ZOO_CFG = tiny_cfg(
    net={"name": "cnn", "channels": [4, 4], "batchnorm": True},
    zoo={"mode": "tail", "runs": 1, "checkpoints": 3, "every": 2, "tail": ["head.*"]},
)


@pytest.fixture(scope="session")
def seeds_zoo(tmp_path_factory) -> Path:
    """A finished tiny digits MLP zoo. Treat as read-only: copy it (``zoo_copy``) to modify."""
    path = tmp_path_factory.mktemp("zoos") / "seeds"
    build(SEEDS_ZOO_CFG, path)
    return path


TASKS_ZOO_CFG = tiny_cfg(zoo={"mode": "tasks", "runs": 1, "checkpoints": 2, "every": 2, "codes": 4, "heldout": 2})


@pytest.fixture(scope="session")
def tasks_zoo(tmp_path_factory) -> Path:
    """A finished tiny ``tasks`` zoo: 4 training codes and 2 held-out ones, 2 checkpoints each."""
    path = tmp_path_factory.mktemp("zoos") / "tasks"
    build(TASKS_ZOO_CFG, path)
    return path


TRAJECTORY_ZOO_CFG = tiny_cfg(zoo={"mode": "trajectory", "runs": 3, "checkpoints": 4, "heldout": 1})


@pytest.fixture(scope="session")
def trajectory_zoo_dir(tmp_path_factory) -> Path:
    """A finished tiny ``trajectory`` zoo: 2 training runs and 1 held out, 4 checkpoints from the init."""
    path = tmp_path_factory.mktemp("zoos") / "trajectory"
    build(TRAJECTORY_ZOO_CFG, path)
    return path


@pytest.fixture
def zoo_copy(seeds_zoo, tmp_path) -> Path:
    dst = tmp_path / "seeds_copy"
    shutil.copytree(seeds_zoo, dst)
    return dst


@pytest.fixture(scope="session")
def tail_zoo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("zoos") / "tail"
    build(TAIL_ZOO_CFG, path)
    return path


# -- p-diff (generators, pipeline) ------------------------------------------------------
# A tiny p-diff: a 2-stage autoencoder (fold 3), a [8, 16] denoiser, T = 50, a few dozen
# steps. It learns nothing useful; it exercises every code path in about a second.
PDIFF_GEN = {
    "method": "pdiff", "fold_rate": 3, "kernel_size": 3, "enc_channels": [2, 2], "dec_channels": [2, 8],
    "denoiser_channels": [8, 16], "ae_steps": 30, "diffusion_steps": 30, "batch_size": 16,
    "diffusion": {"timesteps": 50},
}

# p-diff's own setting: a BatchNorm CNN, then only head.* (8*10 + 10 = 90 values) keeps
# training while 24 checkpoints are saved.
PDIFF_ZOO_CFG = tiny_cfg(
    net={"name": "cnn", "channels": [4, 8], "batchnorm": True},
    zoo={"mode": "tail", "runs": 1, "checkpoints": 24, "every": 1, "tail": ["head.*"]},
    tokenizer={"include": ["head.*"], "token_size": "flat"},
    generator=PDIFF_GEN,
    sample={"n": 4, "sampler": "ddpm", "batch_size": 4},
    evaluate={"n_noise": 4, "sigmas": [0.01, 0.1]},
)


@pytest.fixture(scope="session")
def pdiff_zoo(tmp_path_factory) -> Path:
    """A finished tail zoo for p-diff (its config carries the tiny generator/sample/evaluate sections)."""
    path = tmp_path_factory.mktemp("zoos") / "pdiff_tail"
    build(PDIFF_ZOO_CFG, path)
    return path


@pytest.fixture(scope="session")
def pdiff_saved(pdiff_zoo, tmp_path_factory) -> tuple[Path, dict]:
    """(directory, fit stats) of a p-diff fitted on ``pdiff_zoo`` and saved.

    Read-only: take your own instance with ``load_generator(directory)``.
    """
    from weightgen.pipeline import fit_generator
    from weightgen.zoo import Zoo

    zoo = Zoo.open(pdiff_zoo)
    try:
        gen, stats = fit_generator(parse(PDIFF_ZOO_CFG), zoo, show_progress=False)
        directory = gen.save(tmp_path_factory.mktemp("generators") / "pdiff")
    finally:
        zoo.close()
    return directory, stats
