"""Nets and tasks defined outside the package: by import path, by file path and by entry point."""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import PDIFF_GEN, PYTHON, subprocess_env, tiny_cfg
from torch import nn

from weightgen import plugins
from weightgen.config import ConfigError, load_config, parse_config
from weightgen.nets import NETS, build_net
from weightgen.registry import RegistryError
from weightgen.tasks import TASKS, Task, get_task

# A user's own net (an MLP with LayerNorm and odd widths) and task (scikit-learn's wine), as files.
MY_NETS = '''
from torch import nn


def make_net(input_shape, num_classes, hidden=(37, 23)):
    """Linear, LayerNorm, ReLU for each hidden width, then a linear head."""
    layers, width = [nn.Flatten()], input_shape[0]
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, num_classes))
'''

MY_TASKS = '''
import torch
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split

from weightgen.tasks import Task


def make_task(seed=0):
    """Wine: a fixed stratified 60/20/20 split, features standardized on the training split."""
    x, y = load_wine(return_X_y=True)
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    x_va, x_te, y_va, y_te = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    mean, std = x_tr.mean(0), x_tr.std(0)

    def xs(a):
        return torch.tensor((a - mean) / std, dtype=torch.float32)

    def ys(a):
        return torch.tensor(a, dtype=torch.int64)

    return Task("wine", xs(x_tr), ys(y_tr), xs(x_va), ys(y_va), xs(x_te), ys(y_te), num_classes=3)
'''


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


@pytest.fixture
def user_code(tmp_path, monkeypatch) -> Path:
    """A folder holding ``my_nets.py`` and ``my_tasks.py``, and a package ``user_pkg`` on ``sys.path``."""
    folder = _write(tmp_path / "project", {"my_nets.py": MY_NETS, "my_tasks.py": MY_TASKS})
    pkg = _write(tmp_path / "site" / "user_pkg", {"__init__.py": "", "models.py": MY_NETS, "data.py": MY_TASKS})
    monkeypatch.syspath_prepend(str(pkg.parent))
    yield folder
    for name in ("user_pkg", "user_pkg.models", "user_pkg.data"):
        sys.modules.pop(name, None)


# -- import paths and file paths ----------------------------------------------------------------
def test_import_path_names_net_and_task(user_code):
    cfg = parse_config(tiny_cfg(task={"name": "user_pkg.data:make_task"},
                                net={"name": "user_pkg.models:make_net", "hidden": [5]}))
    assert cfg.net.name == "user_pkg.models:make_net"  # stored as written
    task = get_task(cfg.task.name, **cfg.task.kwargs)
    assert isinstance(task, Task) and task.num_classes == 3 and task.input_shape == (13,)
    net = build_net(cfg.net.name, task.input_shape, task.num_classes, **cfg.net.kwargs)
    assert [m.normalized_shape for m in net.modules() if isinstance(m, nn.LayerNorm)] == [(5,)]


def test_file_path_is_read_from_the_config_folder_and_stored_absolute(user_code, tmp_path, monkeypatch):
    cfg_path = user_code / "wine.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_cfg(task={"name": "./my_tasks.py:make_task"},
                                                net={"name": "my_nets.py:make_net"})))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(cfg_path)
    assert cfg.net.name == f"{(user_code / 'my_nets.py').resolve()}:make_net"
    assert cfg.task.name == f"{(user_code / 'my_tasks.py').resolve()}:make_task"
    net = build_net(cfg.net.name, (13,), 3)
    assert [m.normalized_shape for m in net.modules() if isinstance(m, nn.LayerNorm)] == [(37,), (23,)]
    assert parse_config(cfg.model_dump(mode="json")).net.name == cfg.net.name  # a stored config reads the same


def test_file_path_without_config_file_is_read_from_cwd(user_code, monkeypatch):
    monkeypatch.chdir(user_code)
    cfg = parse_config(tiny_cfg(net={"name": "./my_nets.py:make_net"}))
    assert cfg.net.name == f"{(user_code / 'my_nets.py').resolve()}:make_net"


