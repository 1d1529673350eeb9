"""Wall time of the default demo, `weightgen run` with no argument, from an empty directory
(the zoo is built too, nothing reused). Target: under 3 minutes on 2 cores.

    python benchmarks/demo_time.py
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import command, fmt, machine, write_json, write_section


def main() -> None:
    exe = Path(sys.executable).with_name("weightgen")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([str(exe if exe.exists() else shutil.which("weightgen")), "run"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        report = json.loads((Path(tmp) / "runs" / "demo" / "report.json").read_text())
    g = report["groups"]
    result = {"benchmark": "demo_time", "command": command(), "machine": machine(), "seconds": seconds,
              "target_seconds": 180, "target_met": seconds < 180, "timing": report["timing"],
              "original": {k: g["original"][k] for k in ("best", "mean", "median")},
              "generated": {k: g["generated"][k] for k in ("best", "mean", "median", "n_nonfinite")}}
    write_json("demo_time", result)
    m, o, gen = result["machine"], result["original"], result["generated"]
    write_section("demo_time", f"""## The default demo

Command: `{result['command']}` (runs `weightgen run` in an empty directory) on {m['platform']}, {m['cpu_count']} CPUs,
torch {m['torch']} ({m['date']}).

| wall time (zoo + fit + sample + evaluate) | target | original best / mean / median | generated best / mean / median |
|---|---|---|---|
| {seconds:.0f} s | < 180 s: {'met' if seconds < 180 else 'MISSED'} | {fmt(o['best'])} / {fmt(o['mean'])} / {fmt(o['median'])} | {fmt(gen['best'])} / {fmt(gen['mean'])} / {fmt(gen['median'])} |
""")
    print(f"demo: {seconds:.0f} s")


if __name__ == "__main__":
    main()
