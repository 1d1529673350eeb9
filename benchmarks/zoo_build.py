"""How long a zoo takes to build: the 20-seed digits MLP zoo (target: under a minute on 2 cores),
and with ``--procs`` the same zoo and a 20-run CNN trajectory zoo (benchmarks/gpt_prompt.py's `cnn` recipe)
built by one process and by several (``weightgen zoo build --procs``, torchrun on this machine).

    python benchmarks/zoo_build.py [--procs 1 2]

Builds into a fresh temporary directory each time (nothing reused), then verifies every shard.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import command, made_on, fmt, machine, write_json, write_section
from gpt_prompt import NETS
from weightgen.config import parse_config
from weightgen.zoo import Zoo
from weightgen.zoo.distributed import build_zoo_processes

CONFIG = {"name": "bench-zoo-mlp20", "seed": 0, "task": {"name": "digits"}, "net": {"name": "mlp", "hidden": [32]},
          "train": {"optimizer": "adam", "lr": 0.01, "batch_size": 64, "epochs": 30},
          "zoo": {"mode": "seeds", "runs": 20, "checkpoints": 5, "every": 5}}
CNN_TRAJECTORY = {"name": "bench-zoo-cnn20", "seed": 0, "task": {"name": "digits"}, "net": NETS["cnn"][0],
                  "train": NETS["cnn"][1], "zoo": {"mode": "trajectory", "runs": 20, "checkpoints": 50, "heldout": 2,
                                                   "spacing": "quadratic"}}
ZOOS = {"digits MLP [32], 30 epochs, seeds mode": CONFIG,
        "digits CNN [16, 32], SGD, trajectory mode (quadratic)": CNN_TRAJECTORY}


def measure(name: str, config: dict, procs: int) -> dict:
    cfg = parse_config(config, "zoo_build")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "zoo"
        start = time.perf_counter()
        build_zoo_processes(cfg, path, procs, show_progress=False)
        seconds = time.perf_counter() - start
        with Zoo.open(path) as zoo:
            members = zoo.members()
            problems = zoo.verify()
            runs = zoo.runs()
    acc = sorted(m.metrics["test_accuracy"] for m in members)
    row = {"zoo": name, "config": config, "procs": procs, "seconds": seconds, "runs": len(runs),
           "optimizer_seconds": sum(r["train_seconds"] for r in runs), "checkpoints": len(members),
           "verified": not problems, "test_accuracy_min": acc[0], "test_accuracy_median": acc[len(acc) // 2],
           "test_accuracy_max": acc[-1]}
    print(f"{name}, {procs} process(es): {seconds:.1f} s (optimizer {row['optimizer_seconds']:.1f} s), "
          f"verified={not problems}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--procs", type=int, nargs="*", default=[1],
                    help="process counts to build with; beyond 1, the CNN trajectory zoo is built too")
    args = ap.parse_args()
    rows = [measure(name, config, procs) for name, config in ZOOS.items() for procs in args.procs
            if config is CONFIG or args.procs != [1]]
    mlp = next(r for r in rows if r["config"] is CONFIG and r["procs"] == 1) if 1 in args.procs else None
    result = {"benchmark": "zoo_build", "command": command(), "machine": machine(), "results": rows,
              "target_seconds": 60, "target_met": mlp["seconds"] < 60 if mlp else None}
    write_json("zoo_build", result)
    m = result["machine"]
    lines = ["| zoo | processes | runs | checkpoints | wall time | optimizer time (all processes) | "
             "test accuracy min / median / max | target |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = (f"< 60 s: {'met' if r['seconds'] < 60 else 'MISSED'}" if r is mlp else "–")
        lines.append(f"| {r['zoo']} | {r['procs']} | {r['runs']} | {r['checkpoints']} | {r['seconds']:.1f} s | "
                     f"{r['optimizer_seconds']:.1f} s | {fmt(r['test_accuracy_min'])} / {fmt(r['test_accuracy_median'])} / "
                     f"{fmt(r['test_accuracy_max'])} | {target} |")
    write_section("zoo_build", f"""## Zoo build time

Command: {made_on(result)}.
Each zoo built from nothing in a fresh directory, then every shard verified. Several processes: `weightgen zoo
build --procs N` (torchrun on this machine, gloo), each process with {m['cpu_count']} // N torch threads; its wall
time includes torchrun's start.

{chr(10).join(lines)}
""")


if __name__ == "__main__":
    main()
