"""Hidden-unit groups of any net (weightgen/nets/symmetry.py): traced with torch.fx for chains of
layers, norms and activations, declared by a net where tracing cannot follow it, refused in one
line otherwise; and the derived groups at work in zoo.align and G.pt on a net defined here."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import build, tiny_cfg
from weightgen.config import GPTSpec, TokenizerSpec
from weightgen.generators import GENERATORS, GeneratorError
from weightgen.generators.gpt import GPT, member_metric
from weightgen.nets import NETS, build_net
from weightgen.nets.permute import hidden_groups, permute_state
from weightgen.nets.symmetry import (Axis, HiddenGroup, PermutationError, TraceStop, permutation_groups,
                                     traced_groups)
from weightgen.pipeline import zoo_task
from weightgen.tokens import Tokenizer
from weightgen.zoo import Zoo, ZooError

LN_MLP = "test-symmetry-layernorm-mlp"  # registered by the fixture below, under a name no other test uses
RESIDUAL = "test-symmetry-residual"


def layernorm_mlp(input_shape, num_classes: int, hidden=(37, 23)) -> nn.Module:
    """A net the package does not know: an MLP with LayerNorm and odd hidden widths."""
    sizes = [int(torch.tensor(input_shape).prod()), *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))


class Residual(nn.Module):
    def __init__(self, d_in: int = 64, width: int = 12, classes: int = 10):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(d_in, width), nn.Linear(width, width), nn.Linear(width, classes)

    def forward(self, x):
        h = torch.relu(self.a(x.flatten(1)))
        return self.head(h + torch.relu(self.b(h)))


def residual(input_shape, num_classes: int) -> nn.Module:
    return Residual(int(torch.tensor(input_shape).prod()), 12, num_classes)


@pytest.fixture
def user_nets(monkeypatch):
    """The two nets above registered for this test only (as a user's own code would register them)."""
    monkeypatch.setitem(NETS._items, LN_MLP, layernorm_mlp)
    monkeypatch.setitem(NETS._items, RESIDUAL, residual)


def _shapes(net: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _axes(groups: list[HiddenGroup]) -> list[tuple[int, set]]:
    return [(g.size, set(g.axes)) for g in groups]


def test_layernorm_mlp_groups_are_traced():
    groups = traced_groups(layernorm_mlp((1, 8, 8), 10), (1, 8, 8))
    assert _axes(groups) == [
        (37, {Axis("1.weight", 0), Axis("1.bias", 0), Axis("2.weight", 0), Axis("2.bias", 0), Axis("4.weight", 1)}),
        (23, {Axis("4.weight", 0), Axis("4.bias", 0), Axis("5.weight", 0), Axis("5.bias", 0), Axis("7.weight", 1)}),
    ]


class FlattenCNN(nn.Module):
    """The library's CNN without its global pool: the head reads 5 channels x 4 x 4 positions."""

    def __init__(self):
        super().__init__()
        self.features = build_net("cnn", (1, 8, 8), 10, channels=[3, 5], batchnorm=True).features
        self.head = nn.Linear(5 * 4 * 4, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


@pytest.mark.parametrize("name,make", [
    ("mlp", lambda: build_net("mlp", (1, 8, 8), 10, hidden=[8, 6])),
    ("mlp", lambda: build_net("mlp", (1, 8, 8), 10, hidden=[])),
    ("cnn", lambda: build_net("cnn", (1, 8, 8), 10, channels=[4, 6, 5])),
    ("cnn", lambda: build_net("cnn", (1, 8, 8), 10, channels=[4, 6], batchnorm=True)),
    ("cnn", FlattenCNN),
], ids=["mlp", "mlp-no-hidden", "cnn", "cnn-batchnorm", "cnn-flatten-head"])
def test_traced_groups_equal_the_hand_written_ones(name, make):
    net = make()
    assert _axes(traced_groups(net, (1, 8, 8))) == _axes(hidden_groups(name, _shapes(net)))


class Functional(nn.Module):
    """Conv1d, BatchNorm1d, activations as functions and methods, a scalar scale, a spatial mean,
    then Linear, BatchNorm1d, PReLU per unit and dropout."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv1d(2, 5, 3, padding=1), nn.BatchNorm1d(5)
        self.c2 = nn.Conv1d(5, 4, 3)
        self.fc, self.bn2, self.act = nn.Linear(4, 7), nn.BatchNorm1d(7), nn.PReLU(7)
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        h = F.silu(self.bn1(self.c1(x))) * 0.5
        h = self.c2(h).relu().mean(-1)
        h = F.dropout(self.act(self.bn2(self.fc(h))), 0.1, self.training)
        return self.head(h)


class FlattenNorm(nn.Module):
    """A conv whose flattened output is normalized per feature: each channel's block moves as one."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool = nn.Conv2d(1, 3, 3, padding=1), nn.MaxPool2d(2)
        self.flat, self.norm = nn.Flatten(), nn.LayerNorm(3 * 4 * 4)
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        return self.head(torch.tanh(self.norm(self.flat(self.pool(self.conv(x))))))


@pytest.mark.parametrize("make,input_shape,sizes", [
    (lambda: layernorm_mlp((1, 8, 8), 10), (1, 8, 8), [37, 23]),
    (Functional, (2, 9), [5, 4, 7]),
    (FlattenNorm, (1, 8, 8), [3]),
    (lambda: build_net("cnn", (1, 8, 8), 10, channels=[4, 6], batchnorm=True), (1, 8, 8), [4, 6]),
], ids=["layernorm-mlp", "functional", "flatten-norm", "cnn-batchnorm"])
def test_permuting_traced_groups_keeps_the_function(make, input_shape, sizes):
    net = make().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random values everywhere, positive variances, so every entry matters
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                positive = "running_var" in k
                v.copy_(torch.rand(v.shape, generator=gen) + 0.5 if positive else torch.randn(v.shape, generator=gen))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    groups = traced_groups(net, input_shape)
    assert [g.size for g in groups] == sizes
    perms = [torch.arange(g.size).roll(1) for g in groups]  # none the identity
    moved = permute_state(state, groups, perms)
    for g in groups:
        for axis in g.axes:
            assert not torch.equal(moved[axis.name], state[axis.name]), axis
    x = torch.randn(5, *input_shape, generator=gen)
    expected = net(x)
    net.load_state_dict(moved)
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(12, 2)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], 1))


