"""benchmarks/gpu_check.py, the script a session lent a GPU runs, in its --dry-run: every step at toy size on the
CPU (the distributed step with 2 gloo ranks), its JSON written, no step failed; its --render of that JSON, and the
wheels it names for the lent machine."""
from __future__ import annotations

import json

from conftest import REPO_ROOT


def test_dry_run_runs_every_step_and_writes_its_json(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    import common
    import gpu_check

    payload = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    steps = payload["steps"]
    assert list(steps) == ["distributed", "fit", "generate_196m"]
    assert not [name for name, s in steps.items() if "error" in s], steps
    fit = steps["distributed"]["gloo_2_ranks"]
    assert fit["procs"] == 2 and fit["equal"], fit
    assert steps["fit"]["pdiff"]["fit_seconds"] > 0 and steps["fit"]["rpg"]["fit_seconds"] > 0
    assert steps["generate_196m"]["params"] == 207010 and steps["generate_196m"]["nonfinite"] == 0
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == payload

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "PAGES", tmp_path / "pages")
    gpu_check.main(["--render", str(tmp_path / "gpu_check.json")])
    page = (tmp_path / "pages" / "gpu_check.md").read_text()
    assert "| gloo_2_ranks | 2 | cpu |" in page and "Failed steps:\n- none" in page
    assert json.loads((tmp_path / "results" / "gpu_check" / "default.json").read_text()) == payload
    assert "--python-version 3.12" in gpu_check.wheels_command() and " diffusers==" in gpu_check.wheels_command()
