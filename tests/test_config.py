"""weightgen.config: strict sections, errors that name the field, YAML loading."""
from __future__ import annotations

import pytest

from conftest import tiny_cfg, write_config
from weightgen.config import ConfigError, ExperimentConfig, dump_config, load_config, parse_config


def _error(data) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data, "cfg.yaml")
    return str(e.value)


def test_defaults_and_tiny_config_parse():
    cfg = parse_config({})
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.zoo.mode == "seeds" and cfg.task.name == "digits" and cfg.net.name == "mlp"
    cfg = parse_config(tiny_cfg())
    assert cfg.net.kwargs == {"hidden": [8]}
    assert cfg.task.kwargs == {}
    assert cfg.train.epochs == 1


def test_dump_config_round_trips(tmp_path):
    cfg = parse_config(tiny_cfg(task={"name": "mnist1d", "num_samples": 500, "code": "0100100001"}))
    assert cfg.task.kwargs == {"num_samples": 500} and cfg.task.code == "0100100001"
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_unknown_top_level_key_names_key_and_allowed():
    msg = _error({**tiny_cfg(), "trian": {"epochs": 2}})
    assert "cfg.yaml" in msg
    assert "'trian'" in msg
    assert "did you mean 'train'" in msg
    for key in ("name", "seed", "task", "net", "train", "zoo", "tokenizer"):
        assert key in msg


@pytest.mark.parametrize("section,bad,allowed", [
    ("train", "epoch", ["optimizer", "lr", "batch_size", "epochs"]),
    ("zoo", "checkpoint", ["mode", "runs", "checkpoints", "every", "tail", "codes", "heldout"]),
    ("tokenizer", "token_sise", ["include", "exclude", "token_size", "buffers"]),
])
def test_unknown_nested_key_names_key_and_allowed(section, bad, allowed):
    data = tiny_cfg()
    data[section] = {**data.get(section, {}), bad: 1}
    msg = _error(data)
    line = next(line for line in msg.splitlines() if f"'{bad}'" in line)
    assert line.strip().startswith(f"{section}:"), msg
    for a in allowed:
        assert a in msg


def test_unknown_net_and_task_options_name_allowed():
    msg = _error(tiny_cfg(net={"name": "mlp", "hiden": [8]}))
    assert "net" in msg and "'hiden'" in msg and "hidden" in msg and "activation" in msg
    msg = _error(tiny_cfg(task={"name": "mnist1d", "samples": 10}))
    assert "task" in msg and "'samples'" in msg and "num_samples" in msg
    msg = _error(tiny_cfg(net={"name": "mpl"}))
    assert "'mpl'" in msg and "mlp" in msg and "cnn" in msg


def test_timm_net_options_are_passed_through():
    cfg = parse_config(tiny_cfg(net={"name": "timm:resnet18", "input_size": 32}))
    assert cfg.net.kwargs == {"input_size": 32}


@pytest.mark.parametrize("section,field,value,dotted", [
    ("train", "epochs", "three", "train.epochs"),
    ("train", "lr", -1.0, "train.lr"),
    ("train", "batch_size", 0, "train.batch_size"),
    ("zoo", "runs", [1], "zoo.runs"),
    ("zoo", "checkpoints", 0, "zoo.checkpoints"),
    ("tokenizer", "buffers", "maybe", "tokenizer.buffers"),
])
def test_wrong_type_or_range_names_dotted_field(section, field, value, dotted):
    data = tiny_cfg()
    data[section] = {**data.get(section, {}), field: value}
    msg = _error(data)
    assert f"{dotted}:" in msg
    assert repr(value) in msg  # what was given is shown


def test_seed_wrong_type():
    assert "seed:" in _error({**tiny_cfg(), "seed": "zero"})


@pytest.mark.parametrize("section,field,value,choices", [
    ("train", "optimizer", "rmsprop", ["sgd", "adam", "adamw"]),
    ("zoo", "mode", "ensembles", ["seeds", "trajectory", "tail", "tasks"]),
])
def test_bad_literal_value(section, field, value, choices):
    data = tiny_cfg()
    data[section] = {**data[section], field: value}
    msg = _error(data)
    assert f"{section}.{field}" in msg and value in msg
    for c in choices:
        assert c in msg


