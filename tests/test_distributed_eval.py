"""Sharded judging (weightgen/eval_distributed.py, judging.score_networks / judge_scored): blocks of every
group scored apart and joined in rank order give one process's per-network metrics and verdicts, to float
tolerance, in process and from 2 gloo ranks of `weightgen eval --procs 2`; more processes than networks, and
a fields zoo, are refused in one line before any process starts."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from weightgen.cli import app
from weightgen.eval_distributed import check_procs
from weightgen.evaluate.judging import Scored, block, judge, judge_scored, score_networks
from weightgen.fit_distributed import DistributedFitError
from weightgen.pipeline import judge_inputs, read_samples
from weightgen.zoo import Zoo

runner = CliRunner()
N_SAMPLES = 5


def _squash(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def samples(seeds_zoo, tmp_path_factory):
    """A samples folder as `weightgen sample` writes it: two exact copies of training checkpoints, two
    noised ones and one with a NaN weight (copies, failures and a non-finite network cross the ranks)."""
    out = tmp_path_factory.mktemp("samples")
    with Zoo.open(seeds_zoo) as zoo:
        states = [zoo.load(m) for m in zoo.members("train")]
    names = [k for k, v in states[0].items() if v.is_floating_point()]
    gen = torch.Generator().manual_seed(0)
    made = [states[0], states[1]]
    made += [{k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in states[i].items()} for i in (2, 3)]
    made.append({k: v.clone() for k, v in states[0].items()})
    made[-1][names[0]].view(-1)[0] = math.nan
    for i, s in enumerate(made):
        save_file(s, str(out / f"sample_{i:04d}.safetensors"))
    (out / "samples.json").write_text(json.dumps({"n": N_SAMPLES, "method": "pdiff", "generated_names": names,
                                                  "nonfinite": [4]}))
    return out


@pytest.fixture(scope="module")
def one_process(seeds_zoo, samples) -> dict:
    """The samples' report as one process judges them."""
    with Zoo.open(seeds_zoo) as zoo:
        meta, batches = read_samples(samples)
        return judge(zoo.build_net(), generated_stacked=batches, names=meta["generated_names"], out_dir=None,
                     **judge_inputs(zoo, zoo.config))


def _assert_same_report(got: dict, want: dict) -> None:
    assert list(got["groups"]) == list(want["groups"])
    for key, g in want["groups"].items():
        for field in ("accuracy", "max_iou", "nearest_distance"):
            a = torch.tensor([math.nan if v is None else v for v in got["groups"][key][field]], dtype=torch.float64)
            b = torch.tensor([math.nan if v is None else v for v in g[field]], dtype=torch.float64)
            assert torch.allclose(a, b, atol=1e-5, equal_nan=True), (key, field)
        assert got["groups"][key]["n"] == g["n"] and got["groups"][key]["n_nonfinite"] == g["n_nonfinite"]
    assert got["notes"] == want["notes"]


def test_blocks_joined_in_rank_order_judge_as_one_process(seeds_zoo, samples, one_process):
    """What each rank runs, here in turn: every group split into contiguous blocks (a rank may get none of
    a one-network group), joined, then judged once, is the one-process report."""
    assert [block(5, (r, 3)) for r in range(3)] == [(0, 1), (1, 3), (3, 5)]
    with Zoo.open(seeds_zoo) as zoo:
        names = read_samples(samples)[0]["generated_names"]
        net, inputs = zoo.build_net(), judge_inputs(zoo, zoo.config)
        for world in (2, 3):
            parts = []
            for rank in range(world):
                mine = read_samples(samples, batch_size=2, rows=block(N_SAMPLES, (rank, world)))[1]
                parts.append(score_networks(net, generated_stacked=mine, names=names, shard=(rank, world), **inputs))
            assert parts[0]["weight_average"] is None  # one network: the last rank's
            joined = {key: Scored.cat(p[key] for p in parts) for key in parts[0]}
            got = judge_scored(joined, net, inputs["task"], inputs["train_stacked"], names, None)
            _assert_same_report(got, one_process)
    assert one_process["groups"]["generated"]["n_nonfinite"] == 1
    assert any("copies of a training checkpoint" in n for n in one_process["notes"])
    assert {"run_average", "heldout"} <= set(one_process["groups"])


def test_two_gloo_ranks_write_the_report_of_one_process(seeds_zoo, samples, one_process, tmp_path):
    two = runner.invoke(app, ["eval", str(samples), "--zoo", str(seeds_zoo), "--out", str(tmp_path / "two"),
                              "--procs", "2"])
    assert two.exit_code == 0, two.output
    _assert_same_report(json.loads((tmp_path / "two" / "report.json").read_text()), one_process)
    assert (tmp_path / "two" / "report.md").is_file() and (tmp_path / "two" / "novelty.png").is_file()


def test_more_procs_than_networks_and_fields_zoos_are_refused(seeds_zoo, samples, tmp_path, monkeypatch):
    monkeypatch.setattr("weightgen.fit_distributed.subprocess.run",
                        lambda *a, **k: pytest.fail("no process may start"))
    res = runner.invoke(app, ["eval", str(samples), "--zoo", str(seeds_zoo), "--out", str(tmp_path / "r"),
                              "--procs", "6"])
    assert res.exit_code == 2
    assert "--procs 6 is more than the 5 networks to judge: give --procs 5 or fewer" in _squash(res.output)
    with pytest.raises(DistributedFitError, match="field judging compares whole sets of fields and runs in one "
                                                  "process: drop --procs"):
        check_procs(5, 2, "fields")
    check_procs(5, 1, "fields")  # one process judges fields as before