class Reshape(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(4, 6), nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.a(x).view(-1, 2, 3))


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.a(torch.relu(self.a(x))))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.attn, self.head = nn.Linear(4, 6), nn.MultiheadAttention(6, 2, batch_first=True), nn.Linear(6, 2)

    def forward(self, x):
        h = self.a(x)
        return self.head(self.attn(h, h, h)[0])


class TwoConsumers(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 2), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        self.c(h)  # read, then dropped: still a second consumer of the units
        return self.b(h)


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.b(self.a(x))
        return x


@pytest.mark.parametrize("make,input_shape,reason", [
    (lambda: Residual(4), (4,), r"'add' \(operator.add\) combines the units of layer 'a' with 'relu_1', as a residual"),
    (Concat, (4,), r"'cat' \(torch.cat\) combines the units of layer 'a'"),
    (Reshape, (4,), r"'view' \(.view\(\)\) reads the units of layer 'a'; only a flatten after a conv layer"),
    (Shared, (4,), r"layer 'a' is called 2 times \(shared weights\)"),
    (Attention, (3, 4), r"module 'attn' \(MultiheadAttention\) reads the units of layer 'a'; tracing follows"),
    (TwoConsumers, (4,), r"the units of layer 'a' at 'relu' feed 2 consumers \('c', 'b'\)"),
    (Branching, (4,), r"torch.fx cannot trace it \(TraceError"),
    (lambda: nn.Sequential(nn.Conv1d(2, 6, 3), nn.GroupNorm(2, 6), nn.Conv1d(6, 2, 1)), (2, 7),
     r"module '1' \(GroupNorm\) reads the units of layer '0', but does not act on its 6 units one by one"),
], ids=["residual", "concat", "reshape", "shared", "attention", "two-consumers", "control-flow", "group-norm"])
def test_tracing_stops_with_the_reason(make, input_shape, reason):
    with pytest.raises(TraceStop, match=reason):
        traced_groups(make(), input_shape)


