"""RPG conditioned on a task code: the code reaches every token or only the last N
(as released), fitting on a ``tasks`` zoo, sampling for a code no checkpoint had (batched,
streamed, after save/load), and every bad code refused with a message."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import TASKS_ZOO_CFG, parse
from weightgen.config import RPGSpec
from weightgen.generators import GeneratorError, load_generator
from weightgen.generators.rpg import RPG
from weightgen.pipeline import fit_generator
from weightgen.tasks import code_bits
from weightgen.tokens import Tokenizer
from weightgen.zoo import Zoo

TINY = {"method": "rpg", "d_model": 16, "layers": 1, "unet_channels": [4, 8], "kernel_size": 3, "steps": 3,
        "batch_size": 2, "tokens_per_step": 5, "sample_chunk": 1000,
        "diffusion": {"timesteps": 20}, "condition": "task_code"}
A, B = "0100100001", "1010000000"


def _standalone(**overrides) -> RPG:
    g = torch.Generator().manual_seed(0)
    states = [{"a.weight": torch.randn(5, 7, generator=g), "b.weight": torch.randn(3, 5, generator=g)}
              for _ in range(3)]
    tok = Tokenizer.fit(states, token_size=8)  # 5 + 2 = 7 tokens
    gen = RPG(RPGSpec.model_validate({**TINY, **overrides}), tok, states[0], {"name": "none"}, runs=[0, 1],
              code_length=10)
    with torch.no_grad():  # random weights everywhere, so no dependence hides behind a zero init
        for p in gen.net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return gen


@pytest.mark.parametrize("backbone", ["mamba", "lstm", "transformer", "none"])
@pytest.mark.parametrize("reach", ["all", 2])
def test_the_code_reaches_the_tokens_it_should(backbone, reach):
    gen = _standalone(backbone=backbone, condition_tokens=reach)
    states = torch.zeros(2, dtype=torch.long)
    conditions = torch.stack([code_bits(A), code_bits(B)])
    with torch.no_grad():
        proto = gen.net.prototypes(states, conditions=conditions)
    moved = (proto[0] - proto[1]).abs().amax(-1) > 1e-6  # per token: does the code change it?
    t = gen.tokenizer.num_tokens
    expected = torch.ones(t, dtype=torch.bool) if reach == "all" else torch.arange(t) >= t - reach
    assert moved.tolist() == expected.tolist()


def test_reach_beyond_the_sequence_is_every_token():
    gen = _standalone(condition_tokens=50)
    assert gen.net.reach.sum() == gen.tokenizer.num_tokens


@pytest.fixture(scope="module")
def fitted(tasks_zoo):
    cfg = parse({**TASKS_ZOO_CFG, "generator": TINY, "tokenizer": {"token_size": 16}})
    with Zoo.open(tasks_zoo) as zoo:
        gen, _ = fit_generator(cfg, zoo, show_progress=False)
        heldout = sorted({m.condition["code"] for m in zoo.members("heldout")})
        train = sorted({m.condition["code"] for m in zoo.members("train")})
    return gen, train, heldout


def test_fit_reads_every_members_code(fitted):
    gen, train, heldout = fitted
    assert gen.code_length == 10 and not set(train) & set(heldout)
    assert isinstance(gen.net.condition_in, torch.nn.Module)


def test_samples_depend_on_the_code_and_repeat_for_the_same_seed(fitted):
    gen, _, heldout = fitted
    a1 = next(gen.sample(2, heldout[0], seed=3))
    a2 = next(gen.sample(2, {"code": heldout[0]}, seed=3))
    b = next(gen.sample(2, heldout[1], seed=3))
    assert all(torch.equal(a1[k], a2[k]) for k in a1)
    assert any(not torch.allclose(a1[k], b[k]) for k in gen.tokenizer.names)
    assert all(torch.isfinite(v).all() for v in a1.values() if v.is_floating_point())


def test_streamed_and_reloaded_samples_match(fitted, tmp_path):
    gen, _, heldout = fitted
    batch = next(gen.sample(1, heldout[0], seed=5))
    gen.sample_to_file(tmp_path / "net.safetensors", heldout[0], seed=5)
    streamed = load_file(str(tmp_path / "net.safetensors"))
    assert all(torch.equal(batch[k][0], streamed[k]) for k in streamed)
    gen.save(tmp_path / "gen")
    again = load_generator(tmp_path / "gen")
    assert again.code_length == 10
    reloaded = next(again.sample(1, heldout[0], seed=5))
    assert all(torch.equal(batch[k], reloaded[k]) for k in batch)


def test_weights_saved_under_the_former_name_code_in_load(fitted, tmp_path):
    """The condition embedding is ``condition_in``; weights that name it ``code_in`` load into it."""
    from safetensors.torch import save_file

    gen, _, heldout = fitted
    d = gen.save(tmp_path / "gen")
    weights = load_file(str(d / "weights.safetensors"))
    assert any(".condition_in." in k for k in weights)
    save_file({k.replace(".condition_in.", ".code_in."): v for k, v in weights.items()}, str(d / "weights.safetensors"))
    again = load_generator(d)
    a, b = next(gen.sample(1, heldout[0], seed=2)), next(again.sample(1, heldout[0], seed=2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_autoregressive_recurrent_input_takes_the_code(tasks_zoo):
    cfg = parse({**TASKS_ZOO_CFG, "generator": {**TINY, "recurrent_input": "tokens", "condition_tokens": 1},
                 "tokenizer": {"token_size": 16}})
    with Zoo.open(tasks_zoo) as zoo:
        gen, _ = fit_generator(cfg, zoo, show_progress=False)
    one = next(gen.sample(1, A, seed=0))
    assert all(torch.isfinite(v).all() for v in one.values())


@pytest.mark.parametrize("condition,match", [
    (None, "conditioned on task codes"),
    ("01001", "must be 10 characters"),
    ("0000000000", "all 0s"),
    ("1111111111", "all 1s"),
    ("01001x0001", "0 and 1"),
])
def test_bad_codes_are_refused(fitted, condition, match):
    gen, _, _ = fitted
    with pytest.raises(GeneratorError, match=match):
        next(gen.sample(1, condition))


def test_a_task_code_generator_needs_a_tasks_zoo(seeds_zoo):
    cfg = parse({**TASKS_ZOO_CFG, "generator": TINY})
    with Zoo.open(seeds_zoo) as zoo, pytest.raises(GeneratorError, match="zoo.mode: tasks"):
        fit_generator(cfg, zoo, show_progress=False)


# -- the CLI: weightgen sample GENERATOR --classes 1,4,9 | --task-code ... ---------------------------
@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "generator"
    fitted[0].save(path)
    return path


def test_cli_classes_and_task_code_write_the_same_networks(fitted, saved, tmp_path):
    import json

    from typer.testing import CliRunner

    from weightgen.cli import app

    runner = CliRunner()
    by_classes = runner.invoke(app, ["sample", str(saved), "-o", str(tmp_path / "c"), "-n", "2", "--classes", "1,4,9"])
    by_code = runner.invoke(app, ["sample", str(saved), "-o", str(tmp_path / "k"), "-n", "2", "--task-code", A])
    assert by_classes.exit_code == 0 and by_code.exit_code == 0, by_classes.output + by_code.output
    assert json.loads((tmp_path / "c" / "samples.json").read_text())["condition"] == A
    expected = next(fitted[0].sample(2, A, seed=0))
    for i in range(2):
        for d in ("c", "k"):
            got = load_file(str(tmp_path / d / f"sample_{i:04d}.safetensors"))
            assert all(torch.equal(got[k], expected[k][i]) for k in got)


@pytest.mark.parametrize("args,match", [
    ([], "conditioned on task codes"),
    (["--classes", "1,4,12"], "class 12 is out of range 0..9"),
    (["--classes", "0,1,2,3,4,5,6,7,8,9"], "all 1s"),
    (["--classes", "a,b"], "class numbers"),
    (["--task-code", "0101"], "10 characters"),
    (["--classes", "1", "--task-code", A], "give one condition, not --classes and --task-code"),
])
def test_cli_bad_task_is_named(saved, tmp_path, args, match):
    from typer.testing import CliRunner

    from weightgen.cli import app

    res = CliRunner().invoke(app, ["sample", str(saved), "-o", str(tmp_path / "x"), "-n", "1", *args])
    assert res.exit_code != 0 and match in " ".join(res.output.split()), res.output
    assert not (tmp_path / "x" / "sample_0000.safetensors").exists()


# -- judging: generated vs trained-from-scratch vs a copy of the nearest seen task -----------------
def test_evaluate_codes_scores_each_code_on_its_own_task(fitted, tasks_zoo):
    from weightgen.evaluate import evaluate_states, stack_states
    from weightgen.evaluate.per_code import evaluate_codes, hamming, summarize_codes
    from weightgen.tasks import binary_subset, get_task

    gen, train, heldout = fitted
    with Zoo.open(tasks_zoo) as zoo:
        rows = evaluate_codes(gen, zoo, heldout + train[:1], n=3, steps=5)
        stored = {}
        for m in zoo.members(None):
            stored.setdefault(m.condition["code"], []).append(m.metrics["test_accuracy"])
    assert [r["seen"] for r in rows] == [False, False, True]
    for r in rows:
        # The zoo's own record of each checkpoint's test accuracy on the code's binary task.
        assert r["trained"]["mean"] == pytest.approx(sum(stored[r["code"]]) / len(stored[r["code"]]), abs=1e-6)
        assert r["generated"]["n"] == 3 and 0.0 <= r["generated"]["mean"] <= 1.0
        near = r["nearest_seen"]
        assert near["code"] in train and near["code"] != r["code"]
        assert near["bits_differ"] == min(hamming(c, r["code"]) for c in train if c != r["code"])
        # The copy is scored on *this* code's task, not on the one it was trained for.
        with Zoo.open(tasks_zoo) as zoo:
            copies = stack_states([zoo.load(m) for m in zoo.members("train") if m.condition["code"] == near["code"]])
            task = binary_subset(get_task("digits"), r["code"])
            assert near["mean"] == pytest.approx(evaluate_states(zoo.build_net(), copies, task).accuracy.mean().item())
    s = summarize_codes(rows)
    assert s["codes"] == 3 and s["ratio"] == pytest.approx(s["generated_mean"] / s["trained_mean"])
    assert s["worst_code"] in {r["code"] for r in rows}


def test_code_regression_fits_the_training_codes_and_is_scored_beside_the_generator(fitted, tasks_zoo):
    from weightgen.evaluate import evaluate_states, stack_states
    from weightgen.evaluate.regression import CodeRegression
    from weightgen.evaluate.per_code import evaluate_codes, summarize_codes
    from weightgen.tasks import binary_subset, get_task

    gen, train, heldout = fitted
    with Zoo.open(tasks_zoo) as zoo:
        untrained = CodeRegression.fit(zoo, gen.tokenizer, gen.reference, width=32, steps=0)
        reg = CodeRegression.fit(zoo, gen.tokenizer, gen.reference, width=32, steps=400, lr=3e-3)
        member = zoo.members("train")[0]
        stored = zoo.load(member)
        target = gen.tokenizer.tokenize(stored)

        def error(model) -> float:
            got = gen.tokenizer.tokenize(model.predict(member.condition["code"]))
            return (((got - target) ** 2) * gen.tokenizer.mask).sum().item() / gen.tokenizer.mask.sum().item()

        # Fitted by MSE on the training codes: a training code's network comes back (its two
        # checkpoints differ a little, so not exactly), far closer than before the fit.
        assert error(reg) < 0.05 * error(untrained), (error(reg), error(untrained))
        predicted = reg.predict(heldout[0])
        assert {k: v.shape for k, v in predicted.items()} == {k: v.shape for k, v in stored.items()}
        rows = evaluate_codes(gen, zoo, heldout, n=2, steps=3, regression=reg)
        net = zoo.build_net()
    for r in rows:
        task = binary_subset(get_task("digits"), r["code"])
        want = evaluate_states(net, stack_states([reg.predict(r["code"])]), task).accuracy.item()
        assert r["regression"]["n"] == 1 and r["regression"]["mean"] == pytest.approx(want)
    s = summarize_codes(rows)
    assert s["regression_mean"] == pytest.approx(sum(r["regression"]["mean"] for r in rows) / len(rows))
    with pytest.raises(Exception, match="code"):
        reg.predict("01")  # a code of the wrong length is refused, not padded


# -- weightgen run on a tasks zoo ---------------------------------------------------------------
def test_run_on_a_tasks_zoo_judges_every_code(tasks_zoo, tmp_path):
    import json
    import shutil

    from typer.testing import CliRunner

    from conftest import write_config
    from weightgen.cli import app

    zoo = tmp_path / "zoo"
    shutil.copytree(tasks_zoo, zoo)
    cfg = write_config(tmp_path / "c.yaml", {**TASKS_ZOO_CFG, "generator": TINY, "tokenizer": {"token_size": 16},
                                             "sample": {"n": 2, "sampler": "ddim", "steps": 3}})
    res = CliRunner().invoke(app, ["run", str(cfg), "--zoo", str(zoo), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["kind"] == "tasks"
    assert [r["seen"] for r in report["rows"]["heldout"]] == [False, False]
    assert len(report["rows"]["seen"]) == 2 and all(r["seen"] for r in report["rows"]["seen"])
    assert "heldout codes (2)" in res.output and (tmp_path / "run" / "report.md").is_file()


def test_run_refuses_an_unconditional_generator_on_a_tasks_zoo(tasks_zoo, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from conftest import write_config
    from weightgen.cli import app

    zoo = tmp_path / "zoo"
    shutil.copytree(tasks_zoo, zoo)
    cfg = write_config(tmp_path / "c.yaml", {**TASKS_ZOO_CFG, "generator": {k: v for k, v in TINY.items()
                                                                           if k != "condition"}})
    res = CliRunner().invoke(app, ["run", str(cfg), "--zoo", str(zoo), "--out", str(tmp_path / "run")])
    assert res.exit_code != 0 and "condition: task_code" in " ".join(res.output.split()), res.output


# -- condition: metric (G.pt's prompt without a start checkpoint) --------------------------------
@pytest.fixture(scope="module")
def metric_gen(trajectory_zoo_dir):
    from conftest import TRAJECTORY_ZOO_CFG

    cfg = parse({**TRAJECTORY_ZOO_CFG, "tokenizer": {"token_size": 16},
                 "generator": {**TINY, "condition": "metric", "metric": "test_error"}})
    with Zoo.open(trajectory_zoo_dir) as zoo:
        gen, _ = fit_generator(cfg, zoo, show_progress=False)
        errors = [1 - m.metrics["test_accuracy"] for m in zoo.members("train")]
    return gen, errors


def test_metric_condition_records_the_range_and_steers_samples(metric_gen, tmp_path, caplog):
    gen, errors = metric_gen
    assert gen.metric_range == pytest.approx([min(errors), max(errors)])
    lo, hi = gen.metric_range
    a = next(gen.sample(2, lo, seed=1))
    b = next(gen.sample(2, {"metric": hi}, seed=1))
    assert any(not torch.allclose(a[k], b[k]) for k in gen.tokenizer.names)
    assert all(torch.equal(a[k], next(gen.sample(2, lo, seed=1))[k]) for k in a)
    gen.save(tmp_path / "g")
    again = load_generator(tmp_path / "g")
    assert again.metric_range == gen.metric_range
    assert all(torch.equal(a[k], next(again.sample(2, lo, seed=1))[k]) for k in a)
    with caplog.at_level("WARNING"):
        next(gen.sample(1, hi + 1.0))
    assert "outside what the zoo covers" in caplog.text


@pytest.mark.parametrize("condition", [None, "low", {"code": A}])
def test_metric_condition_needs_a_number(metric_gen, condition):
    with pytest.raises(GeneratorError, match="conditioned on test_error"):
        next(metric_gen[0].sample(1, condition))


def test_cli_metric_writes_the_networks_asked_for(metric_gen, tmp_path):
    from typer.testing import CliRunner

    from weightgen.cli import app

    gen, _ = metric_gen
    gen.save(tmp_path / "g")
    lo = gen.metric_range[0]
    res = CliRunner().invoke(app, ["sample", str(tmp_path / "g"), "-o", str(tmp_path / "s"), "-n", "1",
                                   "--metric", str(lo)])
    assert res.exit_code == 0, res.output
    expected = next(gen.sample(1, float(str(lo)), seed=0))
    got = load_file(str(tmp_path / "s" / "sample_0000.safetensors"))
    assert all(torch.equal(got[k], expected[k][0]) for k in got)


# -- low-temperature sampling (ours): diffusion.temperature scales the starting noise ---------------
@pytest.mark.parametrize("permutation_state", [False, True])
def test_temperature_zero_takes_the_noise_out(permutation_state):
    gen = _standalone(permutation_state=permutation_state)
    draw = lambda seed, code=A: next(gen.sample(1, code, seed=seed, sampler="ddim", steps=5))  # noqa: E731
    warm_a, warm_b = draw(0), draw(1)
    gen.spec.diffusion.temperature = 0.0
    cold_a, cold_b, cold_other = draw(0), draw(1), draw(0, B)
    names = gen.tokenizer.names
    assert any(not torch.allclose(warm_a[k], warm_b[k]) for k in names)
    assert any(not torch.allclose(cold_a[k], cold_other[k]) for k in names)  # the code still steers
    # No noise: one network per code, unless a run's permutation state (drawn by the seed) varies it.
    assert all(torch.equal(cold_a[k], cold_b[k]) for k in names) != permutation_state


def test_cli_temperature_is_applied_and_recorded(fitted, tmp_path):
    import json

    from typer.testing import CliRunner

    from weightgen.cli import app

    gen = fitted[0]
    assert gen.spec.diffusion.temperature == 1.0
    gen.spec.diffusion.temperature = 0.25
    try:
        expected = next(gen.sample(1, A, seed=1, sampler="ddim", steps=5))
    finally:
        gen.spec.diffusion.temperature = 1.0
    gen.save(tmp_path / "g")
    res = CliRunner().invoke(app, ["sample", str(tmp_path / "g"), "-o", str(tmp_path / "s"), "-n", "1", "--seed", "1",
                                   "--task-code", A, "--sampler", "ddim", "--steps", "5", "--temperature", "0.25"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["temperature"] == 0.25
    got = load_file(str(tmp_path / "s" / "sample_0000.safetensors"))
    assert all(torch.equal(got[k], expected[k][0]) for k in gen.tokenizer.names)
    res = CliRunner().invoke(app, ["sample", str(tmp_path / "g"), "-o", str(tmp_path / "x"), "-n", "1",
                                   "--task-code", A, "--temperature", "-1"])
    assert res.exit_code != 0 and not (tmp_path / "x").exists()
