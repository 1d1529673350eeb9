"""LoRA adapters for keyed cipher tasks: the family, an adapter zoo trained through peft, RPG
conditioned on the key, adapters written in peft's format and loaded by peft alone (no weightgen
import), the frame of LoRA's factors, and every bad input refused in one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import parse
from weightgen.adapters.cipher import CipherKeyError, encipher, parse_key
from weightgen.adapters.peft_io import (AdapterError, canonicalize, check_adapter, load_adapter, merged, modules_of,
                                        read_adapter, score_adapters, write_generated, write_peft)
from weightgen.adapters.report import adapters_report
from weightgen.adapters.zoo import load_base, peft_model, zoo_task
from weightgen.cli import app
from weightgen.config import ConfigError, parse_config
from weightgen.nets import build_net
from weightgen.pipeline import fit_generator
from weightgen.zoo import Zoo, build_zoo

pytest.importorskip("peft")

TINY = {"name": "tiny-adapters", "seed": 0, "task": {"name": "cipher", "length": 6, "n_train": 64, "n_test": 32},
        "net": {"name": "char-lm", "d_model": 16, "layers": 1, "heads": 2},
        "train": {"optimizer": "adam", "lr": 0.05, "batch_size": 32, "epochs": 6},
        "zoo": {"mode": "adapters", "runs": 1, "checkpoints": 2, "every": 2, "codes": 4, "heldout": 2, "init": "shared",
                "lora": {"r": 2, "alpha": 4, "targets": ["up_proj", "down_proj"], "base_steps": 60}},
        "tokenizer": {"token_size": 16},
        "generator": {"method": "rpg", "d_model": 16, "layers": 1, "unet_channels": [4, 8], "kernel_size": 3,
                      "steps": 10, "batch_size": 2, "tokens_per_step": 5, "diffusion": {"timesteps": 20},
                      "condition": "task_code", "permutation_state": False}}
KEY = "1010000000001"


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("zoos") / "adapters"
    build_zoo(parse(TINY), path, show_progress=False)
    return path


@pytest.fixture(scope="module")
def fitted(zoo_dir, tmp_path_factory):
    with Zoo.open(zoo_dir) as zoo:
        gen, _ = fit_generator(parse(TINY), zoo, show_progress=False)
    out = tmp_path_factory.mktemp("gen") / "generator"
    gen.save(out)
    return gen, out


def test_the_key_swaps_letter_pairs():
    assert encipher("abcxyz", "1111111111110") == "nopklz"  # ROT13 but for m/z
    assert encipher("abno", "1000000000000") == "nbao"
    task = zoo_task(parse(TINY), KEY)
    assert task.condition == {"code": KEY} and task.y_test.shape == task.x_test.shape
    identity = zoo_task(parse(TINY))
    assert torch.equal(identity.x_test, task.x_test)  # every key is judged on the same strings


@pytest.mark.parametrize("key", ["0101", "0" * 13, "1" * 13, "01010101010x1"])
def test_a_key_outside_the_family_names_the_allowed_form(key):
    with pytest.raises(CipherKeyError, match="13 characters of 0 and 1"):
        parse_key(key)


def test_lora_settings_belong_to_the_adapters_mode():
    with pytest.raises(ConfigError, match="'lora' applies to mode 'adapters' only"):
        parse({**TINY, "zoo": {"mode": "seeds", "lora": {"r": 2}}})


def test_the_zoo_stores_only_adapter_tensors(zoo_dir):
    with Zoo.open(zoo_dir) as zoo:
        members = zoo.members(None)
        assert len(members) == 12 and {m.split for m in members} == {"train", "heldout"}
        assert all(len(m.condition["code"]) == 13 for m in members)
        state = zoo.load(members[-1])
        assert state and all(".lora_A." in k or ".lora_B." in k for k in state)
        assert set(state) == set(zoo.parameter_names)
        base = load_base(zoo)
        key = members[-1].condition["code"]
        task = zoo_task(zoo.config, key)
        config = zoo.meta("net_build")["adapter"]["config"]
        with_adapter, without = score_adapters(base, task, [state, None], config)
        assert with_adapter > without  # the adapter learned its key
        assert abs(float(with_adapter) - members[-1].metrics["test_accuracy"]) < 1e-6


def test_canonical_factors_are_the_same_adapter_in_one_frame(zoo_dir):
    with Zoo.open(zoo_dir) as zoo:
        state = zoo.load(zoo.members("train")[0])
    g = torch.Generator().manual_seed(0)
    turned = {}
    for name, (a, b) in modules_of(state).items():  # A -> R A, B -> B R^-1: the same B A
        r = torch.randn(a.shape[0], a.shape[0], generator=g, dtype=torch.float64) + 3 * torch.eye(a.shape[0])
        turned[f"base_model.model.{name}.lora_A.weight"] = (r @ a.double()).float()
        turned[f"base_model.model.{name}.lora_B.weight"] = (b.double() @ torch.linalg.inv(r)).float()
    one, two = canonicalize(state), canonicalize(turned)
    for name, (a, b) in modules_of(state).items():
        a1, b1 = modules_of(one)[name]
        assert torch.allclose(b1 @ a1, b @ a, atol=1e-5)
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-4), k
    assert max((state[k] - turned[k]).abs().max() for k in state) > 1e-2  # the raw factors do differ


def test_rpg_generates_adapters_and_the_report_reads_them(zoo_dir, fitted):
    gen, _ = fitted
    with Zoo.open(zoo_dir) as zoo:
        report = adapters_report(gen, zoo, 2, 0, "ddim", 4, seen_keys=1, title="tiny")
    held = report["summary"]["heldout"]
    assert held["keys"] == 2 and held["trained_mean"] is not None and held["nearest_seen_mean"] is not None
    row = report["rows"]["heldout"][0]
    assert row["generated"]["n"] == 2 and row["base"]["n"] == 1 and not row["seen"]


def test_sampled_adapter_loads_with_peft_alone(zoo_dir, fitted, tmp_path):
    gen, saved = fitted
    out = tmp_path / "adapter"
    res = CliRunner().invoke(app, ["sample", str(saved), "--task-code", KEY, "--peft-out", str(out), "-n", "1",
                                   "--sampler", "ddim", "--steps", "4"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config, state = read_adapter(out)
    assert Path(config["base_model_name_or_path"]) == (zoo_dir / "base").resolve()
    with Zoo.open(zoo_dir) as zoo:
        base = load_base(zoo)
        task = zoo_task(zoo.config, KEY)
    x = task.x_test[:4]
    want = merged({k: v for k, v in base.state_dict().items()}, state, config)
    expect = torch.func.functional_call(base, want, (x,)).logits
    script = ("import sys, json, torch\n"
              "from transformers import AutoModelForCausalLM\nfrom peft import PeftModel\n"
              f"base = AutoModelForCausalLM.from_pretrained({str(zoo_dir / 'base')!r})\n"
              f"model = PeftModel.from_pretrained(base, {str(out)!r}).eval()\n"
              f"x = torch.tensor({x.tolist()})\n"
              "assert not any(m.startswith('weightgen') for m in sys.modules)\n"
              "print(json.dumps(model(x).logits.tolist()))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    got = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
    assert torch.allclose(got, expect, atol=1e-4)


def test_a_key_outside_the_family_is_refused_when_sampling(fitted, tmp_path):
    gen, saved = fitted
    with pytest.raises(CipherKeyError, match="13 characters of 0 and 1"):
        write_generated(gen, tmp_path / "x", 1, "0101")
    res = CliRunner().invoke(app, ["sample", str(saved), "--task-code", "0101", "--peft-out", str(tmp_path / "y")])
    assert res.exit_code != 0 and "13 characters of 0 and 1" in res.output and "Traceback" not in res.output


def test_an_adapter_for_another_base_names_the_module_and_both_shapes(zoo_dir, tmp_path):
    cfg = parse(TINY)
    with Zoo.open(zoo_dir) as zoo:
        base = load_base(zoo)
    wider = build_net("char-lm", (6,), 26, d_model=32, layers=1, heads=2)  # another base model
    other = peft_model(wider, {"r": 2, "lora_alpha": 4, "target_modules": ["up_proj", "down_proj"]}, 0)
    from weightgen.adapters.zoo import adapter_state

    state = adapter_state(other)
    write_peft(state, build_net("char-lm", (6,), 26, d_model=32, layers=1, heads=2),
               {"r": 2, "lora_alpha": 4, "target_modules": ["up_proj", "down_proj"]}, tmp_path / "wide")
    with pytest.raises(AdapterError, match=r"module 'model.layers.0.mlp.down_proj': lora_A has shape \(2, 128\), the "
                                           r"base model's Linear\(64, 16\) at rank 2 needs \(2, 64\)"):
        load_adapter(base, tmp_path / "wide")
    config, _ = read_adapter(tmp_path / "wide")
    with pytest.raises(AdapterError, match=r"lora_A has shape \(2, 32\).*at rank 4 needs \(4, 16\)"):
        check_adapter(base, {**config, "r": 4}, state)
    with pytest.raises(AdapterError, match=r"target_modules \['gate'\] match no linear layer"):
        check_adapter(base, {**config, "target_modules": ["gate"]}, state)
    assert cfg.zoo.lora.r == 2


def test_weightgen_run_writes_the_per_key_report(zoo_dir, fitted, tmp_path):
    from weightgen.pipeline import run_experiment

    gen, _ = fitted
    cfg = parse({**TINY, "sample": {"n": 2, "sampler": "ddim", "steps": 4}})
    report = run_experiment(cfg, zoo_dir, tmp_path / "run", show_progress=False, fitted=(gen, {"fit_seconds": 0.0}))
    assert report["kind"] == "adapters" and (tmp_path / "run" / "report.md").is_file()
    assert json.loads((tmp_path / "run" / "report.json").read_text())["summary"]["heldout"]["keys"] == 2


def test_weightgen_run_prints_an_adapters_report_as_notes(capsys):
    from weightgen.cli import _print_report

    _print_report({"kind": "adapters", "notes": ["heldout keys (2): generated adapters 0.5"]}, None)
    assert "heldout keys (2)" in capsys.readouterr().out


def test_training_time_reaches_the_score_it_ends_with(zoo_dir):
    from weightgen.adapters.report import training_time

    with Zoo.open(zoo_dir) as zoo:
        t = training_time(zoo, KEY)
    assert t["steps"] == 12 and 0 <= t["steps_to_score"] <= t["steps"]
    assert 0 <= t["seconds_to_score"] <= t["train_seconds"] and 0 < t["score"] <= 1


def test_a_stored_config_with_the_removed_canonicalize_at_its_default_still_loads():
    stored = {**TINY, "zoo": {**TINY["zoo"], "lora": {**TINY["zoo"]["lora"], "canonicalize": False}}}
    assert parse_config(stored, "manifest.sqlite", stored=True).zoo.lora.r == 2
    with pytest.raises(ConfigError, match="'zoo.lora.canonicalize' is True, and 'canonicalize' was removed"):
        parse_config({**stored, "zoo": {**stored["zoo"], "lora": {**stored["zoo"]["lora"], "canonicalize": True}}},
                     "manifest.sqlite", stored=True)


def test_the_builtin_config_parses():
    from weightgen.cli import builtin_config_path
    from weightgen.config import load_config

    cfg = load_config(builtin_config_path("lora-cipher"))
    assert cfg.zoo.mode == "adapters" and cfg.zoo.heldout == 10 and cfg.generator.condition == "task_code"
