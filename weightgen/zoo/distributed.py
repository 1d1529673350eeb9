"""Build one zoo from several processes: ``torchrun --nproc_per_node N -m weightgen.zoo.distributed CONFIG --out DIR``,
or ``build_zoo_processes`` (``weightgen zoo build --procs N``), which starts that torchrun itself.

Each rank trains every N-th run; SQLite (WAL, busy timeout) serializes their writes.
gloo on CPU, nccl when every rank has a GPU of its own.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from weightgen.config import ExperimentConfig, dump_config, load_config

from .build import build_zoo
from .store import ZooError


def backend_for(world_size: int) -> str:
    """nccl only when every rank can have a GPU of its own: nccl refuses two ranks on one device,
    so more ranks than GPUs (say 16 CPU workers on a one-GPU machine) take gloo."""
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"


def build_zoo_processes(cfg: ExperimentConfig, out: str | Path, procs: int, show_progress: bool = True) -> None:
    """Build ``cfg``'s zoo at ``out`` with ``procs`` processes on this machine (torchrun, standalone),
    resuming as ``build_zoo`` does; one process builds here, without torchrun. Their output goes to
    this process's terminal; a failed build raises ``ZooError`` with torchrun's exit code (what was
    stored stays, and a rerun resumes)."""
    if procs < 1:
        raise ZooError(f"procs must be at least 1, got {procs}")
    if procs == 1:
        build_zoo(cfg, out, show_progress=show_progress)
        return
    with tempfile.TemporaryDirectory(prefix="weightgen-zoo-") as tmp:
        config = Path(tmp) / "zoo.yaml"
        config.write_text(dump_config(cfg))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               "-m", "weightgen.zoo.distributed", str(config), "--out", str(out)]
        code = subprocess.run(cmd).returncode
    if code != 0:
        raise ZooError(f"the {procs}-process build of {out} failed (torchrun exited with {code}; its output is above); "
                       "the runs it finished are stored, and building again resumes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    backend = backend_for(int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1))))
    dist.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    # Two processes on two cores: one thread each keeps them from fighting.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
    try:
        build_zoo(load_config(args.config), args.out, show_progress=dist.get_rank() == 0)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
