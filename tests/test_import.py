"""weightgen zoo import: checkpoint files trained anywhere become a zoo every command reads.

Safetensors and weights-only PyTorch files, run and step from a metrics table or from file names,
refusals that name the file, key and shapes, resuming an interrupted import, and the CLI."""
from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from conftest import PYTHON, manifest_rows, parse, subprocess_env, tiny_cfg, write_config
from weightgen.cli import app
from weightgen.nets import build_net
from weightgen.tasks import get_task
from weightgen.zoo import CheckpointError, Zoo, ZooError, ZooWriter, build_zoo, import_checkpoints
from weightgen.zoo.external import external_config
from weightgen.zoo.importer import from_name
from weightgen.zoo.train import score

NET = {"name": "mlp", "hidden": [8]}
NET_CLI = "{name: mlp, hidden: [8]}"


def _cfg():
    return external_config(NET, "digits", device="cpu")


def _state(seed: int, hidden=(8,)) -> dict:
    return build_net("mlp", (64,), 10, seed=seed, hidden=list(hidden)).state_dict()


def _folder(root: Path, runs: int = 2, steps=(0, 5, 10), suffix: str = ".safetensors") -> Path:
    """``run<r>_step<s>`` files of distinct tiny digits MLPs."""
    root.mkdir(parents=True, exist_ok=True)
    for r in range(runs):
        for s in steps:
            path = root / f"run{r}_step{s}{suffix}"
            if suffix == ".safetensors":
                save_file(_state(100 * r + s), path)
            else:
                torch.save(_state(100 * r + s), path)
    return root


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list({k: None for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)
    return path


def _rows(zoo_dir: Path) -> list[tuple]:
    return manifest_rows(zoo_dir, "SELECT run, step, split, shard FROM checkpoints ORDER BY run, step")


# -- file names and tables ----------------------------------------------------------------------------
@pytest.mark.parametrize("rel, expected", [
    ("run3_step100.safetensors", (3, 100)),
    ("seed-3/step-100.pt", (3, 100)),
    ("run_2/epoch=4-step=120.ckpt", (2, 120)),
    ("seed7/iter_40.bin", (7, 40)),
    ("trial/run1/250.pt", (1, 250)),
    ("model_epoch3.pt", (None, 3)),
    ("out/checkpoint-500/model.safetensors", (None, 500)),
    ("final.safetensors", (None, None)),
])
def test_run_and_step_from_names(rel, expected):
    assert from_name(rel) == expected


def test_import_folder_with_csv(tmp_path):
    src = _folder(tmp_path / "src")
    rows = [{"file": f"run{r}_step{s}.safetensors", "split": "heldout" if r == 1 else "train",
             "test_loss": 2.0 - s / 10, "test_accuracy": 0.1 * s, "code": "", "condition.lr": ""}
            for r in range(2) for s in (0, 5, 10)]
    summary = import_checkpoints(src, tmp_path / "zoo", _cfg(), metrics=_write_csv(tmp_path / "m.csv", rows),
                                 show_progress=False)
    assert summary == {"files": 6, "imported": 6, "skipped": 0, "runs": 2, "mode": "trajectory"}
    with Zoo.open(tmp_path / "zoo") as zoo:
        assert [(m.run, m.step) for m in zoo.members()] == [(0, 0), (0, 5), (0, 10)]
        assert [(m.run, m.step) for m in zoo.members("heldout")] == [(1, 0), (1, 5), (1, 10)]
        m = zoo.members()[1]
        assert m.metrics == {"test_loss": 1.5, "test_accuracy": 0.5}
        for k, v in zoo.load(m).items():
            assert torch.equal(v, _state(5)[k])
        net = zoo.build_net()
        net.load_state_dict(zoo.load(m))  # loads into the zoo's net
        cfg = zoo.config
        assert (cfg.zoo.mode, cfg.zoo.runs, cfg.zoo.checkpoints, cfg.zoo.heldout) == ("trajectory", 2, 3, 1)
        assert (cfg.task.name, cfg.net.name, cfg.net.kwargs) == ("digits", "mlp", {"hidden": [8]})
        assert zoo.meta("net_build")["num_classes"] == 10
        assert zoo.meta("origin")["kind"] == "import"
    result = CliRunner().invoke(app, ["zoo", "info", str(tmp_path / "zoo"), "--verify"])
    assert result.exit_code == 0, result.output
    assert "imported from" in result.output and "all 6 shards verified" in result.output


def test_import_pt_files_weights_only_and_json(tmp_path):
    src = tmp_path / "src"
    for seed in (3, 4):
        (src / f"seed-{seed}").mkdir(parents=True)
        for step in (100, 200):
            torch.save(_state(seed * 1000 + step), src / f"seed-{seed}" / f"step-{step}.pt")
    # a Lightning-style checkpoint: the state dict under 'state_dict', every key behind 'model.'
    (src / "seed-5").mkdir()
    torch.save({"state_dict": {f"model.{k}": v for k, v in _state(5).items()}, "epoch": 1},
               src / "seed-5" / "step-100.ckpt")
    table = {"seed-3/step-100.pt": {"metrics": {"test_loss": 1.0}},
             "seed-3/step-200.pt": {"test_loss": 0.5, "condition": {"lr": 0.1}},
             "seed-4/step-100.pt": {"test_loss": 1.1, "run": 3, "step": 100},
             "seed-4/step-200.pt": {"test_loss": 0.6}, "step-100.ckpt": {"test_loss": 2.0}}
    (tmp_path / "m.json").write_text(json.dumps(table))
    with pytest.raises(CheckpointError, match="step-100.pt are both run 3, step 100"):  # the table said run 3
        import_checkpoints(src, tmp_path / "zoo", _cfg(), metrics=tmp_path / "m.json", show_progress=False)
    del table["seed-4/step-100.pt"]["run"]
    (tmp_path / "m.json").write_text(json.dumps(table))
    with pytest.raises(CheckpointError, match="run 3: .*a run has one split and condition"):
        import_checkpoints(src, tmp_path / "zoo", _cfg(), metrics=tmp_path / "m.json", show_progress=False)
    del table["seed-3/step-200.pt"]["condition"]
    (tmp_path / "m.json").write_text(json.dumps(table))
    import_checkpoints(src, tmp_path / "zoo", _cfg(), metrics=tmp_path / "m.json", show_progress=False)
    with Zoo.open(tmp_path / "zoo") as zoo:
        members = zoo.members()
        assert [(m.run, m.step, m.seed) for m in members] == [(3, 100, 3), (3, 200, 3), (4, 100, 4), (4, 200, 4),
                                                              (5, 100, 5)]
        assert [m.metrics["test_loss"] for m in members] == [1.0, 0.5, 1.1, 0.6, 2.0]
        for k, v in zoo.load(members[-1]).items():
            assert torch.equal(v, _state(5)[k])


def test_import_task_codes(tmp_path):
    """A ``code`` column makes a ``tasks`` zoo: binary nets, each scored on its own class-subset task."""
    src = tmp_path / "src"
    src.mkdir()
    codes = ["0100100001", "1010101010"]
    rows = []
    for run, code in enumerate(codes):
        save_file(build_net("mlp", (64,), 2, seed=run, hidden=[8]).state_dict(), src / f"run{run}.safetensors")
        rows.append({"file": f"run{run}.safetensors", "code": code, "split": ["train", "heldout"][run]})
    summary = import_checkpoints(src, tmp_path / "zoo", _cfg(), metrics=_write_csv(tmp_path / "m.csv", rows),
                                 evaluate=True, show_progress=False)
    assert summary["mode"] == "tasks"
    with Zoo.open(tmp_path / "zoo") as zoo:
        assert [m.condition for m in zoo.members(None)] == [{"code": c} for c in codes]
        assert zoo.meta("net_build")["num_classes"] == 2
        assert (zoo.config.zoo.codes, zoo.config.zoo.heldout) == (codes[:1], codes[1:])
        net = zoo.build_net()
        net.load_state_dict(zoo.load(zoo.members()[0]))
        assert zoo.members()[0].metrics == score(net, get_task("digits", codes[0]), torch.device("cpu"))


def test_each_file_its_own_run(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("b.safetensors", "a.safetensors", "c.safetensors"):
        save_file(_state(ord(name[0])), src / name)
    summary = import_checkpoints(str(src / "*.safetensors"), tmp_path / "zoo", _cfg(), show_progress=False)
    assert summary["mode"] == "seeds"
    with Zoo.open(tmp_path / "zoo") as zoo:
        assert [(m.run, m.step) for m in zoo.members()] == [(0, 0), (1, 0), (2, 0)]
        assert torch.equal(zoo.load(zoo.members()[0])["1.weight"], _state(ord("a"))["1.weight"])


# -- refusals ---------------------------------------------------------------------------------------------
def test_wrong_shape_key_refused(tmp_path):
    src = _folder(tmp_path / "src", runs=1, steps=(0,))
    save_file(_state(1, hidden=(9,)), src / "run0_step5.safetensors")
    with pytest.raises(CheckpointError) as e:
        import_checkpoints(src, tmp_path / "zoo", _cfg(), show_progress=False)
    assert str(e.value) == (f"{src / 'run0_step5.safetensors'}: tensor '1.weight' has shape (9, 64) "
                            "where net 'mlp' has (8, 64)")
    assert not (tmp_path / "zoo").exists()  # every file is checked before the zoo is made
    state = _state(1)
    state["extra.bias"] = state.pop("3.bias")
    save_file(state, src / "run0_step5.safetensors")
    with pytest.raises(CheckpointError, match=r"run0_step5.safetensors: no tensor '3.bias', which net 'mlp' has "
                                              r"\(10\); it has 'extra.bias' \(10\), which the net has not"):
        import_checkpoints(src, tmp_path / "zoo", _cfg(), show_progress=False)
    state["3.bias"] = state["extra.bias"].clone()
    save_file(state, src / "run0_step5.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor 'extra.bias' \(10\) is not in net 'mlp'"):
        import_checkpoints(src, tmp_path / "zoo", _cfg(), show_progress=False)


class Payload:
    """Unpickling this would create ``marker``: proof that a file was (or was not) unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_object_refused_never_run(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    marker = tmp_path / "unpickled"
    torch.save({"1.weight": Payload(marker)}, src / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil.pt: needs full unpickling .*which weightgen never does"):
        import_checkpoints(src, tmp_path / "zoo", _cfg(), show_progress=False)
    assert not marker.exists()
    torch.save(build_net("mlp", (64,), 10, hidden=[8]), src / "evil.pt")  # a whole module, not a state dict
    with pytest.raises(CheckpointError, match="needs full unpickling"):
        import_checkpoints(src, tmp_path / "zoo", _cfg(), show_progress=False)
    torch.save({"1.weight": torch.zeros(8, 64), "epoch": 3}, src / "evil.pt")
    with pytest.raises(CheckpointError, match="entry 'epoch' is a int, not a tensor"):
        import_checkpoints(src, tmp_path / "zoo", _cfg(), show_progress=False)


def test_metrics_table_refusals(tmp_path):
    src = _folder(tmp_path / "src", runs=1, steps=(0, 5))
    rows = [{"file": "run0_step0.safetensors", "test_loss": 1}, {"file": "nope.safetensors", "test_loss": 1}]
    with pytest.raises(CheckpointError, match="row 3 names file 'nope.safetensors', which is not one of the 2"):
        import_checkpoints(src, tmp_path / "zoo", _cfg(), metrics=_write_csv(tmp_path / "m.csv", rows),
                           show_progress=False)
    with pytest.raises(CheckpointError, match="no row for run0_step5.safetensors"):
        import_checkpoints(src, tmp_path / "zoo", _cfg(), metrics=_write_csv(tmp_path / "m.csv", rows[:1]),
                           show_progress=False)
    rows = [{"file": "run0_step0.safetensors", "test_loss": "low"}, {"file": "run0_step5.safetensors"}]
    with pytest.raises(CheckpointError, match=r"row 2 \(run0_step0.safetensors\), column 'test_loss': a metric is "
                                              "a number, got 'low'"):
        import_checkpoints(src, tmp_path / "zoo", _cfg(), metrics=_write_csv(tmp_path / "m.csv", rows),
                           show_progress=False)


# -- resuming -----------------------------------------------------------------------------------------------
def test_resume_after_interrupted_import(tmp_path, monkeypatch):
    src = _folder(tmp_path / "src", runs=2, steps=(0, 5, 10))
    out = tmp_path / "zoo"
    real = ZooWriter._write_shard
    calls = []

    def killed_after_fourth_shard(self, name, tensors):  # the 4th shard lands, its row never does
        data = real(self, name, tensors)
        calls.append(name)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return data

    monkeypatch.setattr(ZooWriter, "_write_shard", killed_after_fourth_shard)
    with pytest.raises(KeyboardInterrupt):
        import_checkpoints(src, out, _cfg(), show_progress=False)
    monkeypatch.setattr(ZooWriter, "_write_shard", real)
    assert len(_rows(out)) == 3 and len(list((out / "shards").iterdir())) == 4  # one orphan
    with Zoo.open(out) as zoo:
        assert [m.run for m in zoo.members()] == [0, 0, 0]  # run 1 unfinished: not seen
    summary = import_checkpoints(src, out, _cfg(), show_progress=False)
    assert (summary["imported"], summary["skipped"]) == (3, 3)
    assert [r[:2] for r in _rows(out)] == [(r, s) for r in (0, 1) for s in (0, 5, 10)]
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(r[3] for r in _rows(out))
    with Zoo.open(out) as zoo:
        assert len(zoo.members()) == 6 and zoo.verify() == []
    again = import_checkpoints(src, out, _cfg(), show_progress=False)  # nothing new: nothing written
    assert (again["imported"], again["skipped"]) == (0, 6) and len(_rows(out)) == 6
    # a half then the whole: the second adds only what is new
    half = tmp_path / "zoo2"
    import_checkpoints(str(src / "run0_*"), half, _cfg(), show_progress=False)
    assert import_checkpoints(src, half, _cfg(), show_progress=False)["imported"] == 3
    assert [r[:2] for r in _rows(half)] == [r[:2] for r in _rows(out)]


def test_changed_file_and_other_net_refused(tmp_path):
    src = _folder(tmp_path / "src", runs=1, steps=(0, 5))
    out = tmp_path / "zoo"
    import_checkpoints(src, out, _cfg(), show_progress=False)
    save_file(_state(77), src / "run0_step5.safetensors")
    with pytest.raises(CheckpointError, match="run0_step5.safetensors: changed since it was imported"):
        import_checkpoints(src, out, _cfg(), show_progress=False)
    other = external_config({"name": "mlp", "hidden": [8], "activation": "tanh"}, "digits")
    with pytest.raises(ZooError, match="holds checkpoints of another 'net'"):
        import_checkpoints(src, out, other, show_progress=False)


def test_evaluate_equals_score(tmp_path):
    src = _folder(tmp_path / "src", runs=1, steps=(0, 5))
    rows = [{"file": "run0_step0.safetensors", "test_loss": 9.0, "mine": 1.0},
            {"file": "run0_step5.safetensors", "test_loss": 9.0, "mine": 2.0}]
    import_checkpoints(src, tmp_path / "zoo", _cfg(), metrics=_write_csv(tmp_path / "m.csv", rows), evaluate=True,
                       show_progress=False)
    task = get_task("digits")
    with Zoo.open(tmp_path / "zoo") as zoo:
        for m, seed, mine in zip(zoo.members(), (0, 5), (1.0, 2.0)):
            net = build_net("mlp", (64,), 10, hidden=[8])
            net.load_state_dict(_state(seed))
            assert m.metrics == {**score(net, task, torch.device("cpu")), "mine": mine}  # scores replace test_loss


def test_build_and_run_keep_an_imported_zoo(tmp_path):
    src = _folder(tmp_path / "src", runs=2, steps=(0,))
    out = tmp_path / "zoo"
    import_checkpoints(src, out, _cfg(), show_progress=False)
    before = _rows(out)
    cfg = parse(tiny_cfg(net=NET, zoo={"mode": "seeds", "runs": 5}))  # its own train and zoo sections
    assert build_zoo(cfg, out, show_progress=False)["trained"] == 0
    assert _rows(out) == before
    with pytest.raises(ZooError, match="holds checkpoints of another 'net'"):
        build_zoo(parse(tiny_cfg(net={"name": "mlp", "hidden": [9]})), out, show_progress=False)


# -- the command line ----------------------------------------------------------------------------------------
def test_cli_import_end_to_end(tmp_path):
    src = _folder(tmp_path / "src", runs=2, steps=(0, 5), suffix=".pt")
    out = tmp_path / "zoo"
    proc = subprocess.run([PYTHON, "-m", "weightgen.cli", "zoo", "import", str(src), "--net", NET_CLI,
                           "--task", "digits", "--out", str(out), "--evaluate"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert f"zoo {out}: 4 checkpoint(s) imported from 4 file(s); 2 run(s), mode trajectory" in \
        " ".join(proc.stdout.split())
    with Zoo.open(out) as zoo:
        assert len(zoo.members()) == 4 and "test_accuracy" in zoo.members()[0].metrics
    runner = CliRunner()
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(_state(0, hidden=(9,)), bad / "x.safetensors")
    result = runner.invoke(app, ["zoo", "import", str(bad), "--net", NET_CLI, "--task", "digits",
                                 "--out", str(tmp_path / "zoo_bad")])
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == (f"error: {bad / 'x.safetensors'}: tensor '1.weight' has shape "
                                               "(9, 64) where net 'mlp' has (8, 64)")
    result = runner.invoke(app, ["zoo", "import", str(bad), "--net", NET_CLI, "--out", str(tmp_path / "z")])
    assert result.exit_code == 2 and "name the checkpoints' --task" in result.output
    result = runner.invoke(app, ["zoo", "import", str(bad), "--net", "{name: mlp, hidden: [8]", "--task", "digits",
                                 "--out", str(tmp_path / "z")])
    assert result.exit_code == 2 and "net: not a valid YAML mapping" in result.output
    config = write_config(tmp_path / "my.yaml", tiny_cfg(net=NET, train={"optimizer": "sgd", "lr": 0.05}))
    result = runner.invoke(app, ["zoo", "import", str(src), "--config", str(config), "--out", str(tmp_path / "zc")])
    assert result.exit_code == 0, result.output
    with Zoo.open(tmp_path / "zc") as zoo:  # the config's sections, with a zoo section that describes the runs
        assert (zoo.config.train.optimizer, zoo.config.net.kwargs, zoo.config.zoo.runs) == ("sgd", {"hidden": [8]}, 2)
    (tmp_path / "afile").write_text("")
    result = runner.invoke(app, ["zoo", "import", str(src), "--net", NET_CLI, "--task", "digits",
                                 "--out", str(tmp_path / "afile")])
    assert result.exit_code == 2 and "afile: is a file; --out names a folder" in " ".join(result.output.split())


def test_a_built_zoo_is_left_alone(zoo_copy, tmp_path):
    from weightgen.zoo import Recorder

    src = _folder(tmp_path / "src", runs=1, steps=(0,))
    before = _rows(zoo_copy)
    with pytest.raises(CheckpointError, match="a zoo built by `weightgen zoo build`; import into another folder"):
        import_checkpoints(src, zoo_copy, _cfg(), show_progress=False)
    with pytest.raises(CheckpointError, match="a zoo built by `weightgen zoo build`; record into another folder"):
        Recorder(zoo_copy, net=NET, task="digits")
    assert _rows(zoo_copy) == before
