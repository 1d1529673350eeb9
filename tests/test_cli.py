"""The ``weightgen`` command line, through typer's CliRunner."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import SEEDS_ZOO_CFG, TASKS_ZOO_CFG, TRAJECTORY_ZOO_CFG, parse, tiny_cfg, write_config
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


# -- rough edges: each a one-line error, never a traceback -------------------------------------------
PDIFF_TINY = {"method": "pdiff", "fold_rate": 3, "kernel_size": 3, "enc_channels": [2, 2], "dec_channels": [2, 8],
              "denoiser_channels": [8, 16], "ae_steps": 2, "diffusion_steps": 2, "batch_size": 4,
              "diffusion": {"timesteps": 10}}
RPG_TINY = {"method": "rpg", "d_model": 16, "layers": 1, "unet_channels": [4, 8], "kernel_size": 3, "steps": 1,
            "batch_size": 2, "tokens_per_step": 5, "diffusion": {"timesteps": 10}}
GPT_TINY = {"method": "gpt", "d_model": 16, "layers": 1, "heads": 2, "steps": 1, "batch_size": 4, "ema": None,
            "diffusion": {"timesteps": 10, "prediction": "sample"}}


def _one_line_error(res, *needles: str) -> None:
    """Exit code 2, an ``error:`` line naming every needle, and no traceback."""
    assert res.exit_code == 2, res.output
    assert "error" in res.output and "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    text = _squash(res.output)
    for n in needles:
        assert _squash(n) in text, (n, res.output)


def _commands(tmp_path, seeds_zoo, pdiff_zoo, pdiff_saved, out: str) -> dict[str, list[str]]:
    """Each command that writes, with valid inputs and ``out`` as the place it writes to (``eval``
    judges p-diff's samples in ``tmp_path / 'samples'`` on the zoo it was fitted on)."""
    cfg = str(write_config(tmp_path / "c.yaml", {**SEEDS_ZOO_CFG, "tokenizer": {"token_size": "flat"},
                                                 "generator": PDIFF_TINY}))
    return {"zoo build": ["zoo", "build", cfg, "--out", out],
            "run": ["run", cfg, "--zoo", str(seeds_zoo), "--out", out],
            "run --zoo": ["run", cfg, "--zoo", out, "--out", str(tmp_path / "run")],
            "train": ["train", cfg, "--zoo", str(seeds_zoo), "--out", out],
            "sample": ["sample", str(pdiff_saved[0]), "--out", out],
            "eval": ["eval", str(tmp_path / "samples"), "--zoo", str(pdiff_zoo), "--out", out]}


@pytest.mark.parametrize("command", ["zoo build", "run", "run --zoo", "train", "sample", "eval"])
def test_out_naming_a_file_or_a_place_under_one_is_one_line(tmp_path, seeds_zoo, pdiff_zoo, pdiff_saved, command):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    samples = tmp_path / "samples"  # for eval: samples to judge
    assert runner.invoke(app, ["sample", str(pdiff_saved[0]), "--out", str(samples), "-n", "2"]).exit_code == 0
    for out, why in ((a_file, "is a file, not a directory"), (a_file / "below", "since")):
        res = runner.invoke(app, _commands(tmp_path, seeds_zoo, pdiff_zoo, pdiff_saved, str(out))[command])
        _one_line_error(res, str(out), why)
    assert a_file.read_text() == "not a directory"


@pytest.fixture
def unwritable_dir(tmp_path) -> Path:
    """A directory nothing can be written in: read-only by its mode, or (as root, whom modes do not
    stop) the kernel's /sys."""
    d = tmp_path / "read_only"
    d.mkdir()
    d.chmod(0o555)
    for candidate in (d, Path("/sys")):
        try:
            tempfile.TemporaryFile(dir=candidate).close()
        except OSError:
            yield candidate
            break
    else:
        pytest.skip("no directory here refuses writes")
    d.chmod(0o755)


@pytest.mark.parametrize("command", ["zoo build", "train", "sample"])
def test_out_in_an_unwritable_place_is_one_line(tmp_path, seeds_zoo, pdiff_zoo, pdiff_saved, unwritable_dir, command):
    out = unwritable_dir / "out"
    res = runner.invoke(app, _commands(tmp_path, seeds_zoo, pdiff_zoo, pdiff_saved, str(out))[command])
    _one_line_error(res, str(out), f"cannot write in {unwritable_dir}")


@pytest.fixture(scope="module")
def conditioned(tasks_zoo, seeds_zoo, trajectory_zoo_dir, pdiff_saved, tmp_path_factory) -> dict[str, Path]:
    """A saved generator of each kind of condition, fitted for a step: unconditional (p-diff), task
    codes and a metric (RPG), a prompt (G.pt)."""
    from weightgen.pipeline import fit_generator

    saved = {"none": pdiff_saved[0]}
    for kind, zoo_dir, zoo_cfg, gen in (
            ("task_code", tasks_zoo, TASKS_ZOO_CFG, {**RPG_TINY, "condition": "task_code"}),
            ("metric", seeds_zoo, SEEDS_ZOO_CFG, {**RPG_TINY, "condition": "metric", "metric": "test_loss"}),
            ("prompt", trajectory_zoo_dir, TRAJECTORY_ZOO_CFG, GPT_TINY)):
        with Zoo.open(zoo_dir) as zoo:
            g, _ = fit_generator(parse({**zoo_cfg, "tokenizer": {"token_size": 16}, "generator": gen}), zoo,
                                 show_progress=False)
            saved[kind] = g.save(tmp_path_factory.mktemp("generators") / kind)
    return saved


@pytest.mark.parametrize("kind,flags,needles", [
    ("task_code", ["--metric", "5"], ["conditioned on task codes", "--classes", "--task-code", "not --metric"]),
    ("task_code", [], ["conditioned on task codes", "--classes", "--task-code"]),
    ("metric", ["--classes", "1,4,9"], ["conditioned on test_loss", "--metric VALUE", "not --classes"]),
    ("metric", ["--task-code", "0100100001"], ["conditioned on test_loss", "not --task-code"]),
    ("metric", [], ["conditioned on test_loss", "--metric VALUE", "its zoo spans"]),
    ("none", ["--metric", "5"], ["pdiff is unconditional", "without", "not --metric"]),
    ("none", ["--start-metric", "1", "--target-metric", "0.5"], ["unconditional", "not --start-metric or"]),
    ("metric", ["--start-metric", "1"], ["conditioned on test_loss", "not --start-metric"]),
    ("prompt", [], ["samples from a prompt", "--start", "--start-metric", "--target-metric"]),
    ("prompt", ["--classes", "1"], ["samples from a prompt", "not --classes"]),
    ("prompt", ["--target-metric", "nan"], ["--target-metric takes a finite number", "nan"]),
    ("metric", ["--metric", "inf"], ["--metric takes a finite number"]),
], ids=lambda v: "-".join(v) if isinstance(v, list) else v)
def test_sample_condition_flags_that_do_not_fit_the_generator(conditioned, tmp_path, kind, flags, needles):
    res = runner.invoke(app, ["sample", str(conditioned[kind]), "--out", str(tmp_path / "s"), "-n", "1", *flags])
    _one_line_error(res, *needles)
    assert "condition=" not in res.output and "{'" not in res.output  # flags, not Python arguments
    assert not (tmp_path / "s" / "samples.json").exists()


def test_sample_condition_flags_that_fit(conditioned, tmp_path):
    for kind, flags in (("task_code", ["--classes", "1,4,9"]), ("metric", ["--metric", "1.9"]), ("none", [])):
        res = runner.invoke(app, ["sample", str(conditioned[kind]), "--out", str(tmp_path / kind), "-n", "1", *flags])
        assert res.exit_code == 0, res.output


def test_run_with_a_prompted_generator_names_the_flags(tmp_path):
    cfg = write_config(tmp_path / "g.yaml", {**TRAJECTORY_ZOO_CFG, "tokenizer": {"token_size": 16},
                                             "generator": GPT_TINY})
    res = runner.invoke(app, ["run", str(cfg), "--zoo", str(tmp_path / "zoo"), "--out", str(tmp_path / "run")])
    _one_line_error(res, "weightgen sample", "--start", "--start-metric", "--target-metric")
    assert "condition=" not in res.output and "{'" not in res.output
    assert not (tmp_path / "zoo").exists()  # refused before the zoo cost anything


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def test_train_names_every_corrupt_shard(zoo_copy, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", {**SEEDS_ZOO_CFG, "tokenizer": {"token_size": "flat"},
                                             "generator": PDIFF_TINY})
    shards = sorted((zoo_copy / "shards").iterdir())
    bad = [shards[1], shards[2]]  # the first checkpoint is read first: both are met later
    for p in bad:
        _flip(p)
    res = runner.invoke(app, ["train", str(cfg), "--zoo", str(zoo_copy), "--out", str(tmp_path / "gen")])
    _one_line_error(res, "2 corrupt shards", *(p.name for p in bad))
    # a build of the zoo's config trains those runs again, and then the fit goes through
    res = runner.invoke(app, ["zoo", "build", str(cfg), "--out", str(zoo_copy)])
    assert res.exit_code == 0, res.output
    assert _squash("2 run(s) trained (run(s) 0, 1 again: a shard was corrupt), 1 already done") in _squash(res.output)
    res = runner.invoke(app, ["train", str(cfg), "--zoo", str(zoo_copy), "--out", str(tmp_path / "gen")])
    assert res.exit_code == 0, res.output


def test_unknown_key_in_generator_json_is_named(pdiff_saved, tmp_path):
    d = tmp_path / "gen"
    shutil.copytree(pdiff_saved[0], d)
    meta = json.loads((d / "generator.json").read_text())
    (d / "generator.json").write_text(json.dumps({**meta, "net_buld": meta["net_build"]}))
    res = runner.invoke(app, ["sample", str(d), "--out", str(tmp_path / "s")])
    _one_line_error(res, "generator.json", "unknown key 'net_buld'", "did you mean 'net_build'", "allowed keys")
