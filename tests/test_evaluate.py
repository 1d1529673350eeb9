"""weightgen.evaluate: batched scores equal a per-model loop, novelty measures are right,
the baselines do what they say, and the report tells a copy from a new model."""
from __future__ import annotations

import json
import logging
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightgen.config import parse_config
from weightgen.evaluate import (
    Evaluator, Scores, evaluate_states, evaluate_stream, flatten_states, iou_matrix, judge, max_iou,
    nearest_distance, noise_added, run_averages, stack_states, unstack_states, weight_average,
)
from weightgen.evaluate import novelty
from weightgen.evaluate.judging import notes
from weightgen.nets import build_net
from weightgen.tasks import get_task
from weightgen.zoo import Zoo, build_zoo


@pytest.fixture(scope="module")
def digits():
    return get_task("digits")


def _states(name, task, n, **kwargs):
    states = [dict(build_net(name, task.input_shape, task.num_classes, seed=s, **kwargs).state_dict()) for s in range(n)]
    gen = torch.Generator().manual_seed(0)
    for s in states:  # random BatchNorm statistics, so that ignoring the stacked buffers would show
        for k, v in s.items():
            if k.endswith("running_mean"):
                s[k] = 0.3 * torch.randn(v.shape, generator=gen)
            elif k.endswith("running_var"):
                s[k] = 0.5 + torch.rand(v.shape, generator=gen)
    return states


@torch.no_grad()
def _loop(net, states, task):
    """The plain reference: load each state, eval mode, forward."""
    x, y = task.split("test")
    acc, loss, wrong = [], [], []
    for s in states:
        net.load_state_dict(s)
        net.eval()
        logits = net(x)
        wrong.append(logits.argmax(-1) != y)
        acc.append(1 - wrong[-1].float().mean())
        loss.append(F.cross_entropy(logits, y))
    return torch.stack(acc), torch.stack(loss), torch.stack(wrong)


@pytest.mark.parametrize("name,kwargs", [("mlp", {"hidden": [16]}), ("cnn", {"batchnorm": True}), ("vit", {})])
def test_vmap_equals_per_model_loop(digits, name, kwargs, caplog):
    states = _states(name, digits, 3, **kwargs)
    # A net that is none of the models, left in train mode: the evaluation must use only
    # the stacked parameters and buffers, in eval mode, and restore the mode after.
    net = build_net(name, digits.input_shape, 10, seed=99, **kwargs).train()
    ev = Evaluator(net, digits, chunk=2, batch=128)  # 3 models in chunks of 2; 360 samples in 3 batches
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        got = ev(stack_states(states))
    assert ev.vectorized, "fell back to a per-model loop"
    assert not caplog.records
    assert not [w for w in caught if "batching rule" in str(w.message)], "vmap looped inside an op"
    assert net.training
    acc, loss, wrong = _loop(build_net(name, digits.input_shape, 10, **kwargs), states, digits)
    assert got.finite.all()
    assert torch.equal(got.wrong, wrong)
    torch.testing.assert_close(got.accuracy, acc)
    torch.testing.assert_close(got.loss, loss, atol=1e-5, rtol=1e-5)
    if name == "cnn":  # the buffers were used: default BatchNorm statistics give other numbers
        plain = [{**s, **{k: v for k, v in net.state_dict().items() if "running" in k}} for s in states]
        assert not torch.equal(evaluate_states(net, stack_states(plain), digits).loss, got.loss)


