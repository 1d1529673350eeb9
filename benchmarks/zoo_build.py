"""How long a zoo takes to build: the 20-seed digits MLP zoo of issue 2 (target: under a minute on 2 cores).

    python benchmarks/zoo_build.py

Builds into a fresh temporary directory each time (nothing reused), then verifies every shard.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import command, fmt, machine, write_json, write_section
from weightgen.config import parse_config
from weightgen.zoo import Zoo, build_zoo

CONFIG = {"name": "bench-zoo-mlp20", "seed": 0, "task": {"name": "digits"}, "net": {"name": "mlp", "hidden": [32]},
          "train": {"optimizer": "adam", "lr": 0.01, "batch_size": 64, "epochs": 30},
          "zoo": {"mode": "seeds", "runs": 20, "checkpoints": 5, "every": 5}}


def main() -> None:
    cfg = parse_config(CONFIG, "zoo_build")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "zoo"
        start = time.perf_counter()
        build_zoo(cfg, path, show_progress=False)
        seconds = time.perf_counter() - start
        zoo = Zoo.open(path)
        members = zoo.members()
        problems = zoo.verify()
        train_seconds = sum(r["train_seconds"] for r in zoo.runs())
        acc = sorted(m.metrics["test_accuracy"] for m in members)
        size = sum(f.stat().st_size for f in (path / "shards").iterdir())
    result = {"benchmark": "zoo_build", "command": command(), "machine": machine(), "config": CONFIG,
              "seconds": seconds, "optimizer_seconds": train_seconds, "runs": 20, "checkpoints": len(members),
              "shard_bytes": size, "verified": not problems, "test_accuracy_min": acc[0],
              "test_accuracy_median": acc[len(acc) // 2], "test_accuracy_max": acc[-1],
              "target_seconds": 60, "target_met": seconds < 60}
    write_json("zoo_build", result)
    m = result["machine"]
    write_section("zoo_build", f"""## Zoo build time (issue 2)

Command: `{result['command']}` on {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['date']}).

| zoo | runs | checkpoints | wall time | optimizer time | test accuracy min / median / max | target |
|---|---|---|---|---|---|---|
| digits MLP [32], 30 epochs, seeds mode | 20 | {len(members)} | {seconds:.1f} s | {train_seconds:.1f} s | {fmt(acc[0])} / {fmt(acc[len(acc) // 2])} / {fmt(acc[-1])} | < 60 s: {'met' if seconds < 60 else 'MISSED'} |
""")
    print(f"built 20-run zoo in {seconds:.1f} s (optimizer {train_seconds:.1f} s), verified={not problems}")


if __name__ == "__main__":
    main()
