"""weightgen.zoo: every build mode, lazy reading, determinism, resume after SIGKILL,
corruption detection and the multi-process build."""
from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import (
    PYTHON, SEEDS_ZOO_CFG, STEPS_PER_EPOCH_64, TAIL_ZOO_CFG, build, checkpoint_rows, manifest_rows, parse,
    sha256_file, subprocess_env, tiny_cfg, write_config,
)
from weightgen.cli import app
from weightgen.nets import build_net, parameter_names
from weightgen.tasks import all_codes, get_task
from weightgen.zoo import Zoo, ZooCorruptError, ZooError, plan_runs
from weightgen.zoo import store as store_mod
from weightgen.zoo.build import make_schedule, pretrain, start_from, trajectory_steps
from weightgen.zoo.train import train_member

METRIC_KEYS = {f"{s}_{m}" for s in ("train", "val", "test") for m in ("loss", "accuracy")}


def _shard_files(zoo_dir: Path) -> set[str]:
    return {p.name for p in (Path(zoo_dir) / "shards").iterdir()}


def _check_metrics(member):
    assert set(member.metrics) >= METRIC_KEYS, member.metrics
    for k in METRIC_KEYS:
        v = member.metrics[k]
        assert math.isfinite(v), (k, v)
        if k.endswith("accuracy"):
            assert 0.0 <= v <= 1.0


# -- seeds mode and reading -----------------------------------------------------------------
def test_seeds_zoo_layout(seeds_zoo):
    zoo = Zoo.open(seeds_zoo)
    runs = zoo.runs()
    assert [r["run"] for r in runs] == [0, 1, 2]
    assert [r["seed"] for r in runs] == [0, 1, 2]
    assert all(r["status"] == "done" for r in runs)
    assert [r["split"] for r in runs] == ["train", "train", "heldout"]  # the last `heldout` runs
    # the last 2 checkpoints, 2 steps apart, of a 17-step run
    train = zoo.members()
    assert [(m.run, m.step) for m in train] == [(0, 15), (0, 17), (1, 15), (1, 17)]
    assert [(m.run, m.step) for m in zoo.members(split="heldout")] == [(2, 15), (2, 17)]
    assert len(zoo.members(split=None)) == 6
    assert zoo.members(split="nonsense") == []
    for m in zoo.members(split=None):
        _check_metrics(m)
        assert m.task == "digits" and m.condition == {}
        assert (seeds_zoo / "shards" / m.shard).is_file()
    assert zoo.config == parse(SEEDS_ZOO_CFG)
    assert zoo.parameter_names == ["1.weight", "1.bias", "3.weight", "3.bias"]
    zoo.close()


def test_member_tensors_and_metrics_are_real(seeds_zoo):
    """A member's state loads into the zoo's architecture and scores what its metrics say."""
    zoo = Zoo.open(seeds_zoo)
    task = get_task("digits")
    for m in zoo.members(split=None)[::3]:
        state = zoo.load(m)
        assert {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()} == m.tensors
        net = zoo.build_net()
        net.load_state_dict(state, strict=True)
        net.eval()
        with torch.no_grad():
            for split in ("train", "test"):
                x, y = task.split(split)
                s = task.scores(net(x), y)
                assert s["accuracy"] == pytest.approx(m.metrics[f"{split}_accuracy"], abs=1e-6)
                assert s["loss"] == pytest.approx(m.metrics[f"{split}_loss"], rel=1e-5)
    zoo.close()


def test_open_is_lazy(zoo_copy, monkeypatch):
    reads = []
    real = store_mod.st_load
    monkeypatch.setattr(store_mod, "st_load", lambda data: reads.append(1) or real(data))
    zoo = Zoo.open(zoo_copy)
    members = zoo.members(split=None)
    _ = zoo.runs(), zoo.config, zoo.parameter_names
    assert reads == []
    zoo.load(members[0])
    assert reads == [1]
    zoo.close()
    # metadata needs no shard at all
    for f in (zoo_copy / "shards").iterdir():
        f.unlink()
    zoo = Zoo.open(zoo_copy)
    assert len(zoo.members(split=None)) == 6
    with pytest.raises(ZooCorruptError, match="missing"):
        zoo.load(members[0])
    zoo.close()


