"""weightgen.zoo.Recorder: checkpoints from a plain training loop become a zoo that generators fit on;
crash-safe under SIGKILL, appending on reopen, refusing what does not fit the net. The Lightning
callback, where Lightning is installed."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time

import pytest
import torch
from torch import nn

from conftest import PDIFF_GEN, PYTHON, manifest_rows, parse, subprocess_env
from weightgen.generators import load_generator
from weightgen.nets import build_net
from weightgen.pipeline import run_experiment
from weightgen.tasks import get_task
from weightgen.zoo import CheckpointError, Recorder, Zoo, ZooError
from weightgen.zoo.train import score

NET = {"name": "mlp", "hidden": [8]}


def train_and_record(rec: Recorder, runs: int = 2, steps: int = 24, every: int = 4, first_run: int = 0) -> None:
    """A plain PyTorch loop on digits, as a user writes one, recording every ``every`` steps."""
    task = get_task("digits")
    for run in range(first_run, first_run + runs):
        model = build_net("mlp", task.input_shape, task.num_classes, seed=run, hidden=[8])
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(run)
        for step in range(1, steps + 1):
            idx = torch.randint(0, len(task.y_train), (64,), generator=g)
            loss = nn.functional.cross_entropy(model(task.x_train[idx]), task.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % every == 0:
                rec.record(model, run=run, step=step, metrics={"train_loss": loss})


def test_recorder_loop_then_pdiff(tmp_path):
    zoo_dir = tmp_path / "zoo"
    with Recorder(zoo_dir, net=NET, task="digits") as rec:
        train_and_record(rec)
    with Zoo.open(zoo_dir) as zoo:
        members = zoo.members()
        assert [(m.run, m.step) for m in members] == [(r, s) for r in (0, 1) for s in range(4, 25, 4)]
        assert all(set(m.metrics) == {"train_loss"} for m in members)
        assert (zoo.config.zoo.mode, zoo.config.zoo.runs, zoo.config.zoo.checkpoints) == ("trajectory", 2, 6)
        assert zoo.meta("origin") == {"kind": "recorder"}
    # `weightgen run --zoo DIR` with a config of the same net and task: nothing trained, p-diff fitted, judged
    cfg = parse({"name": "recorded", "device": "cpu", "task": {"name": "digits"}, "net": NET,
                 "tokenizer": {"token_size": "flat"}, "generator": PDIFF_GEN,
                 "sample": {"n": 4, "batch_size": 4}, "evaluate": {"n_noise": 4, "sigmas": [0.01]}})
    report = run_experiment(cfg, zoo_dir, tmp_path / "run", show_progress=False)
    assert report["groups"]["original"]["n"] == 12 and report["groups"]["generated"]["n"] == 4
    assert len(manifest_rows(zoo_dir, "SELECT id FROM checkpoints")) == 12
    gen = load_generator(tmp_path / "run" / "generator", "cpu")
    net = Zoo.open(zoo_dir).build_net()
    batch = next(iter(gen.sample(2, seed=0)))
    net.load_state_dict({k: v[0] for k, v in batch.items()})


def test_reopen_appends_and_refuses(tmp_path):
    zoo_dir = tmp_path / "zoo"
    with Recorder(zoo_dir, net=NET, task="digits") as rec:
        rec.record(build_net("mlp", (64,), 10, seed=0, hidden=[8]), run=0, step=0)
    with Recorder(zoo_dir, net=NET, task="digits") as rec:
        rec.record(build_net("mlp", (64,), 10, seed=1, hidden=[8]).state_dict(), run=0)  # the next step: 1
        rec.record(build_net("mlp", (64,), 10, seed=2, hidden=[8]), run=1, split="heldout",
                   metrics={"test_loss": torch.tensor(0.5)})
        with pytest.raises(CheckpointError, match="run 0 already has a checkpoint at step 1"):
            rec.record(build_net("mlp", (64,), 10, hidden=[8]), run=0, step=1)
        with pytest.raises(CheckpointError, match=r"run 0, step 7: tensor '1.weight' has shape \(9, 64\) "
                                                  r"where net 'mlp' has \(8, 64\)"):
            rec.record(build_net("mlp", (64,), 10, hidden=[9]), run=0, step=7)
        with pytest.raises(CheckpointError, match="run 1 was recorded with split 'heldout'"):
            rec.record(build_net("mlp", (64,), 10, hidden=[8]), run=1, step=9)
    with Zoo.open(zoo_dir) as zoo:
        assert [(m.run, m.step, m.split) for m in zoo.members(None)] == [(0, 0, "train"), (0, 1, "train"),
                                                                         (1, 0, "heldout")]
        assert zoo.members("heldout")[0].metrics == {"test_loss": 0.5}
        assert (zoo.config.zoo.mode, zoo.config.zoo.heldout) == ("trajectory", 1)
    with pytest.raises(ZooError, match="holds checkpoints of another 'net'"):
        Recorder(zoo_dir, net={"name": "mlp", "hidden": [9]}, task="digits")


def test_recorder_evaluate_equals_score(tmp_path):
    model = build_net("mlp", (64,), 10, seed=3, hidden=[8])
    with Recorder(tmp_path / "zoo", net=NET, task="digits", evaluate=True) as rec:
        rec.record(model, run=0, step=0, metrics={"mine": 1})
    with Zoo.open(tmp_path / "zoo") as zoo:
        assert zoo.members()[0].metrics == {"mine": 1.0, **score(model, get_task("digits"), torch.device("cpu"))}


def test_recorder_with_a_users_own_net_file(tmp_path):
    """The issue's case: a LayerNorm MLP with odd widths, defined in the user's own file."""
    (tmp_path / "my_nets.py").write_text(
        "import math\n"
        "from torch import nn\n"
        "def make_net(input_shape, num_classes, widths=(37, 23)):\n"
        "    layers, d = [nn.Flatten()], math.prod(input_shape)\n"
        "    for w in widths:\n"
        "        layers += [nn.Linear(d, w), nn.LayerNorm(w), nn.ReLU()]\n"
        "        d = w\n"
        "    return nn.Sequential(*layers, nn.Linear(d, num_classes))\n")
    spec = importlib.util.spec_from_file_location("users_own_nets", tmp_path / "my_nets.py")
    users_own = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(users_own)
    model = users_own.make_net(get_task("digits").input_shape, 10)
    net = {"name": f"{tmp_path / 'my_nets.py'}:make_net", "widths": [37, 23]}
    with Recorder(tmp_path / "zoo", net=net, task="digits") as rec:
        for step in range(3):
            rec.record(model, run=0, step=step)
    with Zoo.open(tmp_path / "zoo") as zoo:
        assert zoo.build_net().state_dict()["2.weight"].shape == (37,)  # the LayerNorm
        assert len(zoo.members()) == 3


KILL_CHILD = """
import sys, torch
from weightgen.nets import build_net
from weightgen.zoo import Recorder
torch.set_num_threads(1)
with Recorder(sys.argv[1], net={"name": "mlp", "hidden": [8]}, task="digits") as rec:
    for step in range(100000):
        rec.record(build_net("mlp", (64,), 10, seed=step, hidden=[8]), run=0, step=step)
        print(step, flush=True)
