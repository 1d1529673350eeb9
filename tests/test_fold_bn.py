"""zoo.fold_bn: BatchNorm folded into the layer before it keeps what every network computes, leaves
the BatchNorm an identity the tokenizer does not generate, and is refused for a net with nothing to fold."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import build, parse, rerun_as_if_interrupted, tiny_cfg
from weightgen.cli import app
from weightgen.config import ConfigError
from weightgen.nets import NETS, build_net
from weightgen.nets.fold_bn import BATCHNORMS, FOLD_META, fold_batchnorm, fold_pairs, folded_entries, is_folded
from weightgen.pipeline import fit_generator, zoo_task
from weightgen.tokens import Tokenizer, TokenizerError
from weightgen.zoo import Zoo, ZooError
from weightgen.zoo.fold import fold_zoo


class Mixed(nn.Module):
    """Every case the fold must tell apart: a conv with and without bias before a BatchNorm, a
    Linear before a BatchNorm1d, a BatchNorm after a ReLU, a conv whose output a BatchNorm shares, and
    a conv + BatchNorm applied twice (shared weights)."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.b_after_relu = nn.BatchNorm2d(6)
        self.c3, self.b3 = nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6)  # c3's output also feeds the residual sum
        self.c5, self.b5 = nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6)  # called twice
        self.fc, self.b4 = nn.Linear(6, 5), nn.BatchNorm1d(5)

    def forward(self, x):
        x = self.b_after_relu(torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))))
        y = self.c3(x)
        x = self.b3(y) + y
        x = self.b5(self.c5(torch.relu(self.b5(self.c5(x)))))
        return self.b4(self.fc(x.mean((2, 3))))


def _randomize_statistics(net: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, BATCHNORMS):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize("make", [lambda: build_net("cnn", (1, 8, 8), 10, channels=[4, 6], batchnorm=True), Mixed],
                         ids=["cnn", "mixed"])
def test_folding_keeps_what_the_network_computes(make):
    net = make()
    _randomize_statistics(net)
    pairs = fold_pairs(net)
    if isinstance(net, Mixed):  # the BatchNorm after a ReLU and the one sharing c3's output are not foldable
        assert [(p.layer, p.bn, p.layer_bias) for p in pairs] == [("c1", "b1", True), ("c2", "b2", False), ("fc", "b4", True)]
    else:
        assert [(p.layer, p.bn) for p in pairs] == [("features.0.0", "features.0.1"), ("features.1.0", "features.1.1")]
    x = torch.randn(16, 1, 8, 8)
    net.eval()
    with torch.no_grad():
        before = net(x)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        folded = fold_batchnorm(state, pairs)
        net.load_state_dict(folded)
        after = net(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert all(is_folded(folded, p) for p in pairs) and not any(is_folded(state, p) for p in pairs)
    # the shift lands in the layer's bias where it has one (the BatchNorm's bias then 0), else in the BatchNorm's
    for p in pairs:
        assert bool(folded[f"{p.bn}.bias"].any()) != p.layer_bias
    # folding a folded network changes nothing, bit for bit
    again = fold_batchnorm(folded, pairs)
    assert all(torch.equal(again[k], folded[k]) for k in folded)
    # the entries folding made constant (as the zoo metadata names them) hold the identity's values
    constant = folded_entries({"pairs": [p.__dict__ for p in pairs]})
    identity = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1 - 1e-5}
    assert {k.rsplit(".", 1)[1] for k in constant} == set(identity)
    for k in constant:
        assert torch.equal(folded[k], torch.full_like(folded[k], identity[k.rsplit(".", 1)[1]])), k
    assert all((f"{p.bn}.bias" in constant) == p.layer_bias for p in pairs)  # a shift the BatchNorm holds is generated


def _logits(zoo: Zoo) -> torch.Tensor:
    x, _ = zoo_task(zoo).split("test")
    net = zoo.build_net().eval()
    out = []
    for m in zoo.members(None):
        net.load_state_dict(zoo.load(m))
        with torch.no_grad():
            out.append(net(x))
    return torch.stack(out)