class DeclaredResidual(Residual):
    """A net tracing cannot follow that declares its groups: the units of ``a`` and of ``b``."""

    def weightgen_permutation_groups(self):
        return [HiddenGroup(12, (Axis("a.weight", 0), Axis("a.bias", 0), Axis("b.weight", 1),
                                 Axis("b.weight", 0), Axis("b.bias", 0), Axis("head.weight", 1)))]


def test_a_net_declares_its_groups_where_tracing_cannot():
    net = DeclaredResidual()
    build = {"name": "declared", "input_shape": [1, 8, 8], "num_classes": 10}
    groups = permutation_groups(build, _shapes(net), build=lambda: net)
    assert groups == net.weightgen_permutation_groups()
    x = torch.randn(3, 1, 8, 8)
    expected = net(x)
    net.load_state_dict(permute_state(net.state_dict(), groups, [torch.arange(12).flip(0)]))
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)
    # a declaration that does not fit the net's entries is refused, naming the entry and both sizes
    net.weightgen_permutation_groups = lambda: [HiddenGroup(11, (Axis("a.weight", 0),))]
    with pytest.raises(PermutationError, match=r"declared by weightgen_permutation_groups\(\) do not fit.*'a.weight' "
                                               r"has 12 values along dimension 0 \(shape \(12, 64\)\), not 11 units"):
        permutation_groups(build, _shapes(net), build=lambda: net)


def test_a_net_without_groups_is_refused_in_one_line_with_the_ways_out(user_nets):
    build = {"name": RESIDUAL, "input_shape": [1, 8, 8], "num_classes": 10, "kwargs": {}}
    shapes = _shapes(residual((1, 8, 8), 10))
    with pytest.raises(PermutationError) as e:
        permutation_groups(build, shapes, uses=[("zoo.align", "zoo.align: none")])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"zoo.align does not know net '{RESIDUAL}': 'add' (operator.add) combines the units")
    assert msg.endswith("declare its hidden units with a weightgen_permutation_groups() method on the net "
                        "(weightgen.nets.symmetry), or set zoo.align: none")
    # the library's nets keep their hand-written groups, without building anything
    assert [g.size for g in permutation_groups({"name": "mlp"}, _shapes(build_net("mlp", (4,), 2, hidden=[5])))] == [5]


@pytest.mark.parametrize("section,way_out", [
    ({"zoo": {"mode": "seeds", "runs": 2, "align": "weight_matching"}}, "zoo.align: none"),
    ({"generator": {"method": "gpt"}}, "generator.permutation_augmentation: false"),
    ({"generator": {"method": "gpt", "architecture": "graph", "permutation_augmentation": False}},
     "generator.architecture: chunks"),
], ids=["align", "gpt-augmentation", "gpt-graph"])
def test_the_zoo_build_refuses_before_training(user_nets, tmp_path, section, way_out):
    with pytest.raises(ZooError, match=f"net '{RESIDUAL}': 'add'.*, or set {way_out}$"):
        build(tiny_cfg(net={"name": RESIDUAL}, **section), tmp_path / "z")
    with Zoo.open(tmp_path / "z") as zoo:
        assert zoo.members(None) == []
    # turned off, the same net builds
    off = {"zoo": {"mode": "seeds", "runs": 1, "checkpoints": 1},
           "generator": {"method": "gpt", "permutation_augmentation": False}}
    assert build(tiny_cfg(net={"name": RESIDUAL}, **off), tmp_path / "ok")["trained"] == 1