def test_factory_options_are_checked_like_registered_ones(user_code):
    with pytest.raises(ConfigError, match=r"net 'user_pkg.models:make_net': unknown option 'hiden' "
                                          r"\(did you mean 'hidden'\?\); allowed: hidden"):
        parse_config(tiny_cfg(net={"name": "user_pkg.models:make_net", "hiden": [5]}))
    with pytest.raises(RegistryError, match="unknown option 'sed'"):
        get_task("user_pkg.data:make_task", sed=1)


def test_file_loads_once_and_may_import_its_neighbours(tmp_path):
    _write(tmp_path, {"helpers.py": "WIDTH = 6\nLOADS = []\n", "counted.py": """
        import helpers
        from torch import nn
        helpers.LOADS.append(__name__)

        def make_net(input_shape, num_classes):
            return nn.Linear(input_shape[0], helpers.WIDTH)
        """})
    name = f"{tmp_path / 'counted.py'}:make_net"
    assert build_net(name, (3,), 2).out_features == 6
    assert build_net(name, (3,), 2).out_features == 6
    assert len(sys.modules["helpers"].LOADS) == 1 and str(tmp_path) not in sys.path
    sys.modules.pop("helpers", None)


# -- one line for each way it goes wrong -----------------------------------------------------------
@pytest.fixture
def bad_code(tmp_path, monkeypatch) -> Path:
    files = {
        "broken_import.py": "import no_such_package_xyz\n",
        "raises.py": "from torch import nn\n\nWIDTH = 1 / 0\n",
        "syntax.py": "def make_net(:\n",
        "shapes.py": """
            from torch import nn
            NOT_A_FACTORY = 3

            def make_net(input_shape, num_classes):
                return nn.Linear(3, 2)

            def returns_dict(input_shape, num_classes):
                return {"weight": 1}

            def task_returns_tuple():
                return (1, 2)
            """,
    }
    folder = _write(tmp_path / "bad", files)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.chdir(folder)
    yield folder
    for name in ("broken_import", "raises", "shapes"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("name,needles", [
    ("broken_import:make_net", ["cannot import module 'broken_import'", "No module named 'no_such_package_xyz'"]),
    ("no_such_module_xyz.models:make_net", ["cannot import module 'no_such_module_xyz.models'",
                                            "./no_such_module_xyz/models.py:make_net"]),
    ("./broken_import.py:make_net", ["broken_import.py failed", "ModuleNotFoundError", "no_such_package_xyz",
                                     "line 1"]),
    ("./raises.py:make_net", ["raises.py failed", "ZeroDivisionError", "line 3"]),
    ("./syntax.py:make_net", ["syntax.py failed", "SyntaxError", "line 1"]),
    ("shapes:make_nett", ["module 'shapes' has no attribute 'make_nett'", "did you mean 'make_net'?",
                          "it defines make_net, returns_dict, task_returns_tuple"]),
    ("./shapes.py:make_nett", ["shapes.py has no attribute 'make_nett'", "did you mean 'make_net'?"]),
    ("./missing.py:make_net", ["no such file", "missing.py"]),
    ("shapes:NOT_A_FACTORY", ["names an int, not a factory"]),
    ("shapes:make_net.", ["an import path is 'package.module:factory' or './file.py:factory'"]),
    ("my_nets.py", ["unknown net 'my_nets.py'", "name the factory in the file: 'my_nets.py:make_net'"]),
])
def test_a_bad_factory_is_one_line_naming_it(bad_code, name, needles):
    with pytest.raises(ConfigError) as e:
        parse_config(tiny_cfg(net={"name": name}))
    header, line = str(e.value).split("\n")  # the config's one header line, then one line for the net
    assert header == "<config>: invalid config" and line.startswith("  net: ")
    for needle in needles:
        assert needle in line, (needle, line)
    with pytest.raises(RegistryError) as direct:
        build_net(name, (3,), 2)
    assert "\n" not in str(direct.value) and "Traceback" not in str(direct.value)


def test_wrong_return_type_is_one_line_naming_factory_and_both_types(bad_code):
    with pytest.raises(RegistryError) as e:
        build_net("shapes:returns_dict", (3,), 2)
    assert str(e.value) == "net 'shapes:returns_dict' returned a dict, expected a torch.nn.Module"
    with pytest.raises(RegistryError) as e:
        get_task("./shapes.py:task_returns_tuple")
    assert str(e.value) == ("task './shapes.py:task_returns_tuple' returned a tuple, "
                            "expected a weightgen.tasks.Task")


def test_the_cli_answers_a_bad_factory_in_one_line(bad_code):
    from typer.testing import CliRunner

    from weightgen.cli import app

    cfg = bad_code / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg(net={"name": "./missing.py:make_net"})))
    result = CliRunner().invoke(app, ["zoo", "build", str(cfg), "--out", str(bad_code / "zoo")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"net './missing.py:make_net': no such file {bad_code / 'missing.py'}" in " ".join(result.output.split())
    assert not (bad_code / "zoo").exists()  # refused before anything was written


# -- entry points ----------------------------------------------------------------------------------
@pytest.fixture
def fresh_registries(monkeypatch):
    """Entry points loaded by a test are forgotten after it."""
    monkeypatch.setattr(NETS, "_loaded", {})
    monkeypatch.setattr(TASKS, "_loaded", {})


def test_entry_points_are_looked_up_like_registered_names(user_code, fresh_registries, monkeypatch):
    calls = []
    fake = [importlib.metadata.EntryPoint("layernorm-mlp", "user_pkg.models:make_net", "weightgen.nets"),
            importlib.metadata.EntryPoint("other", "user_pkg.data:make_task", "weightgen.tasks")]

    def entry_points(group=None):
        calls.append(group)
        return [ep for ep in fake if ep.group == group]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    build_net("mlp", (13,), 3)
    assert calls == []  # a registered name never reads the installed packages' metadata
    cfg = parse_config(tiny_cfg(net={"name": "layernorm-mlp", "hidden": [4]}))
    assert cfg.net.name == "layernorm-mlp"
    assert isinstance(build_net("layernorm-mlp", (13,), 3), nn.Sequential)
    assert "layernorm-mlp" in NETS and "layernorm-mlp" in NETS.names() and "layernorm-mlp" not in TASKS
    with pytest.raises(RegistryError) as e:
        build_net("layernorm-mpl", (13,), 3)
    assert "did you mean 'layernorm-mlp'?" in str(e.value)
    assert {"mlp", "layernorm-mlp"} <= set(str(e.value).split("available: ")[1].split(", or ")[0].split(", "))


def test_entry_point_from_an_installed_distribution(tmp_path, fresh_registries, monkeypatch):
    site = _write(tmp_path / "site", {"wine_plugin.py": MY_TASKS + "\n\ndef broken():\n    pass\n"})
    dist = _write(site / "wine_plugin-0.1.dist-info", {
        "METADATA": "Metadata-Version: 2.1\nName: wine-plugin\nVersion: 0.1\n",
        "entry_points.txt": "[weightgen.tasks]\nwine = wine_plugin:make_task\nwine-broken = wine_plugin_gone:make\n",
    })
    assert dist.is_dir()
    monkeypatch.syspath_prepend(str(site))
    task = get_task("wine")
    assert task.name == "wine" and task.num_classes == 3
    with pytest.raises(RegistryError) as e:
        get_task("wine-broken")
    msg = str(e.value)
    assert "\n" not in msg and "wine_plugin_gone:make" in msg and "wine-plugin" in msg and "No module named" in msg
    with pytest.raises(RegistryError) as e:
        get_task("whine2")
    available = str(e.value).split("available: ")[1].split(", or ")[0].split(", ")
    assert {"digits", "wine", "wine-broken"} <= set(available) and available == sorted(available)
    sys.modules.pop("wine_plugin", None)


# -- a later process finds the factory again ------------------------------------------------------
def _weightgen() -> list[str]:
    script = Path(sys.executable).parent / "weightgen"
    return [str(script)] if script.is_file() else [PYTHON, "-c", "from weightgen.cli import app; app()"]


def test_cli_end_to_end_with_user_files_in_fresh_processes(tmp_path, monkeypatch):
    """A net and task given by file path through zoo build, zoo info, train, sample and eval, each command
    run from another folder than the config's. zoo info, sample and eval run in new processes: the zoo and
    the saved generator find the user's files again without anything being registered."""
    from typer.testing import CliRunner

    from weightgen.cli import app

    project = _write(tmp_path / "project", {"my_nets.py": MY_NETS, "my_tasks.py": MY_TASKS})
    cfg = tiny_cfg(
        name="wine",
        task={"name": "./my_tasks.py:make_task"},
        net={"name": "./my_nets.py:make_net", "hidden": [37, 23]},
        train={"optimizer": "adam", "lr": 0.01, "batch_size": 32, "epochs": 2},
        zoo={"mode": "seeds", "runs": 3, "checkpoints": 2, "every": 2},
        tokenizer={"token_size": "flat"},
        generator=PDIFF_GEN,
        sample={"n": 4, "sampler": "ddpm", "batch_size": 4},
        evaluate={"n_noise": 4, "sigmas": [0.01, 0.1]},
    )
    (project / "wine.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    zoo, gen, samples = tmp_path / "zoo", tmp_path / "gen", tmp_path / "samples"

    monkeypatch.chdir(_write(tmp_path / "here", {}))
    for args in (["zoo", "build", str(project / "wine.yaml"), "--out", str(zoo)],
                 ["train", str(project / "wine.yaml"), "--zoo", str(zoo), "--out", str(gen)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (args, result.output)

    outputs = []
    for i, args in enumerate([["zoo", "info", str(zoo)],
                              ["sample", str(gen), "--out", str(samples), "-n", "3"],
                              ["eval", str(samples), "--zoo", str(zoo)]]):
        cwd = _write(tmp_path / f"fresh{i}", {})
        done = subprocess.run(_weightgen() + args, cwd=cwd, env={**subprocess_env(), "COLUMNS": "200"},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        outputs.append(done.stdout)
    assert "my_tasks.py:make_task" in outputs[0] and "my_nets.py:make_net" in outputs[0]
    report = json.loads((samples / "report.json").read_text())
    assert report["groups"]["generated"]["n"] == 3
    net_build = json.loads((gen / "generator.json").read_text())["net_build"]
    assert net_build["name"] == f"{(project / 'my_nets.py').resolve()}:make_net"
    assert net_build["kwargs"] == {"hidden": [37, 23]}

    # RPG on the same zoo: fitted, saved, loaded and sampled into the user's net.
    from weightgen.generators import load_generator
    from weightgen.pipeline import fit_generator
    from weightgen.zoo import Zoo

    rpg = {"method": "rpg", "d_model": 16, "layers": 1, "unet_channels": [4, 8], "kernel_size": 3, "steps": 2,
           "batch_size": 2, "tokens_per_step": 5, "diffusion": {"timesteps": 10}}
    rpg_cfg = load_config(_write(project, {"rpg.yaml": yaml.safe_dump(
        {**cfg, "tokenizer": {"token_size": 64}, "generator": rpg})}) / "rpg.yaml")
    with Zoo.open(zoo) as z:
        fitted, _ = fit_generator(rpg_cfg, z, show_progress=False)
    monkeypatch.setattr(plugins, "_FILE_MODULES", {})  # as in a new process: the files are read again
    loaded = load_generator(fitted.save(tmp_path / "rpg"))
    state = {k: v[0] for k, v in next(iter(loaded.sample(2, seed=0))).items()}
    net = loaded.build_net()
    net.load_state_dict(state)
    assert [m.normalized_shape for m in net.modules() if isinstance(m, nn.LayerNorm)] == [(37,), (23,)]
