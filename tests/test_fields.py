"""Neural fields: the digit family, the field nets, batched fitting, the field zoo and RPG on it."""
from __future__ import annotations

import json
import math

import pytest
import torch

from weightgen.config import parse_config
from weightgen.fields import digit_family, fit_fields, get_family
from weightgen.fields import zoo as field_zoo
from weightgen.fields.digits import grid_coords
from weightgen.fields.fit import field_values
from weightgen.nets import build_net
from weightgen.tasks import get_task
from weightgen.zoo import Zoo, ZooError, build_zoo, plan_runs
from weightgen.zoo.store import ZooWriter

FIELD_CFG = {
    "name": "tiny-fields", "seed": 0, "device": "cpu",
    "task": {"name": "digit-fields", "resolution": 8},
    "net": {"name": "field-mlp", "features": 8, "hidden": [8]},
    "train": {"optimizer": "adam", "lr": 0.02, "batch_size": 32, "epochs": 10},
    "zoo": {"mode": "fields", "runs": 12, "heldout": 2, "init": "shared"},
    "tokenizer": {"include": ["*"], "token_size": 16},
    "generator": {"method": "rpg", "condition": "task_code", "permutation_state": False, "d_model": 16, "layers": 1,
                  "backbone": "lstm", "unet_channels": [4, 8], "steps": 3, "batch_size": 2, "tokens_per_step": 4,
                  "diffusion": {"prediction": "sample"}},
    "sample": {"n": 10, "sampler": "ddim", "steps": 2},
    "evaluate": {"sigmas": [0.01], "n_noise": 4},
}


def test_digit_family_shapes_and_values():
    fam = digit_family(32)
    assert fam.coords.shape == (1024, 2) and fam.values.shape == (1797, 1024, 1) and fam.labels.shape == (1797,)
    assert fam.coords.min() == -1.0 and fam.coords.max() == 1.0
    assert 0.0 <= fam.values.min() and fam.values.max() <= 1.0
    assert set(fam.labels.tolist()) == set(range(10))
    # the upsampling keeps the original pixels at the 8 x 8 pixel centres (align_corners)
    from sklearn.datasets import load_digits

    img = torch.from_numpy(load_digits().images[5]).float() / 16
    assert torch.allclose(digit_family(8).values[5].view(8, 8), img)
    # row-major with x along the columns: values.view(r, r)[row, col] is at (x=col, y=row)
    g = grid_coords(4)
    assert torch.allclose(g[1], torch.tensor([-1 / 3, -1.0])) and torch.allclose(g[4], torch.tensor([-1.0, -1 / 3]))
    cond = fam.condition(5)
    assert cond == {"class": int(fam.labels[5]), "code": "".join("1" if i == cond["class"] else "0" for i in range(10)),
                    "item": 5}


def test_digit_fields_task_is_one_field():
    task = get_task("digit-fields", item=7, resolution=16)
    assert task.kind == "regression" and task.x_train.shape == (256, 2) and task.y_train.shape == (256, 1)
    assert torch.equal(task.y_train, digit_family(16).values[7]) and task.condition["item"] == 7
    with pytest.raises(ValueError, match="item 5000 is out of range"):
        get_task("digit-fields", item=5000)
    with pytest.raises(ValueError, match="not a field family"):
        get_family("digits")


@pytest.mark.parametrize("name", ["field-mlp", "siren"])
def test_field_nets_shapes(name):
    net = build_net(name, (2,), 1, seed=0)
    assert net(torch.rand(7, 2) * 2 - 1).shape == (7, 1)
    assert 1000 < sum(p.numel() for p in net.parameters()) < 5000
    assert build_net(name, (3,), 1)(torch.rand(5, 3)).shape == (5, 1)
    with pytest.raises(ValueError, match="not coordinates"):
        build_net(name, (1, 8, 8), 1)