def test_load_names(seeds_zoo):
    zoo = Zoo.open(seeds_zoo)
    m = zoo.members()[0]
    full = zoo.load(m)
    part = zoo.load(m, names=["3.bias", "1.weight"])
    assert list(part) == ["3.bias", "1.weight"]
    assert all(torch.equal(part[k], full[k]) for k in part)
    with pytest.raises(ZooError, match="'nope.weight'"):
        zoo.load(m, names=["1.weight", "nope.weight"])
    pairs = list(zoo.iter_state_dicts(names=["1.bias"]))
    assert [p[0] for p in pairs] == zoo.members() and all(list(s) == ["1.bias"] for _, s in pairs)
    zoo.close()


def test_members_of_one_run_differ(seeds_zoo):
    zoo = Zoo.open(seeds_zoo)
    a, b, c, _ = [zoo.load(m) for m in zoo.members()]
    assert not torch.equal(a["1.weight"], b["1.weight"])  # 2 steps apart
    assert not torch.equal(a["1.weight"], c["1.weight"])  # another seed
    zoo.close()


# -- other modes -----------------------------------------------------------------------------------
def test_trajectory_mode(tmp_path):
    cfg = tiny_cfg(train={**tiny_cfg()["train"], "epochs": 2},
                   zoo={"mode": "trajectory", "runs": 2, "checkpoints": 3})
    summary = build(cfg, tmp_path / "traj")
    assert summary == {"runs": 2, "trained": 2, "skipped": 0}
    zoo = Zoo.open(tmp_path / "traj")
    main = 2 * STEPS_PER_EPOCH_64
    members = zoo.members()
    assert [(m.run, m.step) for m in members] == [(r, s) for r in (0, 1) for s in (0, main // 2, main)]
    for m in members:
        _check_metrics(m)
    # step 0 is the untouched initialization of the run's seed
    for m in members[::3]:
        init = build_net("mlp", (1, 8, 8), 10, seed=m.seed, hidden=[8]).state_dict()
        state = zoo.load(m)
        assert all(torch.equal(state[k], init[k]) for k in init)
    zoo.close()


def test_shared_init_starts_every_run_from_the_same_weights(tmp_path):
    cfg = tiny_cfg(train={**tiny_cfg()["train"], "epochs": 2},
                   zoo={"mode": "trajectory", "runs": 2, "checkpoints": 2, "init": "shared"})
    build(cfg, tmp_path / "shared")
    zoo = Zoo.open(tmp_path / "shared")
    (a0, a1), (b0, b1) = [[m for m in zoo.members() if m.run == r] for r in (0, 1)]
    init = build_net("mlp", (1, 8, 8), 10, seed=cfg["seed"], hidden=[8]).state_dict()
    for m in (a0, b0):  # both runs start from the zoo seed's weights, not their own seed's
        assert all(torch.equal(zoo.load(m)[k], init[k]) for k in init)
    assert a0.seed != b0.seed  # each run keeps its own seed: it orders the run's data
    assert not torch.equal(zoo.load(a1)["1.weight"], zoo.load(b1)["1.weight"])
    zoo.close()


def test_tasks_zoo_with_shared_init(tmp_path):
    cfg = tiny_cfg(train={**tiny_cfg()["train"], "epochs": 1},
                   zoo={"mode": "tasks", "codes": ["0100100001", "1000000000"], "checkpoints": 1, "init": "shared"})
    build(cfg, tmp_path / "tasks")
    parsed = parse(cfg)
    with Zoo.open(tmp_path / "tasks") as zoo:
        for m in zoo.members():  # each code's run, redone from the zoo seed's weights, gives the stored net
            model = build_net("mlp", (1, 8, 8), 2, seed=cfg["seed"], hidden=[8])
            schedule = make_schedule(parsed, STEPS_PER_EPOCH_64)
            *_, (_, state, _) = train_member(model, get_task("digits", m.condition["code"]), parsed.train, schedule,
                                             m.seed)
            stored = zoo.load(m)
            assert all(torch.equal(stored[k], state[k]) for k in state)


def test_pretrained_init_fine_tunes_one_network(tmp_path):
    cfg = tiny_cfg(train={**tiny_cfg()["train"], "epochs": 2},
                   zoo={"mode": "trajectory", "runs": 2, "checkpoints": 2, "init": "pretrained"})
    build(cfg, tmp_path / "pre")
    pretrained, metrics = pretrain(parse(cfg), get_task("digits"), STEPS_PER_EPOCH_64)
    raw = build_net("mlp", (1, 8, 8), 10, seed=cfg["seed"], hidden=[8]).state_dict()
    assert not torch.equal(pretrained["1.weight"], raw["1.weight"])  # it was trained
    with Zoo.open(tmp_path / "pre") as zoo:
        first = [m for m in zoo.members() if m.step == 0]
        assert len(first) == 2
        for m in first:  # every run starts from the pretrained network itself
            assert all(torch.equal(zoo.load(m)[k], pretrained[k]) for k in pretrained)
        stored = zoo.meta("pretrained_metrics")
    assert stored["test_accuracy"] == pytest.approx(metrics["test_accuracy"]) and stored["test_accuracy"] > 0.2  # chance: 0.1


def test_start_from_keeps_a_head_of_another_shape():
    pretrained = build_net("mlp", (1, 8, 8), 10, seed=1, hidden=[8]).state_dict()
    model = build_net("mlp", (1, 8, 8), 2, seed=0, hidden=[8])
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("3.")}
    start_from(model, pretrained)
    state = model.state_dict()
    assert torch.equal(state["1.weight"], pretrained["1.weight"]) and torch.equal(state["1.bias"], pretrained["1.bias"])
    assert all(torch.equal(state[k], v) for k, v in head.items())


def test_tail_mode_only_tail_changes(tail_zoo):
    zoo = Zoo.open(tail_zoo)
    members = zoo.members()
    main = STEPS_PER_EPOCH_64
    assert [m.step for m in members] == [main + 2, main + 4, main + 6]
    states = [zoo.load(m) for m in members]
    params = zoo.parameter_names
    assert params == parameter_names(build_net("cnn", (1, 8, 8), 10, channels=[4, 4], batchnorm=True))
    tail = {"head.weight", "head.bias"}
    buffers = [k for k in states[0] if k not in params]
    assert buffers and any(k.endswith("running_mean") for k in buffers)
    for a, b in zip(states, states[1:]):
        for k in states[0]:
            if k in tail:
                assert not torch.equal(a[k], b[k]), f"tail tensor {k} did not train"
            else:
                assert torch.equal(a[k], b[k]), f"{k} changed during the tail phase"
    # the main phase did train the BatchNorm statistics that the tail checkpoints share
    rm = states[0]["features.0.1.running_mean"]
    assert not torch.equal(rm, torch.zeros_like(rm))
    assert int(states[0]["features.0.1.num_batches_tracked"]) == main
    for m in members:
        _check_metrics(m)
    assert zoo.config == parse(TAIL_ZOO_CFG)
    zoo.close()


def test_tasks_mode(tmp_path):
    cfg = tiny_cfg(zoo={"mode": "tasks", "runs": 1, "codes": 3, "heldout": 2})
    build(cfg, tmp_path / "tasks")
    zoo = Zoo.open(tmp_path / "tasks")
    train, heldout = zoo.members(), zoo.members(split="heldout")
    assert len(train) == 3 and len(heldout) == 2
    train_codes = [m.condition["code"] for m in train]
    heldout_codes = [m.condition["code"] for m in heldout]
    assert len(set(train_codes)) == 3 and len(set(heldout_codes)) == 2
    assert not set(train_codes) & set(heldout_codes)
    assert set(train_codes + heldout_codes) <= set(all_codes(10))
    assert all(r["split"] == "heldout" for r in zoo.runs() if r["condition"]["code"] in heldout_codes)
    for m in train + heldout:
        assert m.condition == {"code": m.condition["code"]}
        assert m.task == f"digits[{m.condition['code']}]"
        assert m.tensors["3.weight"][0] == [2, 8] and m.tensors["3.bias"][0] == [2]
        _check_metrics(m)
    assert zoo.meta("net_build")["num_classes"] == 2
    assert zoo.build_net()(torch.zeros(1, 1, 8, 8)).shape == (1, 2)
    # the drawn codes are a function of the config's seed
    plans = plan_runs(parse(cfg))
    assert [p.code for p in plans] == train_codes + heldout_codes
    assert [p.code for p in plan_runs(parse({**cfg, "seed": 1}))] != train_codes + heldout_codes
    zoo.close()


def test_tasks_mode_explicit_codes():
    cfg = parse(tiny_cfg(zoo={"mode": "tasks", "runs": 2, "codes": ["0100100001", "1111100000"],
                              "heldout": ["0000011111"]}))
    plans = plan_runs(cfg)
    assert [(p.run, p.seed, p.code, p.split) for p in plans] == [
        (0, 0, "0100100001", "train"), (1, 1, "0100100001", "train"),
        (2, 2, "1111100000", "train"), (3, 3, "1111100000", "train"),
        (4, 4, "0000011111", "heldout"), (5, 5, "0000011111", "heldout")]
    assert all(p.condition == {"code": p.code} for p in plans)
    assert len(plan_runs(parse(tiny_cfg(zoo={"mode": "tasks", "codes": "all", "heldout": 2})))) == 1022


@pytest.mark.parametrize("zoo,match", [
    ({"mode": "seeds", "runs": 2, "heldout": 2}, "heldout"),
    ({"mode": "seeds", "runs": 2, "heldout": ["0100100001"]}, "tasks"),
    ({"mode": "tasks", "codes": ["0100100001"], "heldout": ["0100100001"]}, "0100100001"),
    ({"mode": "tasks", "codes": 1021, "heldout": 2}, "1021"),
])
def test_plan_errors(zoo, match):
    with pytest.raises(ZooError, match=match):
        plan_runs(parse(tiny_cfg(zoo=zoo)))


def test_schedule_errors():
    with pytest.raises(ZooError, match="checkpoints"):
        make_schedule(parse(tiny_cfg(zoo={"mode": "seeds", "checkpoints": 10, "every": 5})), STEPS_PER_EPOCH_64)
    with pytest.raises(ZooError, match="checkpoints"):
        make_schedule(parse(tiny_cfg(zoo={"mode": "trajectory", "checkpoints": 30})), STEPS_PER_EPOCH_64)


@pytest.mark.parametrize("k", [2, 3, 10, 18])
def test_trajectory_spacing(k):
    """Both spacings keep the initialization and the last step, k distinct steps in order;
    quadratic puts more of them early (the first half of training gets about 70%)."""
    main = 17  # one epoch of the tiny config
    for spacing in ("linear", "quadratic"):
        steps = make_schedule(parse(tiny_cfg(train={**tiny_cfg()["train"], "epochs": 1},
                                             zoo={"mode": "trajectory", "checkpoints": k, "spacing": spacing})),
                              STEPS_PER_EPOCH_64).keep
        assert len(steps) == k and steps[0] == 0 and steps[-1] == main and steps == sorted(set(steps))
    assert trajectory_steps(510, 50, "linear") == [round(i * 510 / 49) for i in range(50)]
    quad = trajectory_steps(510, 50, "quadratic")
    assert quad[:6] == [0, 1, 2, 3, 4, 5] and quad[-1] == 510 and sum(s <= 255 for s in quad) == 35
    assert sum(s <= 255 for s in trajectory_steps(510, 50, "linear")) == 25


def test_spacing_is_only_for_trajectories():
    with pytest.raises(ValueError, match="spacing"):
        parse(tiny_cfg(zoo={"mode": "seeds", "spacing": "quadratic"}))


def test_tail_patterns_must_match(tmp_path):
    cfg = tiny_cfg(zoo={"mode": "tail", "runs": 1, "tail": ["classifier.*"]})
    with pytest.raises(ZooError, match="classifier"):
        build(cfg, tmp_path / "z")


# -- determinism, config guard, resume -------------------------------------------------------------
def test_rebuild_is_bit_identical(seeds_zoo, tmp_path):
    build(SEEDS_ZOO_CFG, tmp_path / "again")
    a, b = Zoo.open(seeds_zoo), Zoo.open(tmp_path / "again")
    ma, mb = a.members(split=None), b.members(split=None)
    assert [(m.run, m.seed, m.step, m.split, m.metrics) for m in ma] == [
        (m.run, m.seed, m.step, m.split, m.metrics) for m in mb]
    for x, y in zip(ma, mb):
        sa, sb = a.load(x), b.load(y)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert x.sha256 == y.sha256
    a.close(), b.close()


@pytest.mark.parametrize("section,change", [
    ("train", {"train": {**SEEDS_ZOO_CFG["train"], "lr": 0.02}}),
    ("net", {"net": {"name": "mlp", "hidden": [9]}}),
    ("zoo", {"zoo": {**SEEDS_ZOO_CFG["zoo"], "every": 3}}),
    ("seed", {"seed": 5}),
    ("task", {"task": {"name": "digits", "code": "0100100001"}}),
])
def test_changed_config_is_refused(zoo_copy, section, change):
    before = checkpoint_rows(zoo_copy)
    with pytest.raises(ZooError) as e:
        build({**SEEDS_ZOO_CFG, **change}, zoo_copy)
    assert f"'{section}'" in str(e.value)
    assert str(zoo_copy) in str(e.value)
    assert checkpoint_rows(zoo_copy) == before
    zoo = Zoo.open(zoo_copy)
    assert zoo.config == parse(SEEDS_ZOO_CFG) and zoo.verify() == []
    zoo.close()


def test_other_sections_may_change(zoo_copy):
    summary = build({**SEEDS_ZOO_CFG, "name": "renamed", "tokenizer": {"token_size": 8}}, zoo_copy)
    assert summary["trained"] == 0


def test_zoo_built_before_a_new_setting_still_resumes(zoo_copy):
    """A zoo stored without a setting added since (here ``zoo.init``) is the same zoo when the
    config asks for that setting's default: it resumes instead of being refused."""
    con = sqlite3.connect(zoo_copy / "manifest.sqlite")
    stored = json.loads(con.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
    del stored["zoo"]["init"]
    con.execute("UPDATE meta SET value = ? WHERE key = 'config'", (json.dumps(stored),))
    con.commit()
    con.close()
    assert build(SEEDS_ZOO_CFG, zoo_copy)["trained"] == 0
    with pytest.raises(ZooError, match="'zoo'"):  # a setting at another value is still a different zoo
        build({**SEEDS_ZOO_CFG, "zoo": {**SEEDS_ZOO_CFG["zoo"], "init": "shared"}}, zoo_copy)


def test_rerun_of_finished_build_trains_nothing(zoo_copy):
    before = checkpoint_rows(zoo_copy)
    mtimes = {f: (zoo_copy / "shards" / f).stat().st_mtime_ns for f in _shard_files(zoo_copy)}
    summary = build(SEEDS_ZOO_CFG, zoo_copy)
    assert summary == {"runs": 3, "trained": 0, "skipped": 3}
    assert checkpoint_rows(zoo_copy) == before
    assert {f: (zoo_copy / "shards" / f).stat().st_mtime_ns for f in _shard_files(zoo_copy)} == mtimes


KILL_CHILD = r"""
import sys, time
import weightgen.zoo.build as build

real = build.train_member

def slow(*args, **kwargs):
    # a lower bound on how long a run takes, so that polling reliably sees the build half done
    for item in real(*args, **kwargs):
        time.sleep(0.15)
        yield item

build.train_member = slow
from weightgen.cli import app
app(["zoo", "build", sys.argv[1], "--out", sys.argv[2]])
"""


def test_resume_after_sigkill(tmp_path):
    cfg = tiny_cfg(name="killed", zoo={"mode": "seeds", "runs": 8, "checkpoints": 3, "every": 2})
    cfg_path = write_config(tmp_path / "kill.yaml", cfg)
    out = tmp_path / "zoo"
    manifest = out / "manifest.sqlite"
    log = open(tmp_path / "child.log", "w")
    proc = subprocess.Popen([PYTHON, "-c", KILL_CHILD, str(cfg_path), str(out)], env=subprocess_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    done_seen = partial_seen = 0
    try:
        deadline = time.monotonic() + 300
        # kill once 2 runs are done and the next one has written a checkpoint but not finished
        while done_seen < 2 or partial_seen < 1:
            if proc.poll() is not None:
                pytest.fail(f"the build ended (rc {proc.returncode}) before it was killed; done runs seen: "
                            f"{done_seen}\n{(tmp_path / 'child.log').read_text()[-3000:]}")
            assert time.monotonic() < deadline, "the build made no progress"
            if manifest.exists():
                try:
                    done_seen, partial_seen = manifest_rows(
                        out, "SELECT (SELECT count(*) FROM runs WHERE status = 'done'),"
                             " (SELECT count(*) FROM checkpoints c JOIN runs r ON r.run = c.run"
                             "  WHERE r.status = 'running')")[0]
                except sqlite3.Error:
                    pass  # not created yet / busy
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()

    # after the kill: every row points at a complete shard
    rows = checkpoint_rows(out)
    for run, shard, sha, _ in rows:
        path = out / "shards" / shard
        assert path.is_file(), f"row of run {run} points at missing {path}"
        assert sha256_file(path) == sha, f"{path} does not match its row"
    status = dict(manifest_rows(out, "SELECT run, status FROM runs"))
    done_before = sorted(r for r, s in status.items() if s == "done")
    assert 2 <= len(done_before) < 8
    # one process builds one run at a time: at most one run was interrupted
    interrupted = [r for r, s in status.items() if s != "done"]
    assert len(interrupted) <= 1
    assert [r for r in rows if r[0] in interrupted], "the kill was meant to land inside a run"
    kept = [r for r in rows if r[0] in done_before]
    assert len(kept) == 3 * len(done_before)
    mtimes = {r[1]: (out / "shards" / r[1]).stat().st_mtime_ns for r in kept}
    # readers see finished runs only
    zoo = Zoo.open(out)
    assert sorted({m.run for m in zoo.members(split=None)}) == done_before
    zoo.close()

    # what a kill between writing a shard and inserting its row leaves behind
    (out / "shards" / ".tmp-99999-r00007_c0001.safetensors").write_bytes(b"half a shard")
    (out / "shards" / "r00007_c0002.safetensors").write_bytes(b"a shard without a row")

    # resume in this process
    summary = build(cfg, out)
    assert summary == {"runs": 8, "trained": 8 - len(done_before), "skipped": len(done_before)}
    status = dict(manifest_rows(out, "SELECT run, status FROM runs"))
    assert status == {r: "done" for r in range(8)}
    rows = checkpoint_rows(out)
    assert len(rows) == 8 * 3
    # runs finished before the kill were not retrained: same rows, same files
    assert [r for r in rows if r[0] in done_before] == kept
    assert {r[1]: (out / "shards" / r[1]).stat().st_mtime_ns for r in kept} == mtimes
    # no orphaned or temporary shard files remain
    assert _shard_files(out) == {r[1] for r in rows}
    zoo = Zoo.open(out)
    assert zoo.verify() == []
    assert len(zoo.members()) == 24
    zoo.close()


# -- corruption -----------------------------------------------------------------------------------
def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        for i in (-1, -7, len(data) // 2):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 3]))
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_corrupt_shard_is_detected(zoo_copy, how):
    zoo = Zoo.open(zoo_copy)
    members = zoo.members(split=None)
    bad = members[3]
    path = zoo.shard_path(bad)
    _corrupt(path, how)
    with pytest.raises(ZooCorruptError) as e:
        zoo.load(bad)
    assert str(path) in str(e.value)
    if how == "truncate":
        with pytest.raises(ZooCorruptError, match="safetensors"):
            zoo.load(bad, verify=False)
    problems = zoo.verify()
    assert len(problems) == 1 and str(path) in problems[0]
    for m in members:
        if m != bad:
            zoo.load(m)
    zoo.close()

    result = CliRunner().invoke(app, ["zoo", "info", str(zoo_copy), "--verify"])
    assert result.exit_code != 0
    squashed = "".join(result.output.split())  # rich may wrap a long path
    assert "".join(str(path).split()) in squashed, result.output


def test_a_zoo_where_a_file_is_in_the_way_is_one_error(tmp_path):
    blocked = tmp_path / "a_file"
    blocked.write_text("not a directory")
    for path in (blocked, blocked / "zoo"):
        with pytest.raises(ZooError, match=f"^{path}: cannot write a zoo there"):
            store_mod.ZooWriter(path)
    assert blocked.read_text() == "not a directory"


def test_every_corrupt_shard_is_named(zoo_copy):
    zoo = Zoo.open(zoo_copy)
    members = zoo.members(split=None)
    _corrupt(zoo.shard_path(members[2]), "flip")
    _corrupt(zoo.shard_path(members[4]), "delete")
    with pytest.raises(ZooCorruptError) as e:
        zoo.load(members[2])  # the error of one shard names the other too
    text = str(e.value)
    assert text.startswith(f"2 corrupt shards in {zoo_copy}: ") and "\n" not in text
    assert members[2].shard in text and members[4].shard in text and members[0].shard not in text
    assert "missing" in text and "sha256" in text
    zoo.close()


def test_many_corrupt_shards_are_counted(zoo_copy, monkeypatch):
    monkeypatch.setattr(store_mod, "SHOWN_PROBLEMS", 2)
    zoo = Zoo.open(zoo_copy)
    members = zoo.members(split=None)
    for m in members[:5]:
        _corrupt(zoo.shard_path(m), "flip")
    with pytest.raises(ZooCorruptError, match=r"^5 corrupt shards in .*; and 3 more \(`weightgen zoo info .* --verify`"):
        zoo.load(members[3])
    zoo.close()


def test_build_trains_again_a_finished_run_whose_shard_is_corrupt(zoo_copy):
    before = checkpoint_rows(zoo_copy)
    zoo = Zoo.open(zoo_copy)
    members = zoo.members(split=None)
    _corrupt(zoo.shard_path(members[3]), "flip")  # run 1
    _corrupt(zoo.shard_path(members[4]), "delete")  # run 2 (held out)
    zoo.close()
    assert build(SEEDS_ZOO_CFG, zoo_copy) == {"runs": 3, "trained": 2, "skipped": 1, "redone": [1, 2]}
    # the seeded runs are trained again bit for bit: the same rows, every shard sound
    assert [(r, s, h) for r, s, h, _ in checkpoint_rows(zoo_copy)] == [(r, s, h) for r, s, h, _ in before]
    with Zoo.open(zoo_copy) as zoo:
        assert zoo.verify() == []
    assert build(SEEDS_ZOO_CFG, zoo_copy) == {"runs": 3, "trained": 0, "skipped": 3}


def test_a_run_trained_again_is_aligned_again(tmp_path):
    cfg = tiny_cfg(zoo={"mode": "seeds", "runs": 2, "checkpoints": 2, "every": 2, "align": "weight_matching"})
    build(cfg, tmp_path / "zoo")
    before = checkpoint_rows(tmp_path / "zoo")
    with Zoo.open(tmp_path / "zoo") as zoo:
        aligned = zoo.meta("aligned")
        assert aligned["runs_permuted"] == 1
        _corrupt(zoo.shard_path(zoo.members()[3]), "flip")  # run 1: permuted into run 0's order
    summary = build(cfg, tmp_path / "zoo")
    assert summary["redone"] == [1] and summary["aligned"] == aligned
    # run 1 is trained again and permuted again: the same tensors as before it was corrupted
    with Zoo.open(tmp_path / "zoo") as zoo:
        assert zoo.verify() == []
        assert [m.sha256 for m in zoo.members()] == [h for _, _, h, _ in before]

@pytest.mark.parametrize("content", [b"this is not a database" * 300, b""], ids=["garbage", "empty"])
def test_garbage_manifest_open(tmp_path, content):
    (tmp_path / "z").mkdir()
    manifest = tmp_path / "z" / "manifest.sqlite"
    manifest.write_bytes(content)
    with pytest.raises(ZooCorruptError) as e:
        Zoo.open(tmp_path / "z")
    assert str(manifest) in str(e.value)


def test_truncated_manifest_open(zoo_copy):
    manifest = zoo_copy / "manifest.sqlite"
    manifest.write_bytes(manifest.read_bytes()[:4096])
    with pytest.raises(ZooError) as e:
        Zoo.open(zoo_copy).members(split=None)
    assert str(manifest) in str(e.value)


def test_build_over_garbage_manifest(tmp_path):
    """Building over a file that is not an SQLite database raises a ZooError naming the manifest
    (``weightgen zoo build`` prints it as one line), never a bare ``sqlite3.DatabaseError``."""
    (tmp_path / "z").mkdir()
    manifest = tmp_path / "z" / "manifest.sqlite"
    manifest.write_bytes(b"this is not a database" * 300)
    with pytest.raises(ZooError) as e:
        build(tiny_cfg(), tmp_path / "z")
    assert str(manifest) in str(e.value)


def test_open_non_zoo(tmp_path):
    with pytest.raises(ZooError, match="not a zoo"):
        Zoo.open(tmp_path)
    with pytest.raises(ZooError, match="not a zoo"):
        Zoo.open(tmp_path / "missing")


# -- several processes -------------------------------------------------------------------------
def test_distributed_build(tmp_path):
    cfg = tiny_cfg(name="dist", zoo={"mode": "seeds", "runs": 4, "checkpoints": 2, "every": 2})
    cfg_path = write_config(tmp_path / "dist.yaml", cfg)
    out = tmp_path / "zoo"
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "weightgen.zoo.distributed", str(cfg_path), "--out", str(out)]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    zoo = Zoo.open(out)
    assert [(r["run"], r["seed"], r["status"]) for r in zoo.runs()] == [(i, i, "done") for i in range(4)]
    assert [(m.run, m.step) for m in zoo.members()] == [(r, s) for r in range(4) for s in (15, 17)]
    assert zoo.verify() == []
    assert zoo.config == parse(cfg)
    assert _shard_files(out) == {m.shard for m in zoo.members()}
    for m in zoo.members():
        _check_metrics(m)
    zoo.close()


def test_cli_build_with_procs_matches_one_process(tmp_path):
    """``weightgen zoo build --procs 2`` starts torchrun itself: the same members, metrics and
    weights as a build in one process (each run is seeded by its number, not by its rank)."""
    data = tiny_cfg(name="procs", zoo={"mode": "seeds", "runs": 3, "checkpoints": 2, "every": 2})
    cfg_path = write_config(tmp_path / "procs.yaml", data)
    res = CliRunner().invoke(app, ["zoo", "build", str(cfg_path), "--out", str(tmp_path / "two"), "--procs", "2"])
    assert res.exit_code == 0, res.output
    assert "3 run(s) done, built by 2 processes" in " ".join(res.output.split())
    build(data, tmp_path / "one")
    with Zoo.open(tmp_path / "two") as two, Zoo.open(tmp_path / "one") as one:
        assert two.verify() == []
        assert [(m.run, m.step) for m in two.members()] == [(m.run, m.step) for m in one.members()]
        for a, b in zip(two.members(), one.members()):
            assert a.metrics == pytest.approx(b.metrics, abs=1e-5)
            wa, wb = two.load(a), one.load(b)
            assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wb)


def test_cli_build_with_procs_failure_is_named(tmp_path, monkeypatch):
    """A failed multi-process build exits 2 with an error that names the zoo and says a rerun resumes."""
    cfg_path = write_config(tmp_path / "procs.yaml", tiny_cfg(zoo={"mode": "seeds", "runs": 2, "checkpoints": 2, "every": 2}))
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    # the command's own check of --out would refuse this path before any process starts
    monkeypatch.setattr("weightgen.cli.writable_dir", lambda path, what: path)
    res = CliRunner().invoke(app, ["zoo", "build", str(cfg_path), "--out", str(blocked / "zoo"), "--procs", "2"])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "2-process build of" in text and "building again resumes" in text


def test_one_process_builds_here_without_torchrun(tmp_path, monkeypatch):
    """``build_zoo_processes(..., 1)`` is ``build_zoo`` in this process (callers need not branch); below 1 is refused."""
    from weightgen.config import parse_config
    from weightgen.zoo import distributed

    def no_subprocess(*args, **kwargs):
        raise AssertionError("one process must not start torchrun")

    monkeypatch.setattr(distributed.subprocess, "run", no_subprocess)
    data = tiny_cfg(zoo={"mode": "seeds", "runs": 2, "checkpoints": 2, "every": 2})
    distributed.build_zoo_processes(parse_config(data, "one"), tmp_path / "zoo", 1, show_progress=False)
    with Zoo.open(tmp_path / "zoo") as zoo:
        assert zoo.verify() == [] and len({m.run for m in zoo.members()}) == 2
    with pytest.raises(ZooError, match="procs must be at least 1"):
        distributed.build_zoo_processes(parse_config(data, "one"), tmp_path / "other", 0)


def test_backend_takes_gloo_when_ranks_outnumber_gpus(monkeypatch):
    from weightgen.zoo import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed.backend_for(1) == "nccl"
    assert distributed.backend_for(16) == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.backend_for(1) == "gloo"


_OPEN_WRITER = """
import sys, time
from weightgen.zoo.store import ZooWriter
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # all processes open at the same instant
w = ZooWriter(sys.argv[1])
w.set_meta("opened_by_" + sys.argv[2], True)
w.close()
"""


def test_writers_opening_a_new_zoo_together(tmp_path):
    """Several processes creating the same manifest at once must all get in (no 'database is locked')."""
    import sys
    path = tmp_path / "zoo"
    start = time.time() + 12
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_WRITER, str(path), str(i), str(start)],
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    con = sqlite3.connect(path / "manifest.sqlite")
    keys = {r[0] for r in con.execute("SELECT key FROM meta")}
    assert keys == {f"opened_by_{i}" for i in range(4)}
