"""Control policies (weightgen/control): tasks scored by a return, CMA-ES zoos, and policies generated
for a prompted return, on tiny cases."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

pytest.importorskip("gymnasium")
pytest.importorskip("cma")

from weightgen.cli import app  # noqa: E402
from weightgen.config import parse_config  # noqa: E402
from weightgen.control import zoo as control_zoo  # noqa: E402
from weightgen.control.envs import ENVS, rollout  # noqa: E402
from weightgen.control.report import r_squared  # noqa: E402
from weightgen.evaluate import stack_states  # noqa: E402
from weightgen.nets import build_net  # noqa: E402
from weightgen.pipeline import fit_generator, run_experiment  # noqa: E402
from weightgen.tasks import get_task  # noqa: E402
from weightgen.zoo import Zoo, build_zoo  # noqa: E402

TINY_GPT = {"method": "gpt", "metric": "test_return", "architecture": "units", "d_model": 16, "layers": 1,
            "heads": 2, "steps": 30, "batch_size": 8, "diffusion": {"timesteps": 20}}


def _cfg(**over) -> dict:
    cfg = {"name": "cp", "seed": 0, "task": {"name": "cartpole", "episodes": 2},
           "net": {"name": "mlp", "hidden": [4], "activation": "tanh"},
           "train": {"lr": 0.5, "batch_size": 4, "epochs": 3},
           "zoo": {"mode": "policies", "runs": 4, "heldout": 1, "checkpoints": 3},
           "tokenizer": {"token_size": 8}, "generator": TINY_GPT,
           "sample": {"n": 20, "sampler": "ddim", "steps": 3}, "evaluate": {"sigmas": [0.1], "n_noise": 2}}
    cfg.update(over)
    return cfg


def parse(cfg: dict):
    return parse_config(cfg, "test")


def balancing_policy(hidden: int = 4) -> dict[str, torch.Tensor]:
    """Pushes the cart toward where the pole falls (angle + angular velocity > 0): it solves CartPole."""
    net = build_net("mlp", (4,), 2, hidden=[hidden], activation="tanh")
    sd = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    sd["1.weight"][0] = torch.tensor([0.0, 0.0, 5.0, 5.0])
    sd["3.weight"][1, 0], sd["3.weight"][0, 0] = 1.0, -1.0
    return sd


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("control") / "zoo"
    summary = build_zoo(parse(_cfg()), path, show_progress=False)
    assert summary == {"runs": 4, "trained": 4, "skipped": 0}
    return path


# -- the task ---------------------------------------------------------------------------------
def test_policies_are_scored_together_as_one_by_one_and_a_balancing_policy_solves_cartpole():
    task = get_task("cartpole", episodes=3)
    assert (task.num_classes, task.input_shape, task.headline) == (2, (4,), "return")
    net = build_net("mlp", (4,), 2, hidden=[4], activation="tanh").eval()
    states = [dict(build_net("mlp", (4,), 2, seed=s, hidden=[4], activation="tanh").state_dict()) for s in range(3)]
    states.append(balancing_policy())
    together = task.evaluate(net, stack_states(states), "test")
    alone = [float(task.evaluate(net, stack_states([s]), "test").metrics["return"][0]) for s in states[:3]]
    assert together.metrics["return"][:3].tolist() == pytest.approx(alone)
    assert float(together.metrics["return"][3]) == 500.0 and all(0 < a < 500 for a in alone)
    assert together.failures.shape == (4, 3) and not together.failures[-1].any()
    returns, lengths, finite = rollout(net, stack_states(states[:3]), "CartPole-v1", task.seeds("val"))
    assert torch.equal(returns, lengths.float()) and finite.all()  # CartPole pays 1 a step


def test_acrobot_is_scored_through_a_sync_vector_env():
    task = get_task("acrobot", episodes=1)
    net = build_net("mlp", (6,), 3, hidden=[4]).eval()
    scores = task.evaluate(net, stack_states([dict(net.state_dict())] * 2), "test")
    assert task.num_classes == 3 and scores.metrics["return"].tolist() == [-500.0, -500.0]


def test_an_unsupported_env_and_a_policy_that_does_not_fit_are_named(tmp_path):
    with pytest.raises(ValueError, match=f"'MountainCar-v0' is not supported; supported: {', '.join(ENVS)}"):
        get_task("control", env="MountainCar-v0")
    task = get_task("cartpole", episodes=1)
    wide = build_net("mlp", (6,), 2, hidden=[4]).eval()
    with pytest.raises(ValueError, match=r"does not fit CartPole-v1: it takes inputs of its first weight \(4, 6\), "
                                         r"the environment gives observations \(4,\)"):
        task.evaluate(wide, stack_states([dict(wide.state_dict())]), "test")
    three = build_net("mlp", (4,), 3, hidden=[4]).eval()
    with pytest.raises(ValueError, match=r"it outputs \(3,\) per observation, the environment has 2 actions, so \(2,\)"):
        task.evaluate(three, stack_states([dict(three.state_dict())]), "test")
    with pytest.raises(ValueError, match="a return, which has no gradient: build its zoo with zoo.mode: policies"):
        build_zoo(parse(_cfg(zoo={"mode": "seeds", "runs": 2})), tmp_path / "sgd", show_progress=False)


# -- the zoo ----------------------------------------------------------------------------------
def test_a_policies_zoo_holds_cma_es_trajectories_with_their_returns(tiny_zoo):
    with Zoo.open(tiny_zoo) as zoo:
        train, held = zoo.members("train"), zoo.members("heldout")
        assert len(train) == 9 and len(held) == 3 and {m.run for m in held} == {3}
        assert [m.step for m in train if m.run == 0] == [0, 2, 3]
        m = train[-1]
        assert set(m.metrics) == {"train_return", "val_return", "test_return", "interactions"}
        assert [x.metrics["interactions"] for x in train if x.run == 0][0] == 0
        # the first checkpoint is the run's own initial weights
        init = build_net("mlp", (4,), 2, seed=0, hidden=[4], activation="tanh").state_dict()
        first = zoo.load(train[0])
        assert all(torch.allclose(first[k], init[k]) for k in init)
    again = build_zoo(parse(_cfg()), tiny_zoo, show_progress=False)
    assert again == {"runs": 4, "trained": 0, "skipped": 4}


def test_a_run_is_the_same_whichever_runs_share_its_chunk(tmp_path, monkeypatch, tiny_zoo):
    monkeypatch.setattr(control_zoo, "CHUNK", 1)
    cfg = parse(_cfg(zoo={"mode": "policies", "runs": 2, "heldout": 1, "checkpoints": 3}))
    build_zoo(cfg, tmp_path / "alone", show_progress=False)
    with Zoo.open(tmp_path / "alone") as alone, Zoo.open(tiny_zoo) as together:
        a = [m for m in alone.members("train") if m.run == 0]
        b = [m for m in together.members("train") if m.run == 0]
        assert [m.metrics["test_return"] for m in a] == [m.metrics["test_return"] for m in b]
        assert all(torch.equal(alone.load(x)["1.weight"], together.load(y)["1.weight"]) for x, y in zip(a, b))


# -- generation for a prompted return ---------------------------------------------------------
def test_gpt_prompted_policies_load_into_the_net_and_are_reported(tiny_zoo, tmp_path, caplog):
    report = run_experiment(parse(_cfg()), tiny_zoo, tmp_path / "run", show_progress=False)  # `weightgen run`
    lo, hi = report["fit"]["metric_range"]
    with Zoo.open(tiny_zoo) as zoo:
        shard = tiny_zoo / "shards" / zoo.members("heldout")[0].shard
    p = report["prompted"]
    assert p["zoo_range"] == [lo, hi] and len(p["prompted"]) == 20 and len(p["achieved"]) == 20
    assert p["r2"] == pytest.approx(r_squared(p["prompted"], p["achieved"]))
    assert (report["metric"], report["better"]) == ("return", "higher")
    assert (tmp_path / "run" / "policy.png").stat().st_size > 0
    assert json.loads((tmp_path / "run" / "report.json").read_text())["timing"]["fit_seconds"] > 0
    assert "reach the solved return 475" in (tmp_path / "run" / "report.md").read_text()
    out = tmp_path / "samples"
    with caplog.at_level(logging.WARNING):
        res = CliRunner().invoke(app, ["sample", str(tmp_path / "run" / "generator"), "--start", str(shard), "--start-metric", "20",
                                       "--target-metric", "900", "--n", "2", "--out", str(out), "--sampler", "ddim",
                                       "--steps", "2"])
    assert res.exit_code == 0, res.output
    assert f"outside the range the training checkpoints cover [{lo:.4g}, {hi:.4g}]" in caplog.text
    net = build_net("mlp", (4,), 2, hidden=[4], activation="tanh")
    net.load_state_dict(load_file(str(out / "sample_0000.safetensors")))


def test_rpg_conditioned_on_the_return_samples_policies(tiny_zoo, tmp_path, caplog):
    rpg = {"method": "rpg", "condition": "metric", "metric": "test_return", "d_model": 16, "layers": 1,
           "unet_channels": [8, 16], "steps": 10, "batch_size": 4, "tokens_per_step": 4, "backbone": "lstm",
           "diffusion": {"timesteps": 20}}
    cfg = parse(_cfg(generator=rpg))
    with Zoo.open(tiny_zoo) as zoo:
        gen, stats = fit_generator(cfg, zoo, show_progress=False)
    gen.save(tmp_path / "gen")
    lo, hi = gen.metric_range
    with caplog.at_level(logging.WARNING):
        res = CliRunner().invoke(app, ["sample", str(tmp_path / "gen"), "--metric", "900", "--n", "2",
                                       "--out", str(tmp_path / "s"), "--sampler", "ddim", "--steps", "2"])
    assert res.exit_code == 0, res.output
    assert f"outside what the zoo covers ({lo:.4g} to {hi:.4g})" in caplog.text
    policy = load_file(str(tmp_path / "s" / "sample_0001.safetensors"))
    returns, _, _ = rollout(build_net("mlp", (4,), 2, hidden=[4], activation="tanh").eval(),
                            {k: v[None] for k, v in policy.items()}, "CartPole-v1", [0])
    assert 0 < float(returns[0, 0]) <= 500 and np.isfinite(float(returns[0, 0]))
