"""The 3D shape-field run: the soft occupancy, the built-in `fields-3d` config, and a tiny version of it
end to end (zoo -> class-conditioned RPG -> samples -> decoded volumes)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from weightgen.config import load_config, parse_config
from weightgen.fields import get_family
from weightgen.fields.fit import field_values, fit_fields
from weightgen.fields.shapes import fit_iou, make_shapes
from weightgen.nets import build_net

CONFIG = Path(__file__).parents[1] / "weightgen" / "configs" / "fields-3d.yaml"


def tiny_cfg() -> dict:
    """`fields-3d` shrunk to seconds: 15 shapes on an 8^3 grid, a net of 8 frequencies, RPG of 3 steps."""
    return {
        "name": "tiny-fields-3d", "seed": 0, "device": "cpu",
        "task": {"name": "shape-fields-3d", "count": 15, "resolution": 8, "band": 0.2},
        "net": {"name": "field-mlp", "features": 8, "hidden": [8], "scale": 1.0},
        "train": {"optimizer": "adam", "lr": 0.01, "batch_size": 128, "epochs": 4},
        "zoo": {"mode": "fields", "runs": 15, "heldout": 5, "init": "shared"},
        "tokenizer": {"include": ["*"], "token_size": 16},
        "generator": {"method": "rpg", "condition": "task_code", "permutation_state": False, "d_model": 16,
                      "layers": 1, "backbone": "lstm", "unet_channels": [4, 8], "steps": 3, "batch_size": 2,
                      "tokens_per_step": 4, "diffusion": {"prediction": "sample"}},
        "sample": {"n": 10, "sampler": "ddim", "steps": 2},
        "evaluate": {"sigmas": [0.01], "n_noise": 4},
    }


def test_soft_occupancy_has_the_surface_at_one_half():
    hard = get_family("shape-fields-3d", count=10, seed=1, resolution=8)
    soft = get_family("shape-fields-3d", count=10, seed=1, resolution=8, band=0.2)
    assert soft.values.min() >= 0 and soft.values.max() <= 1
    # the ramp's 0.5 level is the surface: inside (hard 1) exactly where the soft value is at least 0.5
    assert torch.equal(soft.values >= 0.5, hard.values > 0.5)
    assert ((soft.values > 0) & (soft.values < 1)).any()  # some grid points lie in the shell
    with pytest.raises(ValueError, match="band is -1"):
        get_family("shape-fields-3d", count=10, band=-1)


def test_fit_iou_reads_the_exact_shapes():
    fam = get_family("shape-fields-3d", count=4, seed=0, resolution=10, band=0.2)
    kw = {"scale": 1.0}
    stacked, _ = fit_fields("field-mlp", fam.coords, fam.values, [0] * 4, 80, lr=0.01, **kw)
    net = build_net("field-mlp", (3,), 1, **kw)
    iou = fit_iou(net, stacked, range(4), count=4, seed=0, points=4000)
    assert iou.shape == (4,) and (iou > 0.5).all() and iou.mean() > 0.65
    # against other shapes the same fields overlap far less
    assert fit_iou(net, stacked, [1, 2, 3, 0], count=4, seed=0, points=4000).mean() < iou.mean() - 0.2
    # shape i of the family is shape i of make_shapes: its surface points lie on the fitted level set's side
    assert make_shapes(4, seed=0, num_uniform=8, num_near=8, surface=8).labels.tolist() == fam.labels.tolist()


def test_builtin_fields_3d_config_parses():
    from weightgen.fields.digits import FIELD_FAMILIES

    cfg = load_config(CONFIG)
    assert cfg.zoo.mode == "fields" and cfg.task.name == "shape-fields-3d" and cfg.task.name in FIELD_FAMILIES
    assert cfg.generator.method == "rpg" and cfg.generator.condition == "task_code"
    assert cfg.task.kwargs["band"] > 0 and cfg.zoo.runs <= cfg.task.kwargs["count"]
    net = build_net(cfg.net.name, (3,), 1, **cfg.net.kwargs)
    assert 1000 < sum(p.numel() for p in net.parameters()) < 5000  # a few thousand parameters


def test_tiny_fields_3d_end_to_end(tmp_path):
    """`weightgen run` on a tiny fields-3d: zoo -> class-conditioned RPG -> the field report; then the saved
    generator asked for a class decodes to volumes, and the CLI asks for a class by its index."""
    from typer.testing import CliRunner

    from weightgen.cli import app
    from weightgen.generators import load_generator
    from weightgen.pipeline import run_experiment
    from weightgen.zoo import Zoo

    report = run_experiment(parse_config(tiny_cfg(), "tiny-fields-3d"), tmp_path / "zoo", tmp_path / "run",
                            show_progress=False)
    assert report["kind"] == "fields" and report["grid"] == [8, 8, 8] and report["generated"]["n"] == 10
    assert {"generated", "heldout", "weight_average"} <= set(report["generative"])
    assert (tmp_path / "run" / "report.md").is_file() and (tmp_path / "run" / "report.json").is_file()
    zoo = Zoo.open(tmp_path / "zoo")
    assert len(zoo.members("train")) == 10 and len(zoo.members("heldout")) == 5
    assert {m.condition["code"] for m in zoo.members("train")} == {"10000", "01000", "00100", "00010", "00001"}
    gen = load_generator(tmp_path / "run" / "generator", "cpu")
    net, fam = zoo.build_net(), get_family("shape-fields-3d", count=15, resolution=8, band=0.2)
    batches = list(gen.sample(4, "00100", 0, 2, "ddim", 2))  # four tori asked for
    samples = {k: torch.cat([b[k] for b in batches]).float() for k in batches[0]}
    volumes = field_values(net, samples, fam.coords).view(-1, 8, 8, 8)
    assert volumes.shape == (4, 8, 8, 8) and torch.isfinite(volumes).all()
    res = CliRunner().invoke(app, ["sample", str(tmp_path / "run" / "generator"), "--classes", "2", "-n", "2",
                                   "-o", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cli" / "samples.json").read_text())["condition"] == "00100"