def test_tail_mode_needs_patterns():
    msg = _error(tiny_cfg(zoo={"mode": "tail", "runs": 1}))
    assert "zoo" in msg and "tail" in msg and "glob" in msg


def test_tail_patterns_only_in_tail_mode():
    msg = _error(tiny_cfg(zoo={"mode": "seeds", "tail": ["head.*"]}))
    assert "zoo" in msg and "'tail'" in msg


def test_bad_task_code():
    msg = _error(tiny_cfg(task={"name": "digits", "code": "0000000000"}))
    assert "task" in msg and "0000000000" in msg


def test_several_problems_are_all_listed():
    data = tiny_cfg()
    data["train"] = {**data["train"], "epochs": "x", "optimizer": "nope"}
    msg = _error(data)
    assert "train.epochs" in msg and "train.optimizer" in msg


def test_load_config_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "no such" in str(e.value)


def test_load_config_directory_is_not_a_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path)


def test_load_config_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {epochs: 3\nzoo: [\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "YAML" in str(e.value)


@pytest.mark.parametrize("text,kind", [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_load_config_non_mapping(tmp_path, text, kind):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "mapping" in str(e.value) and kind in str(e.value)


def test_load_config_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == parse_config({})


def test_load_config_error_names_file(tmp_path):
    path = write_config(tmp_path / "typo.yaml", {**tiny_cfg(), "zooo": {}})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "'zooo'" in str(e.value)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("method", ["pdiff", "rpg", "gpt"])
def test_every_generator_takes_an_lr_schedule_and_names_the_allowed_ones(method):
    cfg = parse_config(tiny_cfg(generator={"method": method, "lr_schedule": "cosine"}))
    assert cfg.generator.lr_schedule == "cosine"
    # each method's published schedule: G.pt's released configs decay by a cosine, the others keep it constant
    published = "cosine" if method == "gpt" else "constant"
    assert parse_config(tiny_cfg(generator={"method": method})).generator.lr_schedule == published
    msg = _error(tiny_cfg(generator={"method": method, "lr_schedule": "step"}))
    assert "generator" in msg and "lr_schedule" in msg and "'constant'" in msg and "'cosine'" in msg


@pytest.mark.parametrize("method", ["pdiff", "rpg", "gpt"])
def test_every_generator_takes_ema_warmup(method):
    assert parse_config(tiny_cfg(generator={"method": method})).generator.ema_warmup is False
    cfg = parse_config(tiny_cfg(generator={"method": method, "ema": 0.999, "ema_warmup": True}))
    assert cfg.generator.ema_warmup is True
    msg = _error(tiny_cfg(generator={"method": method, "ema_warmup": "sometimes"}))
    assert f"generator.{method}.ema_warmup" in msg and "valid boolean" in msg


def test_evaluate_split_is_gone_and_named_as_removed():
    """Evaluation always judges on the test split: ``evaluate.split`` is refused with the reason."""
    assert "split" not in type(parse_config({}).evaluate).model_fields
    msg = _error(tiny_cfg(evaluate={"split": "val"}))
    assert "evaluate" in msg and "'split' was removed" in msg and "test split" in msg


def test_device_is_one_top_level_key():
    msg = _error({**tiny_cfg(), "device": "tpu"})
    assert "device" in msg and all(c in msg for c in ("auto", "cpu", "cuda"))
    data = tiny_cfg()
    data["train"] = {**data["train"], "device": "cpu"}
    assert "'device' is one top-level key" in _error(data)


def test_a_stored_config_from_an_earlier_version_loads_without_its_removed_keys():
    """A zoo's or run's stored config keeps per-section devices and removed keys at their old
    defaults; read as stored, it loads as the library behaves now, and a removed option that was on is named."""
    data = tiny_cfg()
    data["train"] = {**data["train"], "device": "cpu"}
    data["evaluate"] = {"split": "test"}
    data["generator"] = {"method": "rpg", "state_mix": 0.0, "device": "auto", "diffusion": {"beta_schedule": "linear"}}
    cfg = parse_config(data, "zoo.sqlite", stored=True)
    assert cfg.generator.method == "rpg"
    data["generator"]["state_mix"] = 0.5
    with pytest.raises(ConfigError, match=r"'generator.state_mix' is 0.5, and 'state_mix' was removed"):
        parse_config(data, "zoo.sqlite", stored=True)