"""


def test_recorder_survives_sigkill(tmp_path):
    zoo_dir = tmp_path / "zoo"
    proc = subprocess.Popen([PYTHON, "-c", KILL_CHILD, str(zoo_dir)], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(5):  # five checkpoints recorded, the sixth under way
            if not proc.stdout.readline():
                pytest.fail(f"the recorder ended before it was killed: {proc.stderr.read()}")
        time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    with Zoo.open(zoo_dir) as zoo:
        recorded = len(zoo.members())
        assert recorded >= 5 and zoo.verify() == []
        assert [m.step for m in zoo.members()] == list(range(recorded))
    with Recorder(zoo_dir, net=NET, task="digits") as rec:  # reopened: orphans gone, the run goes on
        rec.record(build_net("mlp", (64,), 10, hidden=[8]), run=0)
    with Zoo.open(zoo_dir) as zoo:
        assert [m.step for m in zoo.members()] == list(range(recorded + 1)) and zoo.verify() == []
    rows = {r[0] for r in manifest_rows(zoo_dir, "SELECT shard FROM checkpoints")}
    assert {p.name for p in (zoo_dir / "shards").iterdir()} == rows


# -- Lightning -------------------------------------------------------------------------------------------------
def test_lightning_callback(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from weightgen.integrations.lightning import ZooRecorderCallback

    task = get_task("digits")

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = build_net("mlp", task.input_shape, task.num_classes, hidden=[8])

        def training_step(self, batch, _):
            x, y = batch
            loss = nn.functional.cross_entropy(self.model(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(task.x_train[:256], task.y_train[:256]),
                                       batch_size=64)
    callbacks = [ZooRecorderCallback(tmp_path / "epochs", net=NET, task="digits", run=3, at_start=True),
                 ZooRecorderCallback(tmp_path / "steps", net=NET, task="digits", every_n_steps=3, module="model")]
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(Module(), data)
    with Zoo.open(tmp_path / "epochs") as zoo:
        assert [(m.run, m.step) for m in zoo.members()] == [(3, 0), (3, 4), (3, 8)]
        assert "train_loss" in zoo.members()[-1].metrics
        final = trainer.lightning_module.model.state_dict()
        assert all(torch.equal(v, final[k]) for k, v in zoo.load(zoo.members()[-1]).items())
    with Zoo.open(tmp_path / "steps") as zoo:
        assert [m.step for m in zoo.members()] == [3, 6]