class _ItemNet(nn.Module):
    """Reads a weight with .item() in forward, which vmap cannot batch."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        scale = float(self.lin.weight.abs().max().item())
        return self.lin(x.flatten(1)) / scale


def test_unbatchable_net_falls_back_to_loop(digits, caplog):
    states = [dict(_ItemNet().state_dict()) for _ in range(3)]
    net = _ItemNet()
    with caplog.at_level(logging.WARNING, logger="weightgen.evaluate.batched"):
        got = evaluate_states(net, stack_states(states), digits)
    assert "one at a time" in caplog.text
    acc, loss, wrong = _loop(_ItemNet(), states, digits)
    assert torch.equal(got.wrong, wrong)
    torch.testing.assert_close(got.loss, loss)


def test_stream_and_stacking_round_trip(digits):
    states = _states("mlp", digits, 5, hidden=[8])
    net = build_net("mlp", digits.input_shape, 10, hidden=[8])
    stacked = stack_states(states)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(unstack_states(stacked), states) for k in a)
    whole = evaluate_states(net, stacked, digits, chunk=2)
    streamed = evaluate_stream(net, (stack_states(states[i:i + 2]) for i in range(0, 5, 2)), digits)
    for f in ("accuracy", "loss", "wrong", "finite"):
        assert torch.equal(getattr(whole, f), getattr(streamed, f))
    assert len(Scores.cat([whole, whole])) == 10


def test_mismatched_stacked_weights_are_named(digits):
    net = build_net("mlp", digits.input_shape, 10, hidden=[8])
    stacked = stack_states(_states("mlp", digits, 2, hidden=[8]))
    with pytest.raises(ValueError, match=r"'extra\.weight'"):
        evaluate_states(net, {**stacked, "extra.weight": torch.zeros(2, 3)}, digits)
    with pytest.raises(ValueError, match=r"'3\.bias'.*missing"):
        evaluate_states(net, {k: v for k, v in stacked.items() if k != "3.bias"}, digits)
    with pytest.raises(ValueError, match=r"'1\.weight'.*\(8, 64\).*\(8, 63\)"):
        evaluate_states(net, {**stacked, "1.weight": stacked["1.weight"][..., :63]}, digits)
    with pytest.raises(ValueError, match="state 1"):
        stack_states([{"a": torch.zeros(2)}, {"a": torch.zeros(3)}])


def test_nonfinite_models_are_marked_not_fatal(digits):
    states = _states("mlp", digits, 4, hidden=[16])
    net = build_net("mlp", digits.input_shape, 10, hidden=[16])
    good = evaluate_states(net, stack_states([states[0], states[3]]), digits)
    states[1]["1.weight"][0, 0] = math.inf  # non-finite weight
    states[2]["3.weight"].fill_(3e38)  # finite weights, but the logits overflow
    got = evaluate_states(net, stack_states(states), digits)
    assert got.finite.tolist() == [True, False, False, True]
    assert torch.isnan(got.accuracy[1:3]).all() and torch.isnan(got.loss[1:3]).all()
    assert got.wrong[1:3].all()
    keep = torch.tensor([0, 3])
    assert torch.equal(got.accuracy[keep], good.accuracy) and torch.equal(got.loss[keep], good.loss)
    assert torch.equal(got.wrong[keep], good.wrong)


def test_iou_by_hand():
    a = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    expected = torch.tensor([[1 / 3, 0.0, 1.0], [0.0, 1.0, 0.0]])  # two perfect models agree: 1.0
    torch.testing.assert_close(iou_matrix(a, b), expected)
    torch.testing.assert_close(max_iou(a, b), torch.tensor([1.0, 1.0]))
    # Against itself: without the diagonal, b's rows see only the others.
    torch.testing.assert_close(max_iou(b, b, exclude_diagonal=True), torch.tensor([1 / 3, 0.0, 1 / 3]))
    assert torch.isnan(max_iou(a[:1], a[:1], exclude_diagonal=True)).all()


def _brute(a, ref, exclude_diagonal=False):
    d = (a.double()[:, None] - ref.double()[None]).norm(dim=-1)
    if exclude_diagonal:
        d.fill_diagonal_(math.inf)
    return d.min(1).values


def test_nearest_distance_matches_brute_force(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    ref = 100 + torch.randn(9, 3000, generator=gen)  # far from 0: the matmul form of cdist loses exactness here
    a = torch.cat([ref[[4, 0]], ref[:3] + 0.01 * torch.randn(3, 3000, generator=gen), torch.randn(2, 3000) + 100])
    got = nearest_distance(a, ref)
    torch.testing.assert_close(got.double(), _brute(a, ref), rtol=1e-5, atol=1e-4)
    assert got[:2].tolist() == [0.0, 0.0]  # exact copies are exactly 0 away
    torch.testing.assert_close(nearest_distance(ref, ref, exclude_diagonal=True).double(),
                               _brute(ref, ref, exclude_diagonal=True), rtol=1e-5, atol=1e-4)
    monkeypatch.setattr(novelty, "_BLOCK", 1)  # one query row per block
    torch.testing.assert_close(nearest_distance(a, ref).double(), _brute(a, ref), rtol=1e-5, atol=1e-4)
    bad = a.clone()
    bad[1, 5] = math.nan
    out = nearest_distance(bad, ref)
    assert math.isnan(out[1]) and torch.equal(out[[0, 2]], got[[0, 2]])


def test_flatten_states_order():
    stacked = {"a": torch.arange(4.0).view(2, 2), "b": torch.arange(6.0).view(2, 3) + 10, "c": torch.zeros(2, 1)}
    assert flatten_states(stacked, ["b", "a"]).tolist() == [[10, 11, 12, 0, 1], [13, 14, 15, 2, 3]]
    with pytest.raises(ValueError, match="'z'"):
        flatten_states(stacked, ["z"])


def test_noise_added(digits):
    stacked = stack_states(_states("mlp", digits, 6, hidden=[8]))
    names = ["1.weight", "1.bias"]
    same = noise_added(stacked, names, 0.0, 12, seed=3)
    noisy = noise_added(stacked, names, 0.1, 12, seed=3)
    picked = [int((stacked["3.weight"] == same["3.weight"][i]).all((1, 2)).nonzero()) for i in range(12)]
    assert sorted(picked) == sorted(list(range(6)) * 2)  # every original used, evenly
    for k in stacked:
        assert torch.equal(same[k], stacked[k][picked])  # sigma 0: exact copies
        if k not in names:
            assert torch.equal(noisy[k], stacked[k][picked])  # untouched
    diff = noisy["1.weight"] - stacked["1.weight"][picked]
    assert abs(diff.std().item() - 0.1) < 0.01 and abs(diff.mean().item()) < 0.01
    reordered = dict(reversed(list(stacked.items())))  # same seed, same models, whatever the key order
    assert all(torch.equal(noise_added(reordered, names, 0.1, 12, seed=3)[k], noisy[k]) for k in stacked)
    assert not torch.equal(noise_added(stacked, names, 0.1, 12, seed=4)["1.weight"], noisy["1.weight"])
    with pytest.raises(ValueError, match="'nope'"):
        noise_added(stacked, ["nope"], 0.1, 2, seed=0)


def test_weight_average(digits):
    stacked = stack_states(_states("mlp", digits, 3, hidden=[8]))
    avg = weight_average(stacked, ["1.weight"])
    assert all(v.shape[0] == 1 for v in avg.values())
    torch.testing.assert_close(avg["1.weight"][0], (stacked["1.weight"][0] + stacked["1.weight"][1] +
                                                    stacked["1.weight"][2]) / 3)
    assert torch.equal(avg["3.weight"][0], stacked["3.weight"][0])



def test_run_averages_average_each_runs_own_checkpoints(digits):
    stacked = stack_states(_states("mlp", digits, 5, hidden=[8]))
    runs = [3, 1, 3, 1, 3]  # out of order: one model per run, in run order (1, then 3)
    avg = run_averages(stacked, ["1.weight"], runs)
    assert all(v.shape[0] == 2 for v in avg.values())
    w = stacked["1.weight"]
    torch.testing.assert_close(avg["1.weight"][0], (w[1] + w[3]) / 2)
    torch.testing.assert_close(avg["1.weight"][1], (w[0] + w[2] + w[4]) / 3)
    # not generated: the run's first checkpoint's
    assert torch.equal(avg["3.weight"][0], stacked["3.weight"][1]) and torch.equal(avg["3.weight"][1], stacked["3.weight"][0])
    with pytest.raises(ValueError, match="run of each of the 5"):
        run_averages(stacked, ["1.weight"], runs[:4])


def _g(mean, iou, n=10):
    return {"n": n, "n_nonfinite": 0, "best": mean, "mean": mean, "median": mean, "worst": mean,
            "max_iou_mean": iou, "max_iou_median": iou, "nearest_distance_mean": 1.0,
            "accuracy": [mean] * n, "max_iou": [iou] * n, "nearest_distance": [1.0] * n}


def test_novelty_note_at_equal_accuracy():
    base = {"original": _g(0.92, 0.9), "weight_average": _g(0.5, 0.2, 1),
            "noise_0.01": _g(0.92, 0.95), "noise_0.05": _g(0.88, 0.7), "noise_0.1": _g(0.7, 0.4)}
    # At accuracy 0.90 noise reaches IoU 0.825 (halfway between sigma 0.01 and 0.05).
    text = " ".join(notes({**base, "generated": _g(0.90, 0.5)}))
    assert "LOWER max IoU" in text and "0.825" in text and "beats the weight average" in text
    text = " ".join(notes({**base, "generated": _g(0.90, 0.9)}))
    assert "not more novel than noise-added originals at the same accuracy" in text
    text = " ".join(notes({**base, "generated": _g(0.6, 0.45)}))  # less accurate and less novel than sigma 0.1
    assert "not more novel" in text


def test_novelty_note_counts_noise_within_the_standard_error_as_equally_accurate():
    """Generated 0.9889 +- 0.0006 against noise at 0.9886 (IoU 0.895) and 0.9887 (IoU 0.981): the
    bar is 0.895, not "more accurate than every noise level"."""
    base = {"original": _g(0.9887, 0.97), "weight_average": _g(0.1, 0.2, 1),
            "noise_0.001": _g(0.9887, 0.981), "noise_0.003": _g(0.9886, 0.895), "noise_0.01": _g(0.9667, 0.597)}
    spread = _g(0.9889, 0.916, n=50)
    spread["accuracy"] = [0.9861, 0.9917] * 25  # standard error 0.0004
    text = " ".join(notes({**base, "generated": spread}))
    assert "not more novel" in text and "0.895" in text and "standard error" in text
    spread["max_iou_mean"] = 0.85
    assert "LOWER max IoU" in " ".join(notes({**base, "generated": spread}))
    exact = _g(0.9889, 0.916, n=50)  # no spread: 0.9889 is more accurate than every noise level
    assert "no noise level is that accurate" in " ".join(notes({**base, "generated": exact}))


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    cfg = parse_config({"task": {"name": "digits"}, "net": {"name": "mlp", "hidden": [16]},
                        "train": {"epochs": 3}, "zoo": {"mode": "seeds", "runs": 6, "checkpoints": 1}})
    path = tmp_path_factory.mktemp("zoo")
    build_zoo(cfg, path, show_progress=False)
    zoo = Zoo.open(path)
    stacked = stack_states([s for _, s in zoo.iter_state_dicts()])
    return zoo.build_net(), stacked, zoo.parameter_names


def test_judge_flags_copies_of_the_originals(tiny_zoo, digits, tmp_path):
    net, stacked, names = tiny_zoo
    report = judge(net, digits, stacked, stacked, names, tmp_path, n_noise=20, title="copies")
    assert {p.name for p in tmp_path.iterdir()} >= {"report.json", "report.md", "novelty.png"}
    assert json.loads((tmp_path / "report.json").read_text()) == report
    g = report["groups"]
    assert list(g) == ["original", "weight_average", "noise_0.001", "noise_0.003", "noise_0.01", "noise_0.03",
                       "noise_0.05", "noise_0.1", "noise_0.15", "generated"]
    assert report["num_generated_params"] == 64 * 16 + 16 + 16 * 10 + 10 and report["num_test"] == 360
    assert g["original"]["n"] == 6 and all(i < 1 for i in g["original"]["max_iou"])
    assert g["generated"]["max_iou"] == [1.0] * 6 and g["generated"]["nearest_distance"] == [0.0] * 6
    assert g["generated"]["accuracy"] == g["original"]["accuracy"]
    assert g["noise_0.15"]["mean"] < g["noise_0.001"]["mean"] and g["noise_0.001"]["n"] == 20
    text = "\n".join(report["notes"])
    assert "not novel" in text and "not more novel than noise-added originals at the same accuracy" in text
    md = (tmp_path / "report.md").read_text()
    assert "| generated | 6 |" in md and "not novel" in md


def test_networks_erring_as_a_checkpoint_are_counted_and_the_best_of_the_rest_named():
    from weightgen.evaluate.judging import _copy_notes
    orig = {"nearest_distance": [0.4, 0.5, 0.6]}
    gen = {"n": 4, "accuracy": [0.99, 0.98, 0.97, None], "max_iou": [1.0, 0.8, 0.7, None],
           "nearest_distance": [0.15, 0.3, 0.4, None]}
    notes = _copy_notes(gen, orig)
    assert "1 of 4 generated models err on exactly the same test samples as some training checkpoint (max IoU 1.0); " \
           "the best of the other 2: 0.9800" in notes
    gen = {**gen, "max_iou": [1.0, 1.0, 1.0, None]}
    assert any(n.endswith("(max IoU 1.0); there are no others") for n in _copy_notes(gen, orig))
    assert not any("max IoU 1.0" in n for n in _copy_notes({**gen, "max_iou": [0.9, 0.8, 0.7, None]}, orig))


def test_judge_streams_and_counts_nonfinite(tiny_zoo, digits):
    net, stacked, names = tiny_zoo
    noisy = noise_added(stacked, names, 0.02, 6, seed=1)
    noisy["1.weight"][2, 0, 0] = math.nan
    batches = [{k: v[:3] for k, v in noisy.items()}, {k: v[3:] for k, v in noisy.items()}]
    report = judge(net, digits, stacked, iter(batches), names, None, sigmas=(0.01, 0.1), n_noise=10)
    gen = report["groups"]["generated"]
    assert gen["n"] == 6 and gen["n_nonfinite"] == 1
    assert gen["accuracy"][2] is None and gen["max_iou"][2] is None and gen["nearest_distance"][2] is None
    assert all(0 < d < 1 for i, d in enumerate(gen["nearest_distance"]) if i != 2)
    assert any("1 of 6 generated models have non-finite" in n for n in report["notes"])
    json.dumps(report, allow_nan=False)


def test_heldout_runs_are_judged_as_generated_models_are(tmp_path_factory, digits):
    """A seeds zoo's held-out runs (new seeds, never fitted on) join the report as group
    'heldout', scored and measured against the training checkpoints as samples are, with a note
    saying what the novelty test makes of them; zoos whose held-out runs are not of the training
    distribution (trajectory: untrained starts) add nothing."""
    from weightgen.pipeline import heldout_stack, train_stack

    def zoo_of(mode, **z):
        cfg = parse_config({"task": {"name": "digits"}, "net": {"name": "mlp", "hidden": [16]}, "train": {"epochs": 2},
                            "zoo": {"mode": mode, "runs": 5, "heldout": 2, "checkpoints": 2, **z}})
        path = tmp_path_factory.mktemp(mode)
        build_zoo(cfg, path, show_progress=False)
        return Zoo.open(path)

    with zoo_of("seeds") as zoo:
        train, held = train_stack(zoo), heldout_stack(zoo)
        assert held is not None and held["1.weight"].shape[0] == 4 and train["1.weight"].shape[0] == 6
        assert not any(torch.equal(h, t) for h in held["1.weight"] for t in train["1.weight"])
        net, names = zoo.build_net(), zoo.parameter_names
        out = tmp_path_factory.mktemp("report")
        report = judge(net, digits, train, train, names, out, sigmas=(0.01, 0.1), n_noise=10, heldout_stacked=held)
    assert (out / "novelty.png").stat().st_size > 0 and "| heldout | 4 |" in (out / "report.md").read_text()
    h = report["groups"]["heldout"]
    assert h["n"] == 4 and h["accuracy"] == Evaluator(net, digits, "test")(held).accuracy.double().tolist()
    assert all(d > 0 for d in h["nearest_distance"]) and all(i < 1 for i in h["max_iou"])
    note = [n for n in report["notes"] if n.startswith("held-out runs")]
    assert len(note) == 1 and f"mean accuracy {h['mean']:.4f}" in note[0] and "noise" in note[0]
    with zoo_of("trajectory") as zoo:
        assert heldout_stack(zoo) is None


def test_each_runs_average_is_judged_and_read_for_a_zoo_of_several_runs(tmp_path_factory, digits):
    """With the run of each checkpoint, judge scores every run's own weight average (one model per run)
    and notes how the generated models compare; the pipeline gives the runs for seeds zoos only."""
    from weightgen.pipeline import evaluate_samples, train_stack

    cfg = parse_config({"task": {"name": "digits"}, "net": {"name": "mlp", "hidden": [16]}, "train": {"epochs": 2},
                        "zoo": {"mode": "seeds", "runs": 3, "checkpoints": 3, "every": 3}, "evaluate": {"n_noise": 5}})
    path = tmp_path_factory.mktemp("runs")
    build_zoo(cfg, path, show_progress=False)
    with Zoo.open(path) as zoo:
        train, names, members = train_stack(zoo), zoo.parameter_names, zoo.members("train")
        report = evaluate_samples(zoo, [train], names, None, cfg, "runs")
        runs = [m.run for m in members]
        ra = report["groups"]["run_average"]
        net = zoo.build_net()
        want = Evaluator(net, digits, "test")(run_averages(train, names, runs)).accuracy.double().tolist()
    assert list(report["groups"]).index("run_average") == 2 and ra["n"] == 3 and ra["accuracy"] == want
    note = [n for n in report["notes"] if "runs' own weight averages" in n]
    assert len(note) == 1 and f"mean {ra['mean']:.4f}" in note[0] and f"their best {ra['best']:.4f}" in note[0]
    one_run = judge(net, digits, train, train, names, None, sigmas=(0.01,), n_noise=5, runs=[0] * len(runs))
    assert "run_average" not in one_run["groups"]  # one run: its average is the weight average


def test_heldout_note_reads_the_novelty_test():
    base = {"original": _g(0.92, 0.9), "weight_average": _g(0.5, 0.2, 1), "generated": _g(0.90, 0.9),
            "noise_0.01": _g(0.92, 0.95), "noise_0.05": _g(0.88, 0.7), "noise_0.1": _g(0.7, 0.4)}
    text = [n for n in notes({**base, "heldout": _g(0.90, 0.8)}) if n.startswith("held-out runs")]
    assert len(text) == 1 and "held-out runs sit at LOWER max IoU" in text[0] and "0.825" in text[0]
    assert "mean max IoU 0.900 vs 0.800" in text[0]
    text = [n for n in notes({**base, "heldout": _g(0.90, 0.86)}) if n.startswith("held-out runs")]
    assert "held-out runs are not more novel" in text[0]
    assert not any(n.startswith("held-out runs") for n in notes(base))


def test_recalibrated_batchnorm_statistics_are_those_of_the_training_inputs(digits):
    from weightgen.evaluate.recalibrate import recalibrate_bn

    net = build_net("cnn", digits.input_shape, digits.num_classes, channels=[4, 6], batchnorm=True)
    states = _states("cnn", digits, 3, channels=[4, 6], batchnorm=True)
    stacked = stack_states(states)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = recalibrate_bn(net, digits.split("train")[0], stacked, batch_size=500)  # several batches: cumulative
    x = digits.split("train")[0]
    for b in range(3):
        for k, v in stacked.items():  # weights untouched
            if "running" not in k and "num_batches" not in k:
                assert torch.equal(out[k][b], v[b])
        conv = nn.Conv2d(1, 4, 3, padding=1)
        conv.load_state_dict({"weight": stacked["features.0.0.weight"][b], "bias": stacked["features.0.0.bias"][b]})
        with torch.no_grad():
            h = conv(x.reshape(len(x), *digits.input_shape))
        torch.testing.assert_close(out["features.0.1.running_mean"][b], h.mean((0, 2, 3)), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out["features.0.1.running_var"][b], h.var((0, 2, 3)), atol=0.02, rtol=0.02)  # per-batch variances averaged
    for k, v in net.state_dict().items():  # the scratch net is given back as it was
        assert torch.equal(v, before[k])
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_judge_recalibrates_made_networks_only(digits):
    net = build_net("cnn", digits.input_shape, digits.num_classes, channels=[4, 6], batchnorm=True)
    stacked = stack_states(_states("cnn", digits, 3, channels=[4, 6], batchnorm=True))
    names = [k for k, v in stacked.items() if v.is_floating_point()]
    args = (net, digits, stacked, stacked, names, None)
    plain = judge(*args, sigmas=(0.01,), n_noise=3, heldout_stacked=stacked)
    redone = judge(*args, sigmas=(0.01,), n_noise=3, heldout_stacked=stacked, recalibrate=True)
    assert redone["recalibrate_bn"] and not plain["recalibrate_bn"]
    for group in ("original", "heldout"):
        assert redone["groups"][group]["accuracy"] == plain["groups"][group]["accuracy"]
    assert redone["groups"]["generated"]["accuracy"] != plain["groups"]["generated"]["accuracy"]
    mlp = build_net("mlp", digits.input_shape, digits.num_classes, hidden=[8])
    mlp_states = stack_states(_states("mlp", digits, 2, hidden=[8]))
    assert not judge(mlp, digits, mlp_states, mlp_states, list(mlp_states), None, sigmas=(0.01,), n_noise=2,
                       recalibrate=True)["recalibrate_bn"]
