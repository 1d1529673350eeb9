"""The pipeline and its commands: `weightgen run` end to end, `train` -> `sample` -> `eval`,
samples on disk, and bad input (another architecture, non-finite weights) answered, not crashed."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import PDIFF_GEN, PDIFF_ZOO_CFG, build, parse, tiny_cfg, write_config
from weightgen.cli import app, builtin_config_path, resolve_config
from weightgen.config import load_config
from weightgen.generators import GeneratorError, load_generator
from weightgen.pipeline import SAMPLES_JSON, evaluate_samples, fit_generator, read_samples, write_samples
from weightgen.zoo import Zoo

runner = CliRunner()

SMALL_EVAL = {"n_noise": 4, "sigmas": [0.01, 0.1]}


def _squash(text: str) -> str:
    """Output without whitespace: rich wraps long lines at the terminal width."""
    return "".join(text.split())


@pytest.fixture(scope="module")
def mlp16_zoo(tmp_path_factory):
    """A digits MLP with 16 hidden units: same layer names as the seeds zoo (8 units), other shapes."""
    path = tmp_path_factory.mktemp("zoos") / "mlp16"
    build(tiny_cfg(net={"name": "mlp", "hidden": [16]}, zoo={"mode": "seeds", "runs": 1, "checkpoints": 1},
                   evaluate=SMALL_EVAL), path)
    return path


@pytest.fixture(scope="module")
def mlp_gen(seeds_zoo):
    """p-diff over all 610 parameters of the seeds zoo's MLPs (hidden 8), barely trained."""
    cfg = parse(tiny_cfg(tokenizer={"token_size": "flat"},
                         generator={**PDIFF_GEN, "ae_steps": 10, "diffusion_steps": 10}))
    zoo = Zoo.open(seeds_zoo)
    try:
        gen, _ = fit_generator(cfg, zoo, show_progress=False)
    finally:
        zoo.close()
    return gen


# -- bad input: another architecture ------------------------------------------------------------

def test_check_zoo_names_the_layer_and_both_shapes(mlp_gen, seeds_zoo, mlp16_zoo):
    zoo, other = Zoo.open(seeds_zoo), Zoo.open(mlp16_zoo)
    try:
        mlp_gen.check_zoo(zoo)  # its own zoo is fine
        with pytest.raises(GeneratorError) as err:
            mlp_gen.check_zoo(other)
        with pytest.raises(GeneratorError, match=r"'1\.weight'"):
            mlp_gen.training_tokens(other)  # fitting on it is refused the same way
    finally:
        zoo.close()
        other.close()
    msg = str(err.value)
    assert "'1.weight'" in msg and "(8, 64)" in msg and "(16, 64)" in msg, msg
    assert str(mlp16_zoo) in msg


def test_check_zoo_compares_the_whole_state_not_only_generated_layers(pdiff_saved, tmp_path):
    """check_zoo compares every entry of the state, not only the generated ones: a generator for
    a cnn [4, 8] generating head.* (shape (10, 8)) refuses a zoo of cnn [6, 8] nets, whose head
    has the same shape but whose features.0.0.weight (6, 1, 3, 3) its samples would not fill."""
    other = tmp_path / "cnn6"
    build(tiny_cfg(net={"name": "cnn", "channels": [6, 8], "batchnorm": True},
                   zoo={"mode": "seeds", "runs": 1, "checkpoints": 1}), other)
    gen = load_generator(pdiff_saved[0])
    zoo = Zoo.open(other)
    try:
        with pytest.raises(GeneratorError, match=r"features\.0\."):
            gen.check_zoo(zoo)
    finally:
        zoo.close()


def test_eval_cli_refuses_samples_of_another_architecture(mlp_gen, mlp16_zoo, tmp_path):
    samples = tmp_path / "samples"
    write_samples(mlp_gen, samples, 2, seed=0, batch_size=2, sampler="ddim", steps=5)
    res = runner.invoke(app, ["eval", str(samples), "--zoo", str(mlp16_zoo)])
    assert res.exit_code == 2, res.output
    text = _squash(res.output)
    assert "error" in res.output
    assert "'1.weight'" in text and "(16,64)" in text and "(8,64)" in text, res.output
    assert not (samples / "report.json").exists()


