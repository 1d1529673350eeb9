"""zoo.align: weight matching finds the permutation that undoes a shuffle of hidden units, and an
aligned zoo holds the same functions as the raw one, in its first run's order, resumably."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import STEPS_PER_EPOCH_64, build, rerun_as_if_interrupted, tiny_cfg
from weightgen.cli import app
from weightgen.nets import NETS, build_net
from weightgen.nets.permute import hidden_groups, matching_permutations, permute_state, random_permutations
from weightgen.pipeline import zoo_task
from weightgen.zoo import Zoo, ZooError, ZooWriter
from weightgen.zoo.align import ALIGN_META, align_zoo


@pytest.mark.parametrize("name,make", [
    ("mlp", lambda: build_net("mlp", (1, 8, 8), 10, hidden=[8, 6])),
    ("cnn", lambda: build_net("cnn", (1, 8, 8), 10, channels=[4, 6], batchnorm=True)),
    ("vit", lambda: build_net("vit", (1, 8, 8), 10, dim=12, heads=3)),
], ids=["mlp", "cnn-batchnorm", "vit"])
def test_matching_undoes_a_shuffle_of_the_hidden_units(name, make):
    state = dict(make().state_dict())
    groups = hidden_groups(name, {k: v.shape for k, v in state.items()}, {"heads": 3} if name == "vit" else None)
    for seed in range(3):
        perms = [p[0] for p in random_permutations(groups, 1, torch.Generator().manual_seed(seed))]
        shuffled = permute_state(state, groups, perms)
        found = matching_permutations(shuffled, state, groups)
        back = permute_state(shuffled, groups, found)
        for k in state:
            assert torch.equal(back[k], state[k]), k
    # a network matched with itself stays as it is
    assert all(torch.equal(p, torch.arange(g.size)) for p, g in zip(matching_permutations(state, state, groups), groups))


def _logits(zoo: Zoo) -> tuple[torch.Tensor, list]:
    members = zoo.members(None)
    x, _ = zoo_task(zoo).split("test")
    net = zoo.build_net()
    out = []
    for m in members:
        net.load_state_dict(zoo.load(m))
        net.eval()
        with torch.no_grad():
            out.append(net(x))
    return torch.stack(out), members


def test_an_aligned_zoo_holds_the_same_networks_in_one_order(tmp_path):
    net = {"name": "cnn", "channels": [4, 6], "batchnorm": True}
    zoo = {"mode": "seeds", "runs": 4, "heldout": 1, "checkpoints": 2, "every": 2}
    build(tiny_cfg(net=net, zoo=zoo), tmp_path / "raw")
    summary = build(tiny_cfg(net=net, zoo={**zoo, "align": "weight_matching"}), tmp_path / "aligned")
    assert summary["aligned"] == {"method": "weight_matching", "reference": {"run": 0, "step": STEPS_PER_EPOCH_64},
                                  "runs_permuted": summary["aligned"]["runs_permuted"], "runs": 4}
    assert summary["aligned"]["runs_permuted"] >= 2  # random inits: the other runs' units are not in run 0's order
    with Zoo.open(tmp_path / "raw") as raw, Zoo.open(tmp_path / "aligned") as aligned:
        assert aligned.verify() == []
        raw_logits, raw_members = _logits(raw)
        al_logits, al_members = _logits(aligned)
        torch.testing.assert_close(al_logits, raw_logits, atol=1e-5, rtol=1e-5)  # the same functions...
        assert [m.split for m in al_members] == [m.split for m in raw_members]
        moved = [not torch.equal(raw.load(a)["features.0.0.weight"], aligned.load(b)["features.0.0.weight"])
                 for a, b in zip(raw_members, al_members)]
        assert moved[:2] == [False, False] and sum(moved) >= 4  # ...the reference run untouched, others permuted
        # one permutation per run: its checkpoints stay as near each other as they were
        for i in range(0, len(raw_members), 2):
            d = lambda z, ms: (z.load(ms[i])["features.0.0.weight"] - z.load(ms[i + 1])["features.0.0.weight"]).norm()  # noqa: E731
            torch.testing.assert_close(d(aligned, al_members), d(raw, raw_members))
        # in one order, the runs lie nearer each other than they did
        flat = lambda z: torch.stack([torch.cat([v.flatten() for v in z.load(m).values() if v.is_floating_point()])  # noqa: E731
                                      for m in z.members("train")])
        assert torch.cdist(flat(aligned), flat(aligned)).mean() < torch.cdist(flat(raw), flat(raw)).mean()
        before = {m.shard for m in al_members}
    shown = CliRunner().invoke(app, ["zoo", "info", str(tmp_path / "aligned")])
    assert shown.exit_code == 0 and "weight_matching:" in shown.output and "permuted" in shown.output
    # aligning again (a build interrupted after permuting, before recording it) changes nothing
    again = rerun_as_if_interrupted(tmp_path / "aligned", ALIGN_META, align_zoo)
    assert again["runs_permuted"] == 0
    with Zoo.open(tmp_path / "aligned") as aligned:
        assert {m.shard for m in aligned.members(None)} == before and aligned.meta(ALIGN_META) == again


class _Residual(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(64, 8), nn.Linear(8, 8), nn.Linear(8, num_classes)

    def forward(self, x):
        h = self.a(x.flatten(1))
        return self.head(h + torch.relu(self.b(h)))


@pytest.mark.parametrize("name,make,message", [
    # a net whose hidden units tracing cannot follow (as many timm architectures), and one without any
    ("residual", lambda input_shape, num_classes: _Residual(num_classes),
     r"zoo.align 'weight_matching' does not know net 'residual': 'add' \(operator.add\) combines the units of "
     r"layer 'a'.*weightgen_permutation_groups\(\).*, or set zoo.align: none$"),
    ("linear-probe", lambda input_shape, num_classes: nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes)),
     r"zoo.align 'weight_matching': net 'linear-probe' has no hidden layer whose units could be permuted; "
     "use zoo.align: none"),
])
def test_align_is_refused_for_a_net_it_cannot_permute_before_training(tmp_path, monkeypatch, name, make, message):
    monkeypatch.setitem(NETS._items, name, make)
    cfg = tiny_cfg(net={"name": name}, zoo={"mode": "seeds", "runs": 2, "align": "weight_matching"})
    with pytest.raises(ZooError, match=message):
        build(cfg, tmp_path / "z")
    with Zoo.open(tmp_path / "z") as zoo:
        assert zoo.members(None) == []


def test_replacing_a_checkpoint_keeps_its_names_and_shapes(tmp_path):
    build(tiny_cfg(), tmp_path / "z")
    with Zoo.open(tmp_path / "z") as zoo:
        m = zoo.members()[0]
        state = zoo.load(m)
    writer = ZooWriter(tmp_path / "z")
    with pytest.raises(ZooError, match="differ in names, shapes or dtypes"):
        writer.replace_checkpoint(m, {k: v[..., :1] for k, v in state.items()})
    name = writer.replace_checkpoint(m, {k: -v for k, v in state.items()})
    writer.close()
    assert name.endswith(".v1.safetensors")
    with Zoo.open(tmp_path / "z") as zoo:
        assert zoo.verify() == [] and torch.equal(zoo.load(zoo.members()[0])["1.weight"], -state["1.weight"])
        assert not (tmp_path / "z" / "shards" / m.shard).exists()