def test_field_mlp_features_are_shared_and_not_stored():
    a, b = build_net("field-mlp", (2,), 1, seed=0), build_net("field-mlp", (2,), 1, seed=1)
    assert torch.equal(a.B, b.B) and "B" not in a.state_dict()
    assert not torch.equal(a.mlp[0].weight, b.mlp[0].weight)


@pytest.mark.parametrize("batch", [None, 16])
def test_batched_fit_equals_fitting_one_alone(batch):
    fam = digit_family(8)
    values = fam.values[:3]
    stacked, psnr = fit_fields("field-mlp", fam.coords, values, [0, 1, 2], 40, lr=0.02, batch_coords=batch,
                               features=8, hidden=[8])
    alone, psnr1 = fit_fields("field-mlp", fam.coords, values[1:2], [1], 40, lr=0.02, batch_coords=batch,
                              features=8, hidden=[8])
    for k in alone:
        assert torch.allclose(stacked[k][1], alone[k][0], atol=1e-5), k
    assert torch.allclose(psnr[1], psnr1[0], atol=1e-3)
    # fitting raises PSNR over the untrained networks
    _, before = fit_fields("field-mlp", fam.coords, values, [0, 1, 2], 0, features=8, hidden=[8])
    assert (psnr > before + 3).all()
    # the returned states are the networks: decoded one at a time they give the same PSNR
    net = build_net("field-mlp", (2,), 1, features=8, hidden=[8])
    net.load_state_dict({k: v[2] for k, v in stacked.items()})
    with torch.no_grad():
        mse = (net(fam.coords) - values[2]).square().mean()
        assert torch.allclose(field_values(net, stacked, fam.coords)[2], net(fam.coords), atol=1e-6)
    assert math.isclose(10 * math.log10(1 / float(mse)), float(psnr[2]), abs_tol=1e-3)


def test_siren_fits():
    fam = digit_family(8)
    _, before = fit_fields("siren", fam.coords, fam.values[:2], [0, 1], 0)
    _, after = fit_fields("siren", fam.coords, fam.values[:2], [0, 1], 30, lr=2e-3)
    assert (after > before + 3).all()


def test_fit_fields_bad_shapes():
    fam = digit_family(8)
    with pytest.raises(ValueError, match="do not match coords"):
        fit_fields("field-mlp", fam.coords[:10], fam.values[:2], [0, 1], 1)
    with pytest.raises(ValueError, match="2 seeds for 3 fields"):
        fit_fields("field-mlp", fam.coords, fam.values[:3], [0, 1], 1)


def _cfg(**zoo):
    return parse_config({**FIELD_CFG, "zoo": {**FIELD_CFG["zoo"], **zoo}}, "test")


