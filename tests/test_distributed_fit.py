"""Distributed fits and sampling (weightgen/fit_distributed.py): 2 gloo ranks fit the weights of one
process from the same global batches, to float tolerance; `weightgen sample --procs 2` writes every index once and one
samples.json; more processes than the work is refused before any starts."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import PDIFF_GEN, PDIFF_ZOO_CFG, SEEDS_ZOO_CFG, parse, write_config
from weightgen.cli import app
from weightgen.diffusion.schedule import Diffusion, shard_rows, sharding
from weightgen.generators import load_generator
from weightgen.generators import GeneratorError
from weightgen.pipeline import fit_generator, join_samples, read_samples, write_samples
from weightgen.zoo import Zoo

runner = CliRunner()
TINY_RPG = {"method": "rpg", "d_model": 16, "layers": 1, "unet_channels": [4, 8], "kernel_size": 3, "steps": 12,
            "batch_size": 4, "tokens_per_step": 5, "sample_chunk": 1000, "ema": 0.9,
            "diffusion": {"timesteps": 20}}
RPG_CFG = {**SEEDS_ZOO_CFG, "generator": TINY_RPG}
PDIFF_CFG = {**PDIFF_ZOO_CFG, "generator": {**PDIFF_GEN, "ema": 0.9, "ae_steps": 10, "diffusion_steps": 20}}


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_sharded_loss_terms_average_to_the_whole_batchs_loss():
    """Each rank's share of the masked loss, averaged over ranks (as DDP averages gradients), is the
    loss of the whole batch: uneven rows and uneven padding included."""
    diffusion = Diffusion(20)
    x0 = torch.randn(5, 1, 6)
    mask = torch.arange(6) < torch.tensor([6, 2, 6, 4, 1])[:, None, None]
    weight = torch.randn(6)

    def denoise(x, t, scale):
        return x * weight + scale[:, None, None]

    scale = torch.randn(5)
    whole = diffusion.loss(denoise, x0, mask, torch.Generator().manual_seed(0), batch_args=(scale,))
    parts = []
    for rank in range(3):
        with sharding(rank, 3):
            assert shard_rows(5) == slice(rank * 5 // 3, (rank + 1) * 5 // 3)
            parts.append(diffusion.loss(denoise, x0, mask, torch.Generator().manual_seed(0), batch_args=(scale,)))
    assert torch.allclose(torch.stack(parts).mean(), whole, atol=1e-6)


def _max_diff(a, b) -> float:
    return max((v - b.components()[name].state_dict()[k]).abs().max().item()
               for name, m in a.components().items() for k, v in m.state_dict().items() if v.is_floating_point())


def test_two_gloo_ranks_fit_the_weights_of_one_process(pdiff_zoo, tmp_path, monkeypatch):
    """p-diff's latent diffusion split over 2 gloo ranks ends within float tolerance of one process:
    no further from it than a fit whose loss is scaled by 1 + 1e-7 (Adam's normalization carries
    rounding in near-zero gradients up to the weights' scale, wherever the sums are reordered)."""
    cfg = parse(PDIFF_CFG)
    cfg_path = write_config(tmp_path / "pdiff.yaml", PDIFF_CFG)
    res = runner.invoke(app, ["train", str(cfg_path), "--zoo", str(pdiff_zoo), "--out", str(tmp_path / "two"),
                              "--procs", "2"])
    assert res.exit_code == 0, res.output
    assert "fitted by 2 processes" in _squash(res.output)
    two = load_generator(tmp_path / "two", "cpu")
    with Zoo.open(pdiff_zoo) as zoo:
        one = fit_generator(cfg, zoo, show_progress=False)[0]
        real = Diffusion.loss
        monkeypatch.setattr(Diffusion, "loss", lambda self, *a, **k: real(self, *a, **k) * (1 + 1e-7))
        rounded = fit_generator(cfg, zoo, show_progress=False)[0]
    floor = _max_diff(one, rounded)
    assert _max_diff(one, two) <= 10 * floor + 1e-6, (_max_diff(one, two), floor)
    assert json.loads((tmp_path / "two" / "fit_stats.json").read_text())["procs"] == 2
    assert not (tmp_path / "two" / "fit_checkpoint.safetensors").exists()


@pytest.mark.parametrize("stream", [True, False])
def test_sharded_sampling_writes_each_index_once_and_one_manifest(seeds_zoo, tmp_path, stream):
    """What each rank of `weightgen sample --procs 2` runs, here in turn: disjoint blocks of indices,
    then one samples.json. Streamed, network i comes from seed + i: the networks of one process."""
    with Zoo.open(seeds_zoo) as zoo:
        gen = fit_generator(parse({**RPG_CFG, "generator": {**TINY_RPG, "steps": 2}}), zoo, show_progress=False)[0]
    for rank in range(2):
        write_samples(gen, tmp_path / "s2", 3, 0, 100, "ddim", 5, stream=stream, shard=(rank, 2))
    with pytest.raises(GeneratorError, match="rank part .samples.rank2.json missing"):
        join_samples(tmp_path / "s2", 3)
    meta = join_samples(tmp_path / "s2", 2)
    assert meta["n"] == 3 and meta["procs"] == 2 and meta["nonfinite"] == []
    assert sorted(p.name for p in (tmp_path / "s2").iterdir()) == [
        "sample_0000.safetensors", "sample_0001.safetensors", "sample_0002.safetensors", "samples.json"]
    write_samples(gen, tmp_path / "s1", 3, 0, 100, "ddim", 5, stream=stream)
    got, want = next(read_samples(tmp_path / "s2")[1]), next(read_samples(tmp_path / "s1")[1])
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-5) == stream, k  # batched: each block its own stream
        assert torch.equal(got[k][0], want[k][0])  # the first block starts where one process does


def test_more_procs_than_the_work_is_refused(seeds_zoo, tmp_path, monkeypatch):
    monkeypatch.setattr("weightgen.fit_distributed.subprocess.run",
                        lambda *a, **k: pytest.fail("no process may start"))
    cfg_path = write_config(tmp_path / "rpg.yaml", RPG_CFG)
    res = runner.invoke(app, ["train", str(cfg_path), "--zoo", str(seeds_zoo), "--out", str(tmp_path / "g"),
                              "--procs", "9"])
    assert res.exit_code == 2
    assert "--procs 9 is more than the 4 networks of one batch" in _squash(res.output)
    with Zoo.open(seeds_zoo) as zoo:
        gen = fit_generator(parse({**RPG_CFG, "generator": {**TINY_RPG, "steps": 0}}), zoo, show_progress=False)[0]
    gen.save(tmp_path / "g")
    res = runner.invoke(app, ["sample", str(tmp_path / "g"), "--out", str(tmp_path / "s"), "--n", "2", "--procs", "3"])
    assert res.exit_code == 2
    assert "--procs 3 is more than the 2 networks asked for (--n)" in _squash(res.output)