def test_a_folded_zoo_holds_the_same_networks_and_generates_no_batchnorm_entry(tmp_path):
    net = {"name": "cnn", "channels": [4, 6], "batchnorm": True}
    zoo = {"mode": "seeds", "runs": 3, "heldout": 1, "checkpoints": 2, "every": 2}
    build(tiny_cfg(net=net, zoo=zoo), tmp_path / "raw")
    summary = build(tiny_cfg(net=net, zoo={**zoo, "fold_bn": True}), tmp_path / "folded")
    assert summary["bn_folded"]["checkpoints_folded"] == 6 and len(summary["bn_folded"]["pairs"]) == 2
    with Zoo.open(tmp_path / "raw") as raw, Zoo.open(tmp_path / "folded") as folded:
        assert folded.verify() == []
        torch.testing.assert_close(_logits(folded), _logits(raw), atol=1e-5, rtol=1e-5)
        assert [m.metrics for m in folded.members(None)] == [m.metrics for m in raw.members(None)]
        assert not torch.equal(folded.load(folded.members()[0])["features.0.0.weight"],
                               raw.load(raw.members()[0])["features.0.0.weight"])
        tok = Tokenizer.fit_zoo(folded, buffers=True)
        assert tok.names == ["features.0.0.weight", "features.0.0.bias", "features.1.0.weight", "features.1.0.bias",
                             "head.weight", "head.bias"]
        assert "features.0.1.running_mean" in Tokenizer.fit_zoo(raw, buffers=True).names
        with pytest.raises(TokenizerError, match="only BatchNorm entries that zoo.fold_bn made"):
            Tokenizer.fit_zoo(folded, include=["features.*.1.*"], buffers=True)
        # a generator on the folded zoo makes networks whose BatchNorms are the identity
        cfg = parse(tiny_cfg(net=net, zoo={**zoo, "fold_bn": True},
                             tokenizer={"include": ["*"], "buffers": True, "token_size": 16},
                             generator={"method": "rpg", "d_model": 16, "layers": 1, "steps": 2, "batch_size": 2,
                                        "tokens_per_step": 4, "unet_channels": [4, 8]}))
        gen, _ = fit_generator(cfg, folded, show_progress=False)
        assert gen.tokenizer.names == tok.names
        made = next(gen.sample(2, None, 0, 2, "ddim", 2))
        identity = fold_batchnorm(folded.build_net().state_dict(), fold_pairs(folded.build_net()))
        for k in folded_entries(folded.meta(FOLD_META)):
            assert torch.equal(made[k][1], identity[k]), k
        before = {m.shard for m in folded.members(None)}
    shown = CliRunner().invoke(app, ["zoo", "info", str(tmp_path / "folded")])
    assert shown.exit_code == 0 and "2 BatchNorm(s) folded" in shown.output
    # folding again (a build interrupted after rewriting, before recording it) rewrites nothing
    again = rerun_as_if_interrupted(tmp_path / "folded", FOLD_META, fold_zoo)
    assert again["checkpoints_folded"] == 0
    with Zoo.open(tmp_path / "folded") as folded:
        assert {m.shard for m in folded.members(None)} == before


def test_fold_bn_is_refused_before_training_for_a_net_without_batchnorm(tmp_path, monkeypatch):
    with pytest.raises(ZooError, match="zoo.fold_bn: net 'mlp' has no BatchNorm right after a conv or linear"):
        build(tiny_cfg(zoo={"mode": "seeds", "runs": 2, "fold_bn": True}), tmp_path / "z")
    with Zoo.open(tmp_path / "z") as zoo:
        assert zoo.members(None) == []

    class Branchy(nn.Module):  # control flow on a tensor's value: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(64, 10), nn.BatchNorm1d(10)

        def forward(self, x):
            x = self.fc(x.flatten(1))
            return self.bn(x) if x.sum() > 0 else x

    monkeypatch.setitem(NETS._items, "branchy", lambda input_shape, num_classes: Branchy())
    with pytest.raises(ZooError, match="zoo.fold_bn: cannot trace Branchy"):
        build(tiny_cfg(net={"name": "branchy"}, zoo={"mode": "seeds", "runs": 2, "fold_bn": True}), tmp_path / "b")


def test_fold_bn_with_recomputed_statistics_is_refused():
    with pytest.raises(ConfigError, match="evaluate.recalibrate_bn recomputes the BatchNorm statistics that zoo.fold_bn"):
        parse(tiny_cfg(zoo={"mode": "seeds", "runs": 2, "fold_bn": True}, evaluate={"recalibrate_bn": True}))