def test_align_puts_a_layernorm_mlp_zoo_in_one_order(user_nets, tmp_path):
    net = {"name": LN_MLP}
    zoo = {"mode": "seeds", "runs": 3, "checkpoints": 1}
    build(tiny_cfg(net=net, zoo=zoo), tmp_path / "raw")
    summary = build(tiny_cfg(net=net, zoo={**zoo, "align": "weight_matching"}), tmp_path / "aligned")
    assert summary["aligned"]["runs_permuted"] == 2  # independent inits: both other runs move
    with Zoo.open(tmp_path / "raw") as raw, Zoo.open(tmp_path / "aligned") as aligned:
        x, _ = zoo_task(raw).split("test")
        model = raw.build_net().eval()
        flat, logits = {}, {}
        for name, z in (("raw", raw), ("aligned", aligned)):
            outs = []
            for m in z.members():
                model.load_state_dict(z.load(m))
                with torch.no_grad():
                    outs.append(model(x))
            flat[name] = torch.stack([torch.cat([v.flatten() for v in z.load(m).values()]) for m in z.members()])
            logits[name] = torch.stack(outs)
    torch.testing.assert_close(logits["aligned"], logits["raw"], atol=1e-5, rtol=1e-5)  # the same functions
    # in one order, the runs lie nearer each other than they did
    assert torch.cdist(flat["aligned"], flat["aligned"]).mean() < torch.cdist(flat["raw"], flat["raw"]).mean()


GPT_TINY = {"method": "gpt", "d_model": 16, "layers": 1, "heads": 2, "steps": 3, "batch_size": 4, "ema": None,
            "diffusion": {"timesteps": 20, "prediction": "sample"}}


@pytest.mark.parametrize("architecture,permuted", [("chunks", 2), ("units", 2), ("graph", 0)])
def test_gpt_fits_and_samples_a_layernorm_mlp(user_nets, tmp_path, architecture, permuted):
    cfg = tiny_cfg(net={"name": LN_MLP}, zoo={"mode": "trajectory", "runs": 2, "checkpoints": 3})
    build(cfg, tmp_path / "z")
    spec = GPTSpec.model_validate({**GPT_TINY, "architecture": architecture})
    with Zoo.open(tmp_path / "z") as zoo:
        gen = GENERATORS.get("gpt").from_zoo(spec, zoo, TokenizerSpec(token_size=16))
        stats = gen.fit(zoo, show_progress=False)
        m = zoo.members("train")[0]
        prompt = {"start": zoo.load(m), "start_metric": member_metric(m, spec.metric),
                  "target_metric": member_metric(m, spec.metric)}
    # augmentation on both hidden layers, except where the graph model is exactly equivariant
    assert stats["permuted_layers"] == permuted
    if architecture != "chunks":
        assert [tuple(i.shape[:1]) for i in gen.net.units.unit_indices()] == [(37,), (23,)]
    batch = next(gen.sample(2, prompt, seed=0, sampler="ddim", steps=2))
    gen.build_net().load_state_dict({k: v[0] for k, v in batch.items()})


def test_gpt_refuses_a_net_without_groups_before_fitting(user_nets):
    state = residual((1, 8, 8), 10).state_dict()
    tok = Tokenizer.fit([state], token_size=16)
    build = {"name": RESIDUAL, "input_shape": [1, 8, 8], "num_classes": 10, "kwargs": {}}
    with pytest.raises(GeneratorError, match=f"architecture 'units' does not know net '{RESIDUAL}'.*"
                                             "or set generator.architecture: chunks$"):
        GPT(GPTSpec.model_validate({**GPT_TINY, "architecture": "units"}), tok, state, build)
    with pytest.raises(GeneratorError, match="augmentation does not know.*permutation_augmentation: false$"):
        GPT(GPTSpec.model_validate(GPT_TINY), tok, state, build)
    assert GPT(GPTSpec.model_validate({**GPT_TINY, "permutation_augmentation": False}), tok, state, build).groups == []


def test_a_declaration_of_the_wrong_type_is_named():
    net = Residual()
    net.weightgen_permutation_groups = lambda: [("a.weight", 0)]
    build = {"name": "declared", "input_shape": [1, 8, 8], "num_classes": 10}
    with pytest.raises(PermutationError, match=r"net 'declared': its weightgen_permutation_groups\(\) must return a "
                                               r"list of HiddenGroup \(weightgen.nets.symmetry\), not of tuple"):
        permutation_groups(build, _shapes(net), build=lambda: net)
