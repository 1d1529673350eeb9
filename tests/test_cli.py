"""The ``weightgen`` command line, through typer's CliRunner."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from conftest import tiny_cfg, write_config
from weightgen.cli import app, builtin_config_path
from weightgen.zoo import Zoo

runner = CliRunner()


def _squash(text: str) -> str:
    """Output without whitespace: rich wraps long lines at the terminal width."""
    return "".join(text.split())


def test_zoo_build_then_info(tmp_path):
    cfg = write_config(tmp_path / "tiny.yaml", tiny_cfg(zoo={"mode": "seeds", "runs": 2, "checkpoints": 2, "every": 2}))
    out = tmp_path / "zoo"
    res = runner.invoke(app, ["zoo", "build", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert _squash("2 run(s) trained, 0 already done") in _squash(res.output)
    zoo = Zoo.open(out)
    assert len(zoo.members()) == 4
    zoo.close()

    res = runner.invoke(app, ["zoo", "info", str(out)])
    assert res.exit_code == 0, res.output
    assert "checkpoints (train)" in res.output
    row = next(line for line in res.output.splitlines() if "checkpoints (train)" in line)
    assert "4" in row.split("checkpoints (train)")[1]
    assert "2 done, 0 unfinished" in res.output
    assert "digits / mlp" in res.output
    assert "test_accuracy" in res.output
    # 64*8 + 8 + 8*10 + 10 parameters
    assert "610 in 4 tensors" in res.output

    res = runner.invoke(app, ["zoo", "info", str(out), "--verify"])
    assert res.exit_code == 0, res.output
    assert _squash("all 4 shards verified") in _squash(res.output)

    # a second build resumes and finds nothing to do
    res = runner.invoke(app, ["zoo", "build", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert _squash("0 run(s) trained, 2 already done") in _squash(res.output)


def test_zoo_info_shows_heldout(seeds_zoo):
    res = runner.invoke(app, ["zoo", "info", str(seeds_zoo)])
    assert res.exit_code == 0, res.output
    assert "checkpoints (heldout)" in res.output
    assert "3 done, 0 unfinished" in res.output


@pytest.mark.parametrize("data,needles", [
    ({**tiny_cfg(), "trian": {}}, ["'trian'", "train"]),
    (tiny_cfg(train={"epoch": 1}), ["train", "'epoch'", "epochs"]),
    (tiny_cfg(train={"epochs": "many"}), ["train.epochs", "many"]),
    (tiny_cfg(net={"name": "mlp", "hiden": [8]}), ["net", "'hiden'", "hidden"]),
    (tiny_cfg(zoo={"mode": "tail"}), ["zoo", "tail"]),
], ids=["top-key", "nested-key", "type", "net-option", "tail"])
def test_bad_config_exits_2_naming_the_key(tmp_path, data, needles):
    cfg = write_config(tmp_path / "bad.yaml", data)
    res = runner.invoke(app, ["zoo", "build", str(cfg), "--out", str(tmp_path / "zoo")])
    assert res.exit_code == 2, res.output
    assert "error" in res.output
    text = _squash(res.output)
    assert _squash(str(cfg)) in text
    for n in needles:
        assert _squash(n) in text, (n, res.output)
    assert not (tmp_path / "zoo" / "shards").exists() or not any((tmp_path / "zoo" / "shards").iterdir())


def test_missing_config_exits_2(tmp_path):
    res = runner.invoke(app, ["zoo", "build", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "zoo")])
    assert res.exit_code == 2
    assert "nope.yaml" in _squash(res.output) and "nosuchconfigfile" in _squash(res.output)


def test_bad_yaml_exits_2(tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("zoo: [unclosed\n")
    res = runner.invoke(app, ["zoo", "build", str(cfg), "--out", str(tmp_path / "zoo")])
    assert res.exit_code == 2
    assert "YAML" in res.output and "broken.yaml" in _squash(res.output)


def test_zoo_error_exits_2(tmp_path):
    cfg = write_config(tmp_path / "t.yaml", tiny_cfg(zoo={"mode": "tail", "runs": 1, "tail": ["nothing.*"]}))
    res = runner.invoke(app, ["zoo", "build", str(cfg), "--out", str(tmp_path / "zoo")])
    assert res.exit_code == 2
    assert "nothing.*" in _squash(res.output)


def test_info_on_non_zoo_exits_2(tmp_path):
    res = runner.invoke(app, ["zoo", "info", str(tmp_path)])
    assert res.exit_code == 2
    assert "not a zoo" in res.output


def test_info_on_garbage_manifest_exits_2(tmp_path):
    (tmp_path / "manifest.sqlite").write_bytes(b"garbage" * 500)
    res = runner.invoke(app, ["zoo", "info", str(tmp_path)])
    assert res.exit_code == 2
    assert "manifest.sqlite" in _squash(res.output)


@pytest.mark.parametrize("name", ["demo", "rpg-whole-cnn"])
def test_builtin_configs_are_valid(name):
    from weightgen.config import load_config

    path = builtin_config_path(name)
    assert path.is_file()
    cfg = load_config(path)
    assert cfg.name == name


def test_help():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "zoo" in res.output
    res = runner.invoke(app, ["zoo", "--help"])
    assert res.exit_code == 0 and "build" in res.output and "info" in res.output