def test_field_zoo_builds_and_resumes(tmp_path, monkeypatch):
    cfg = _cfg()
    plans = plan_runs(cfg)
    assert [p.split for p in plans] == ["train"] * 10 + ["heldout"] * 2
    monkeypatch.setattr(field_zoo, "CHUNK", 4)
    calls = {"n": 0}
    real = ZooWriter.finish_run

    def crash_after_five(self, run, secs=None):  # a kill in the middle of the second chunk
        if calls["n"] == 5:
            raise KeyboardInterrupt
        calls["n"] += 1
        real(self, run, secs)

    monkeypatch.setattr(ZooWriter, "finish_run", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        build_zoo(cfg, tmp_path / "zoo", show_progress=False)
    monkeypatch.setattr(ZooWriter, "finish_run", real)
    with Zoo.open(tmp_path / "zoo") as zoo:
        assert len(zoo.members(None)) == 5
    summary = build_zoo(cfg, tmp_path / "zoo", show_progress=False)
    assert summary == {"runs": 12, "trained": 7, "skipped": 5}
    with Zoo.open(tmp_path / "zoo") as zoo:
        members = zoo.members("train")
        assert len(members) == 10 and len(zoo.members("heldout")) == 2 and not zoo.verify()
        m = members[3]
        fam = digit_family(8)
        assert m.condition == fam.condition(3) and m.metrics["train_psnr"] > 10
        net = zoo.build_net()
        net.load_state_dict(zoo.load(m))
        with torch.no_grad():
            mse = float((net(fam.coords) - fam.values[3]).square().mean())
        assert math.isclose(10 * math.log10(1 / mse), m.metrics["train_psnr"], abs_tol=1e-3)
    assert build_zoo(cfg, tmp_path / "zoo", show_progress=False)["trained"] == 0


def test_field_zoo_bad_settings(tmp_path):
    with pytest.raises(ZooError, match="1797"):
        plan_runs(_cfg(runs=5000))
    with pytest.raises(ZooError, match="heldout"):
        plan_runs(_cfg(heldout=12))
    with pytest.raises(ZooError, match="train.optimizer: adam"):
        build_zoo(parse_config({**FIELD_CFG, "train": {**FIELD_CFG["train"], "optimizer": "sgd"}}, "t"),
                  tmp_path / "z", show_progress=False)
    with pytest.raises(ZooError, match="not a field family"):
        build_zoo(parse_config({**FIELD_CFG, "task": {"name": "digits"}}, "t"), tmp_path / "z2", show_progress=False)


def test_rpg_on_field_zoo_runs_and_samples_a_class(tmp_path):
    from weightgen.generators import load_generator
    from weightgen.pipeline import run_experiment, write_samples

    cfg = _cfg(heldout=4)
    report = run_experiment(cfg, tmp_path / "zoo", tmp_path / "run", show_progress=False)
    assert report["kind"] == "fields" and report["generated"]["n"] == 10
    assert {"class_fidelity", "nearest_rms_mean"} <= set(report["generated"]) and "0.01" in report["noise"]
    assert (tmp_path / "run" / "report.md").is_file() and (tmp_path / "run" / "report.json").is_file()
    # the set judgement: every group against the first half of the held-out fields, as many fields each
    assert report["reference"] == {"n": 2, "distance": "l2"}
    assert set(report["generative"]) == {"generated", "noise_0.01", "weight_average", "heldout"}
    assert all(g["n"] == 2 and 0 <= g["1nna"] <= 1 for g in report["generative"].values())
    assert "MMD" in (tmp_path / "run" / "report.md").read_text()
    from typer.testing import CliRunner

    from weightgen.cli import app

    res = CliRunner().invoke(app, ["sample", str(tmp_path / "run" / "generator"), "--classes", "3", "-n", "2",
                                   "-o", str(tmp_path / "cli3")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cli3" / "samples.json").read_text())["condition"] == "0001000000"
    # `weightgen eval` judges sampled fields as fields, each as the class it was asked for
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "cli3"), "--zoo", str(tmp_path / "zoo")])
    assert res.exit_code == 0, res.output
    judged = json.loads((tmp_path / "cli3" / "report.json").read_text())
    assert judged["kind"] == "fields" and judged["generated"]["n"] == 2 and "class_fidelity" in judged["generated"]
    assert judged["reference"]["n"] == 2 and (tmp_path / "cli3" / "grid.png").is_file()
    gen = load_generator(tmp_path / "run" / "generator", "cpu")
    meta = write_samples(gen, tmp_path / "s3", 2, 0, 2, "ddim", 2, condition="0001000000")
    assert meta["n"] == 2
    from safetensors.torch import load_file

    net = build_net("field-mlp", (2,), 1, features=8, hidden=[8])
    net.load_state_dict(load_file(str(tmp_path / "s3" / "sample_0000.safetensors")))
    assert net(digit_family(8).coords).shape == (64, 1)


def test_builtin_fields_2d_config_parses():
    from weightgen.config import load_config
    from weightgen.fields.digits import FIELD_FAMILIES

    cfg = load_config(__import__("pathlib").Path(__file__).parents[1] / "weightgen" / "configs" / "fields-2d.yaml")
    assert cfg.zoo.mode == "fields" and cfg.generator.condition == "task_code" and cfg.task.name in FIELD_FAMILIES
