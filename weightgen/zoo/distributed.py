"""Build one zoo from several processes: ``torchrun --nproc_per_node N -m weightgen.zoo.distributed CONFIG --out DIR``.

Each rank trains every N-th run; SQLite (WAL, busy timeout) serializes their writes.
gloo on CPU, nccl when every rank has a GPU.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from weightgen.config import load_config

from .build import build_zoo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
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