# -- bad input: non-finite weights ----------------------------------------------------------------

def test_nonfinite_samples_are_flagged_and_reported(pdiff_saved, pdiff_zoo, tmp_path):
    gen = load_generator(pdiff_saved[0])
    with torch.no_grad():
        last = [m for m in gen.ae.decoder.modules() if isinstance(m, torch.nn.Conv1d)][-1]
        last.bias.fill_(math.nan)
    out = tmp_path / "nan"
    meta = write_samples(gen, out, 3, seed=0, batch_size=2, sampler="ddim", steps=5)
    assert meta["nonfinite"] == [0, 1, 2]
    assert json.loads((out / SAMPLES_JSON).read_text())["nonfinite"] == [0, 1, 2]
    assert sorted(p.name for p in out.glob("sample_*")) == [f"sample_{i:04d}.safetensors" for i in range(3)]

    res = runner.invoke(app, ["sample", str(pdiff_saved[0]), "--out", str(tmp_path / "ok"), "--n", "1",
                              "--sampler", "ddim", "--steps", "3"])
    assert res.exit_code == 0 and "non-finite" not in res.output, res.output

    res = runner.invoke(app, ["eval", str(out), "--zoo", str(pdiff_zoo)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    g = report["groups"]["generated"]
    assert g["n"] == 3 and g["n_nonfinite"] == 3 and g["mean"] is None
    assert any("non-finite" in n for n in report["notes"])
    assert report["groups"]["original"]["n_nonfinite"] == 0
    assert (out / "report.md").is_file() and (out / "novelty.png").is_file()


def test_one_nonfinite_sample_among_finite_ones(pdiff_saved, pdiff_zoo, tmp_path, monkeypatch):
    gen = load_generator(pdiff_saved[0])
    inner = gen.sample_tokens

    def second_is_inf(n, *args, **kwargs):
        tokens = inner(n, *args, **kwargs)
        if n > 1:
            tokens[1, 0, 5] = math.inf
        return tokens

    monkeypatch.setattr(gen, "sample_tokens", second_is_inf)
    out = tmp_path / "mixed"
    meta = write_samples(gen, out, 4, seed=0, batch_size=4, sampler="ddim", steps=5)
    assert meta["nonfinite"] == [1]
    zoo = Zoo.open(pdiff_zoo)
    try:
        meta, batches = read_samples(out)
        report = evaluate_samples(zoo, batches, meta["generated_names"], None, zoo.config, title="mixed")
    finally:
        zoo.close()
    g = report["groups"]["generated"]
    assert g["n"] == 4 and g["n_nonfinite"] == 1
    assert g["accuracy"][1] is None and all(0 <= a <= 1 for i, a in enumerate(g["accuracy"]) if i != 1)
    assert 0 <= g["mean"] <= 1


# -- samples on disk ------------------------------------------------------------------------------

def test_write_and_read_samples(pdiff_saved, tmp_path):
    gen = load_generator(pdiff_saved[0])
    out = tmp_path / "s"
    meta = write_samples(gen, out, 5, seed=2, batch_size=2, sampler="ddim", steps=5)
    assert meta["n"] == 5 and meta["nonfinite"] == [] and meta["generated_names"] == gen.tokenizer.names
    assert meta["net_build"] == gen.net_build and meta["sampler"] == "ddim" and meta["seed"] == 2
    assert not list(out.glob(".tmp-*"))
    expected = [b for b in gen.sample(5, None, 2, 2, "ddim", 5)]
    expected = {k: torch.cat([b[k] for b in expected]) for k in expected[0]}
    meta2, batches = read_samples(out, batch_size=3)
    got = list(batches)
    assert meta2 == json.loads(json.dumps(meta))
    assert [b["head.weight"].shape[0] for b in got] == [3, 2]
    for k, v in expected.items():
        assert torch.equal(torch.cat([b[k] for b in got]), v), k
    (out / "sample_0003.safetensors").unlink()
    with pytest.raises(GeneratorError, match="sample_0003"):
        list(read_samples(out)[1])
    (out / SAMPLES_JSON).unlink()
    with pytest.raises(GeneratorError, match="samples.json"):
        read_samples(out)


def test_fitting_is_reproducible_from_the_config_seed(pdiff_zoo):
    """The same config and seed fit the same generator whatever the global RNG held before: its
    networks are initialized after fit_generator seeds it."""
    cfg = parse({**PDIFF_ZOO_CFG, "generator": {**PDIFF_GEN, "ae_steps": 5, "diffusion_steps": 5}})
    zoo = Zoo.open(pdiff_zoo)
    try:
        torch.manual_seed(1)
        a, _ = fit_generator(cfg, zoo, show_progress=False)
        torch.manual_seed(2)
        b, _ = fit_generator(cfg, zoo, show_progress=False)
    finally:
        zoo.close()
    assert torch.equal(next(a.sample(2, seed=0, sampler="ddim", steps=5))["head.weight"],
                       next(b.sample(2, seed=0, sampler="ddim", steps=5))["head.weight"])


def test_generator_seed_refits_with_other_draws_and_defaults_to_the_experiment_seed(pdiff_zoo):
    """``generator.seed`` changes the fit's draws on the same zoo (what a fit-to-fit spread needs);
    left unset it is the experiment's ``seed``, so configs written before it fit as they did."""
    gen = {**PDIFF_GEN, "ae_steps": 5, "diffusion_steps": 5}
    zoo = Zoo.open(pdiff_zoo)
    try:
        def head(generator_cfg):
            g, _ = fit_generator(parse({**PDIFF_ZOO_CFG, "generator": generator_cfg}), zoo, show_progress=False)
            return next(g.sample(2, seed=0, sampler="ddim", steps=5))["head.weight"]
        unset, same, other = head(gen), head({**gen, "seed": PDIFF_ZOO_CFG.get("seed", 0)}), head({**gen, "seed": 7})
    finally:
        zoo.close()
    assert torch.equal(unset, same)
    assert not torch.equal(unset, other)


# -- the commands ---------------------------------------------------------------------------------

RUN_CFG = {
    **tiny_cfg(
        net={"name": "cnn", "channels": [4, 8], "batchnorm": True},
        zoo={"mode": "tail", "runs": 1, "checkpoints": 12, "every": 1, "tail": ["head.*"]},
        tokenizer={"include": ["head.*"], "token_size": "flat"},
        generator={**PDIFF_GEN, "ae_steps": 20, "diffusion_steps": 20},
        sample={"n": 5, "sampler": "ddim", "steps": 10, "batch_size": 2},
        evaluate=SMALL_EVAL,
    ),
    "name": "tinyrun",
}


def test_run_end_to_end(tmp_path):
    cfg_file = write_config(tmp_path / "run.yaml", RUN_CFG)
    zoo, out = tmp_path / "zoo", tmp_path / "run"
    res = runner.invoke(app, ["run", str(cfg_file), "--zoo", str(zoo), "--out", str(out)])
    assert res.exit_code == 0, res.output
    for f in ("report.json", "report.md", "novelty.png", "config.yaml"):
        assert (out / f).is_file(), f
    assert load_config(out / "config.yaml") == parse(RUN_CFG)
    report = json.loads((out / "report.json").read_text())
    assert set(report["groups"]) == {"original", "weight_average", "noise_0.01", "noise_0.1", "generated"}
    assert report["groups"]["original"]["n"] == 12
    assert report["groups"]["weight_average"]["n"] == 1
    assert report["groups"]["noise_0.1"]["n"] == 4
    gen_group = report["groups"]["generated"]
    assert gen_group["n"] == 5 and gen_group["n_nonfinite"] == 0 and 0 <= gen_group["mean"] <= 1
    t = report["timing"]
    assert t["num_samples"] == 5 and t["sample_seconds"] > 0 and t["sgd_seconds_per_member"] > 0
    assert t["models_per_sgd_member"] == pytest.approx(5 * t["sgd_seconds_per_member"] / t["sample_seconds"])
    assert report["fit"]["num_train"] == 12 and math.isfinite(report["fit"]["ae_recon_mse"])
    assert "generated" in (out / "report.md").read_text()
    gen = load_generator(out / "generator")
    assert gen.tokenizer.names == ["head.weight", "head.bias"]
    assert len(Zoo.open(zoo).members()) == 12
    assert _squash("report:") in _squash(res.output)


def test_run_samples_a_fitted_generator_at_the_configs_temperature(tmp_path):
    from weightgen.pipeline import run_experiment

    cfg = parse(RUN_CFG)
    first = run_experiment(cfg, tmp_path / "zoo", tmp_path / "t1", show_progress=False)
    fitted = (load_generator(tmp_path / "t1" / "generator"), first["fit"])
    cold_cfg = cfg.model_copy(deep=True)
    cold_cfg.generator.diffusion.temperature = 0.0
    cold = run_experiment(cold_cfg, tmp_path / "zoo", tmp_path / "t0", show_progress=False, fitted=fitted)
    assert cold["fit"] == first["fit"]  # not fitted again
    assert load_generator(tmp_path / "t0" / "generator").spec.diffusion.temperature == 0.0
    assert load_config(tmp_path / "t0" / "config.yaml") == cold_cfg
    warm, cold_acc = first["groups"]["generated"], cold["groups"]["generated"]
    assert warm["n"] == cold_acc["n"] == 5
    # At temperature 0 DDIM has no noise left: one network, five times (to float rounding: batches of 2, 2, 1).
    spread = lambda v: max(v) - min(v)  # noqa: E731
    assert spread(warm["nearest_distance"]) > 0.05 and spread(cold_acc["nearest_distance"]) < 1e-3


def test_train_sample_eval(pdiff_zoo, tmp_path):
    cfg_file = write_config(tmp_path / "cfg.yaml", PDIFF_ZOO_CFG)
    gen_dir, samples = tmp_path / "gen", tmp_path / "samples"
    res = runner.invoke(app, ["train", str(cfg_file), "--zoo", str(pdiff_zoo), "--out", str(gen_dir)])
    assert res.exit_code == 0, res.output
    assert (gen_dir / "generator.json").is_file()

    res = runner.invoke(app, ["sample", str(gen_dir), "--n", "5", "--out", str(samples), "--batch-size", "2",
                              "--sampler", "ddim", "--steps", "10"])
    assert res.exit_code == 0, res.output
    assert _squash(f"5 networks written to {samples}") in _squash(res.output)
    files = sorted(p.name for p in samples.iterdir())
    assert files == sorted([SAMPLES_JSON] + [f"sample_{i:04d}.safetensors" for i in range(5)])
    meta = json.loads((samples / SAMPLES_JSON).read_text())
    assert meta["n"] == 5 and meta["nonfinite"] == [] and meta["method"] == "pdiff"
    zoo = Zoo.open(pdiff_zoo)
    net = zoo.build_net()
    zoo.close()
    heads = []
    for i in range(5):
        state = load_file(str(samples / f"sample_{i:04d}.safetensors"))
        net.load_state_dict(state, strict=True)
        heads.append(state["head.weight"])
    assert len({tuple(h.flatten().tolist()) for h in heads}) == 5  # five different networks

    res = runner.invoke(app, ["eval", str(samples), "--zoo", str(pdiff_zoo)])
    assert res.exit_code == 0, res.output
    report = json.loads((samples / "report.json").read_text())
    assert report["groups"]["generated"]["n"] == 5
    assert (samples / "report.md").is_file() and (samples / "novelty.png").is_file()


def test_sample_stream_writes_the_same_networks_as_sample_to_file(pdiff_saved, tmp_path):
    out = tmp_path / "streamed"
    res = runner.invoke(app, ["sample", str(pdiff_saved[0]), "--n", "3", "--out", str(out), "--seed", "4",
                              "--sampler", "ddim", "--steps", "3", "--stream"])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / SAMPLES_JSON).read_text())
    assert meta["stream"] is True and meta["n"] == 3
    gen = load_generator(pdiff_saved[0])
    for i in range(3):
        gen.sample_to_file(tmp_path / "one.safetensors", seed=4 + i, sampler="ddim", steps=3)  # sample i: seed + i
        a, b = load_file(str(out / f"sample_{i:04d}.safetensors")), load_file(str(tmp_path / "one.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _, batches = read_samples(out)
    assert sum(len(b["head.weight"]) for b in batches) == 3


def test_sample_with_a_bad_sampler_exits_2(pdiff_saved, tmp_path):
    res = runner.invoke(app, ["sample", str(pdiff_saved[0]), "--out", str(tmp_path / "s"), "--sampler", "euler"])
    assert res.exit_code == 2, res.output
    assert "ddpm or ddim" in res.output and "euler" in res.output
    assert not (tmp_path / "s").exists()


def test_sample_from_a_non_generator_exits_2(tmp_path):
    res = runner.invoke(app, ["sample", str(tmp_path), "--out", str(tmp_path / "s")])
    assert res.exit_code == 2, res.output
    assert "generator.json" in _squash(res.output)


@pytest.mark.parametrize("section,key,suggestion", [
    ("generator", "ae_step", "ae_steps"),
    ("sample", "num", None),
    ("evaluate", "sigma", "sigmas"),
])
def test_run_with_an_unknown_key_exits_2(tmp_path, section, key, suggestion):
    data = json.loads(json.dumps(RUN_CFG))
    data[section][key] = 1
    cfg_file = write_config(tmp_path / "bad.yaml", data)
    res = runner.invoke(app, ["run", str(cfg_file), "--zoo", str(tmp_path / "zoo"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    text = _squash(res.output)
    assert f"'{key}'" in text and section in text, res.output
    if suggestion:
        assert f"'{suggestion}'" in text
    assert not (tmp_path / "zoo").exists()  # refused before any work


def test_run_without_argument_resolves_the_builtin_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # works from any directory
    cfg, source = resolve_config(None)
    assert cfg.name == "demo"
    assert source == str(builtin_config_path("demo"))
    assert cfg == load_config(builtin_config_path("demo"))
    assert cfg.generator.method == "pdiff" and cfg.tokenizer.token_size == "flat"
    assert cfg.zoo.mode == "tail" and cfg.zoo.checkpoints == 200
    assert yaml.safe_load(builtin_config_path("demo").read_text())["name"] == "demo"


def test_builtin_name_wins_over_a_directory_of_that_name(tmp_path, monkeypatch):
    """A folder named like a built-in config (``demo``) in the working directory does not hide
    the built-in: only a file is taken as a given config."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    cfg, source = resolve_config(None)
    assert cfg.name == "demo"


@pytest.mark.parametrize("method,steps", [("pdiff", {"ae_steps": 2, "diffusion_steps": 2}), ("rpg", {"steps": 2}),
                                          ("gpt", {"steps": 2})])
def test_generator_fits_use_the_configured_lr_schedule(method, steps, seeds_zoo, trajectory_zoo_dir, monkeypatch):
    import importlib

    module = importlib.import_module(f"weightgen.generators.{method}")
    real, schedules = module.train_steps, []

    def recording(*args, **kwargs):
        schedules.append(kwargs.get("lr_schedule"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "train_steps", recording)
    zoo = Zoo.open(trajectory_zoo_dir if method == "gpt" else seeds_zoo)
    tokens = {"tokenizer": {"include": ["*"], "token_size": "flat"}} if method == "pdiff" else {}
    cfg = parse(tiny_cfg(generator={"method": method, "lr_schedule": "cosine", **steps}, **tokens))
    fit_generator(cfg, zoo, show_progress=False)
    assert schedules and set(schedules) == {"cosine"}  # p-diff: both of its loops
    assert len(schedules) == (2 if method == "pdiff" else 1)
