"""Objectives beyond classification: a regression task through the zoo, the evaluator, the report
and the metric conditions of RPG and G.pt; a task that scores networks itself; the report's
direction when lower is better."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from conftest import PDIFF_GEN, build, parse, tiny_cfg
from weightgen.evaluate import Evaluator, Scores, judge, stack_states
from weightgen.evaluate.judging import Objective, notes
from weightgen.generators import GeneratorError
from weightgen.generators.base import member_metric
from weightgen.nets import build_net
from weightgen.pipeline import fit_generator, run_experiment, train_stack
from weightgen.tasks import TASKS, RegressionTask, Task, TaskCodeError, get_task
from weightgen.zoo import Zoo
from weightgen.zoo.train import score

FUNCTIONS = {"name": "functions", "num_samples": 400}
TRAIN = {"optimizer": "adam", "lr": 0.01, "batch_size": 32, "epochs": 2}
SMALL_EVAL = {"n_noise": 4, "sigmas": [0.01, 0.1]}
TINY_RPG = {"method": "rpg", "d_model": 16, "layers": 1, "unet_channels": [4, 8], "kernel_size": 3, "steps": 20,
            "batch_size": 2, "tokens_per_step": 5, "diffusion": {"timesteps": 20}}
TINY_GPT = {"method": "gpt", "d_model": 16, "layers": 1, "heads": 2, "steps": 20, "batch_size": 4, "ema": None,
            "diffusion": {"timesteps": 20, "prediction": "sample"}}


def _functions_cfg(**sections) -> dict:
    return tiny_cfg(task=FUNCTIONS, train=TRAIN, **sections)


# -- the regression task ----------------------------------------------------------------------
def test_functions_is_a_registered_regression_task_made_by_the_code():
    t = get_task("functions", num_samples=400)
    assert "functions" in TASKS and isinstance(t, RegressionTask) and isinstance(t, Task)
    assert (t.kind, t.headline, t.metrics) == ("regression", "psnr", {"loss": "lower", "psnr": "higher"})
    assert t.input_shape == (2,) and t.num_classes == 1 and t.y_train.shape == (240, 1)
    assert {s: len(t.split(s)[1]) for s in ("train", "val", "test")} == {"train": 240, "val": 80, "test": 80}
    again = get_task("functions", num_samples=400)
    assert torch.equal(t.x_test, again.x_test) and torch.equal(t.y_train, again.y_train)
    # the training targets are noisy, the test targets the clean function
    clean = torch.sin(torch.pi * t.x_test[:, 0]) * torch.cos(torch.pi * t.x_test[:, 1])
    torch.testing.assert_close(t.y_test[:, 0], clean)
    assert not torch.equal(get_task("functions", function="ripple", num_samples=400).y_test, t.y_test)
    with pytest.raises(ValueError, match="unknown function 'sine'; allowed: waves, bump, ripple"):
        get_task("functions", function="sine")
    with pytest.raises(TaskCodeError, match="'functions' is a regression task: class-subset codes need class labels"):
        get_task("functions", code="0100100001")


def test_regression_scores_failures_and_checks():
    x = torch.zeros(4, 3)
    y = torch.tensor([0.0, 1.0, 2.0, 3.0])  # 1-D targets are read as (N, 1)
    t = RegressionTask("mine", x, y, x, y, x, y, tolerance=0.5)
    assert t.y_train.shape == (4, 1) and t.num_classes == 1 and t.data_range == 3.0
    out = torch.stack([y[:, None], y[:, None] + torch.tensor([[0.0], [0.0], [1.0], [0.2]])])  # (2 models, 4, 1)
    s = t.batch_scores(out, t.y_test)
    assert s["loss"].tolist() == pytest.approx([0.0, (1.0 + 0.04) / 4])
    assert s["psnr"][1].item() == pytest.approx(10 * torch.log10(torch.tensor(9.0 / 0.26)).item())
    assert t.failures(out, t.y_test).tolist() == [[False] * 4, [False, False, True, False]]
    assert t.scores(out[1], t.y_test) == pytest.approx({"loss": 0.26, "psnr": s["psnr"][1].item()})
    assert t.loss(out[1], t.y_test).item() == pytest.approx(0.26)
    assert RegressionTask("mine", x, y, x, y, x, y).tolerance == pytest.approx(0.3)  # a tenth of the range
    with pytest.raises(ValueError, match=r"outputs \(4, 2\) do not fit the targets \(4, 1\)"):
        t.loss(torch.zeros(4, 2), t.y_test)
    with pytest.raises(ValueError, match="y_train has dtype torch.int64; targets must be float"):
        RegressionTask("mine", x, y.long(), x, y, x, y)
    with pytest.raises(ValueError, match="headline metric 'accuracy' is not one of its metrics \\(loss, psnr\\)"):
        RegressionTask("mine", x, y, x, y, x, y, headline="accuracy")


def test_regression_evaluation_under_vmap_equals_a_loop_and_marks_nonfinite_models():
    task = get_task("functions", num_samples=400)
    states = [dict(build_net("mlp", task.input_shape, 1, seed=s, hidden=[8]).state_dict()) for s in range(3)]
    states[2]["1.weight"][0, 0] = float("nan")
    net = build_net("mlp", task.input_shape, 1, hidden=[8])
    got = Evaluator(net, task, chunk=2, batch=32)(stack_states(states))  # chunks of models, batches of samples
    x, y = task.split("test")
    for i, s in enumerate(states[:2]):
        out = functional_call(net, s, (x,))
        assert got.metrics["loss"][i].item() == pytest.approx(F.mse_loss(out, y).item(), rel=1e-5)
        assert torch.equal(got.failures[i], (out - y).abs()[:, 0] > task.tolerance)
    assert got.finite.tolist() == [True, True, False]
    assert torch.isnan(got.metrics["psnr"][2]) and got.failures[2].all()
    assert got.loss is got.metrics["loss"] and got.wrong is got.failures


# -- a zoo of it, and the generators on it -----------------------------------------------------
@pytest.fixture(scope="module")
def functions_seeds(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoos") / "functions_seeds"
    build(_functions_cfg(zoo={"mode": "seeds", "runs": 3, "heldout": 1, "checkpoints": 2, "every": 2}), path)
    return path


@pytest.fixture(scope="module")
def functions_trajectory(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoos") / "functions_trajectory"
    build(_functions_cfg(zoo={"mode": "trajectory", "runs": 3, "checkpoints": 4, "heldout": 1}), path)
    return path


def test_the_zoo_records_every_metric_of_the_task(functions_seeds):
    task = get_task(**FUNCTIONS)
    with Zoo.open(functions_seeds) as zoo:
        net = zoo.build_net()
        for m in zoo.members("train"):
            assert set(m.metrics) == {f"{s}_{k}" for s in ("train", "val", "test") for k in ("loss", "psnr")}
            net.load_state_dict(zoo.load(m))
            assert score(net, task, torch.device("cpu")) == pytest.approx(m.metrics)
        assert Evaluator(net, task)(train_stack(zoo)).metrics["psnr"].tolist() == pytest.approx(
            [m.metrics["test_psnr"] for m in zoo.members("train")], rel=1e-5)


@pytest.mark.parametrize("generator", [
    {**PDIFF_GEN, "ae_steps": 10, "diffusion_steps": 10},
    TINY_RPG,
], ids=["pdiff", "rpg"])
def test_generators_fit_sample_and_are_judged_by_psnr(functions_seeds, tmp_path, generator):
    cfg = parse(_functions_cfg(zoo={"mode": "seeds", "runs": 3, "heldout": 1, "checkpoints": 2, "every": 2},
                               tokenizer={"token_size": "flat" if generator["method"] == "pdiff" else 16},
                               generator=generator, sample={"n": 4, "batch_size": 4}, evaluate=SMALL_EVAL))
    report = run_experiment(cfg, zoo_dir=functions_seeds, run_dir=tmp_path, show_progress=False)
    assert (report["metric"], report["better"]) == ("psnr", "higher")
    g = report["groups"]
    assert {"original", "weight_average", "generated", "heldout", "run_average"} <= set(g)
    assert "accuracy" not in g["generated"] and len(g["generated"]["psnr"]) == 4
    assert g["original"]["best"] == max(g["original"]["psnr"])
    text = "\n".join(report["notes"])
    assert "generated best psnr" in text and "(higher is better)" in text and "novelty at equal psnr" in text
    assert "accuracy" not in text and "points" not in text
    md = (tmp_path / "report.md").read_text()
    assert "Best, mean and median are the test psnr (higher is better)." in md
    assert json.loads((tmp_path / "report.json").read_text())["metric"] == "psnr"
    assert (tmp_path / "novelty.png").stat().st_size > 0


@pytest.mark.parametrize("metric", ["test_loss", "test_psnr"])
def test_gpt_and_rpg_are_conditioned_on_a_regression_metric(functions_trajectory, metric):
    cfg = parse(_functions_cfg(zoo={"mode": "trajectory", "runs": 3, "checkpoints": 4, "heldout": 1},
                               tokenizer={"token_size": 16}, generator={**TINY_GPT, "metric": metric}))
    with Zoo.open(functions_trajectory) as zoo:
        gen, stats = fit_generator(cfg, zoo, show_progress=False)
        members = zoo.members("train")
        values = [m.metrics[metric] for m in members]
        assert stats["metric_range"] == pytest.approx([min(values), max(values)])
        start = members[0]
        best = max(values) if metric == "test_psnr" else min(values)
        batch = next(gen.sample(2, {"start": zoo.load(start), "start_metric": start.metrics[metric],
                                    "target_metric": best}, seed=0, sampler="ddim", steps=3))
        assert all(torch.isfinite(v).all() for v in batch.values()) and batch["1.weight"].shape[0] == 2
        rpg_cfg = parse(_functions_cfg(tokenizer={"token_size": 16},
                                       generator={**TINY_RPG, "condition": "metric", "metric": metric}))
        rpg, _ = fit_generator(rpg_cfg, zoo, show_progress=False)
        assert rpg.metric_range == pytest.approx([min(values), max(values)])
        assert next(rpg.sample(2, best, seed=0))["1.weight"].shape[0] == 2


def test_a_metric_the_zoo_does_not_record_is_named_with_the_ones_it_does(functions_trajectory):
    with Zoo.open(functions_trajectory) as zoo:
        m = zoo.members("train")[0]
        assert member_metric(m, "val_psnr") == m.metrics["val_psnr"]
        with pytest.raises(GeneratorError, match="no metric 'test_error'; it has: train_loss, train_psnr, .*test_psnr$"):
            member_metric(m, "test_error")  # error is 1 - accuracy, and a regression zoo records none
        for spec in ({**TINY_GPT, "metric": "test_los"}, {**TINY_RPG, "condition": "metric", "metric": "test_los"}):
            cfg = parse(_functions_cfg(tokenizer={"token_size": 16}, generator=spec))
            with pytest.raises(GeneratorError, match="no metric 'test_los'; it has: .*test_loss"):
                fit_generator(cfg, zoo, show_progress=False)


# -- a task that scores networks itself, and a headline where lower is better -------------------
class SignTask(RegressionTask):
    """Judged by a metric no output-batched formula gives here: the share of examples whose sign the
    network gets wrong, counted one network at a time (``evaluate``)."""

    metrics = {"loss": "lower", "sign_errors": "lower"}
    calls = 0

    def evaluate(self, net, stacked, split):
        SignTask.calls += 1
        x, y = self.split(split)
        b = next(iter(stacked.values())).shape[0]
        outs = torch.stack([functional_call(net, {k: v[i] for k, v in stacked.items()}, (x,)) for i in range(b)])
        wrong = (outs.sign() != y.sign())[..., 0]
        return Scores({"loss": (outs - y).square().mean((1, 2)), "sign_errors": wrong.float().mean(1)}, wrong,
                      torch.isfinite(outs).flatten(1).all(1))


def test_a_task_with_its_own_evaluation_is_judged_by_it_in_its_direction(tmp_path):
    base = get_task("functions", num_samples=400)
    task = SignTask("signs", base.x_train, base.y_train, base.x_val, base.y_val, base.x_test, base.y_test,
                    headline="sign_errors")
    net = build_net("mlp", task.input_shape, 1, hidden=[8])
    stacked = stack_states([dict(build_net("mlp", (2,), 1, seed=s, hidden=[8]).state_dict()) for s in range(4)])
    recorded = score(net, task, torch.device("cpu"))
    assert set(recorded) == {f"{s}_{k}" for s in ("train", "val", "test") for k in ("loss", "sign_errors")}
    SignTask.calls = 0
    report = judge(net, task, stacked, stacked, list(stacked), tmp_path, sigmas=(0.01, 0.1), n_noise=4)
    assert SignTask.calls > 0 and (report["metric"], report["better"]) == ("sign_errors", "lower")
    orig = report["groups"]["original"]
    assert orig["best"] == min(orig["sign_errors"]) and orig["worst"] == max(orig["sign_errors"])
    assert "(lower is better)" in "\n".join(report["notes"])
    assert "the test sign_errors (lower is better)" in (tmp_path / "report.md").read_text()


def _g(mean, iou, n=10, metric="loss"):
    return {"n": n, "n_nonfinite": 0, "best": mean, "mean": mean, "median": mean, "worst": mean,
            "max_iou_mean": iou, "max_iou_median": iou, "nearest_distance_mean": 1.0,
            metric: [mean] * n, "max_iou": [iou] * n, "nearest_distance": [1.0] * n}


def test_notes_compare_in_the_direction_of_the_metric():
    loss = Objective("loss", higher=False)
    # noise raises the loss: 0.10 at sigma 0.01 (IoU 0.95), 0.20 at 0.05 (0.7), 0.50 at 0.1 (0.4)
    base = {"original": _g(0.10, 0.9), "weight_average": _g(0.30, 0.2, 1),
            "noise_0.01": _g(0.10, 0.95), "noise_0.05": _g(0.20, 0.7), "noise_0.1": _g(0.50, 0.4)}
    text = "\n".join(notes({**base, "generated": _g(0.15, 0.5)}, loss))
    assert "generated best loss 0.15 > original best 0.1 (lower is better)" in text
    assert "generated mean 0.15 beats the weight average 0.3 (-0.15)" in text
    # at loss 0.15 noise reaches IoU 0.825 (halfway between sigma 0.01 and 0.05)
    assert "noise-added originals reach 0.825 at that loss" in text and "LOWER max IoU" in text
    better = "\n".join(notes({**base, "generated": _g(0.05, 0.5)}, loss))  # a lower loss than every noise level
    assert "generated best loss 0.05 <= original best 0.1" in better and "no noise level reaches that loss" in better
    assert "while being better in loss" in better
    worse = "\n".join(notes({**base, "generated": _g(0.6, 0.3)}, loss))  # every noise level has a lower loss
    assert "every noise level is better in loss (worst: σ=0.1 at 0.5" in worse and "does not beat" in worse
    # classification reads as before
    acc = {k: _g(1 - v["mean"], v["max_iou_mean"], v["n"], "accuracy") for k, v in base.items()}
    text = "\n".join(notes({**acc, "generated": _g(0.85, 0.5, metric="accuracy")}))
    assert "generated best 0.8500 < original best 0.9000 (higher is better)" in text
    assert "generated mean 0.8500 beats the weight average 0.7000 (+15.0 points)" in text
    assert "novelty at equal accuracy: generated mean accuracy 0.8500" in text
