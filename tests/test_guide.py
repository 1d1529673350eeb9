"""docs/your-own-model.md runs as written: every block, in order, in an empty folder.

A block whose first line is ``# NAME`` is saved as that file; a ``bash`` block is run with this
environment's ``python`` and ``weightgen`` first on the PATH. So an edit that breaks the guide's
code, or a change to the library that breaks the guide, fails here.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

GUIDE = REPO_ROOT / "docs" / "your-own-model.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of ``text``, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def test_the_guide_has_files_and_commands():
    found = blocks(GUIDE.read_text())
    files = [code.splitlines()[0] for lang, code in found if lang != "bash"]
    assert files == ["# my_code.py", "# train.py", "# wine.yaml"]
    assert sum(lang == "bash" for lang, _ in found) == 3
    code_lines = [line for lang, code in found for line in code.splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    assert len(code_lines) < 40  # the whole path, the user's own net, task and training loop included


def test_the_guide_runs_as_written(tmp_path):
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("COLUMNS", None)
    for lang, code in blocks(GUIDE.read_text()):
        first = code.splitlines()[0]
        if lang != "bash":
            assert first.startswith("# "), f"a {lang} block must start with '# FILE'"
            (tmp_path / first[2:].strip()).write_text(code)
            continue
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{code}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    recorded = sorted((tmp_path / "ckpts").glob("*.pt"))
    assert len(recorded) == 50
    report = json.loads((tmp_path / "runs" / "wine" / "report.json").read_text())
    assert report["groups"]["original"]["n"] == 50 and report["groups"]["generated"]["n"] == 20
    assert (tmp_path / "zoos" / "wine-files").is_dir()
