"""G.pt over hidden-unit tokens (``gpt.architecture: units``, and ``graph`` with the weights between
two hidden layers as edges; weightgen/generators/gpt_units.py): every value in exactly the tokens it
should be, exact equivariance to permuting hidden units where claimed (and augmentation kept where
not), the identity at init, refusals, fit/sample/save."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import tiny_cfg
from weightgen.config import ConfigError, GPTSpec, TokenizerSpec, parse_config
from weightgen.generators import GENERATORS, GeneratorError, load_generator
from weightgen.generators.gpt import GPT, member_metric
from weightgen.nets import build_net
from weightgen.nets.permute import hidden_groups, permute_batch, permute_state, random_permutations
from weightgen.tokens import Tokenizer
from weightgen.zoo import Zoo

UNITS = {"method": "gpt", "architecture": "units", "d_model": 16, "layers": 1, "heads": 2,
         "steps": 3, "batch_size": 4, "ema": None,
         "diffusion": {"timesteps": 20, "prediction": "sample"}}


class FlattenCNN(nn.Module):
    """The library's CNN without its global pool: the head reads 5 channels x 4 x 4 positions."""

    def __init__(self):
        super().__init__()
        cnn = build_net("cnn", (1, 8, 8), 10, channels=[5], batchnorm=True)
        self.features, self.head = cnn.features, nn.Linear(5 * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def _seeded(seed: int, make):
    torch.manual_seed(seed)
    return make()


NETS = {
    "mlp": ("mlp", lambda s: build_net("mlp", (1, 8, 8), 10, seed=s, hidden=[8])),
    "cnn-batchnorm": ("cnn", lambda s: build_net("cnn", (1, 8, 8), 10, seed=s, channels=[4], batchnorm=True)),
    "cnn-flatten-head": ("cnn", lambda s: _seeded(s, FlattenCNN)),
    "mlp-two-hidden": ("mlp", lambda s: build_net("mlp", (1, 8, 8), 10, seed=s, hidden=[8, 6])),
    "cnn-two-conv": ("cnn", lambda s: build_net("cnn", (1, 8, 8), 10, seed=s, channels=[4, 6])),
}
SHARED = {"mlp-two-hidden", "cnn-two-conv"}  # a weight between two hidden layers


def _arch(name: str) -> dict:
    """The spec of an architecture name of these tests: ``graph-bilinear`` is ``graph`` with ``edge_input: bilinear``."""
    return {"architecture": "graph", "edge_input": "bilinear"} if name == "graph-bilinear" else {"architecture": name}


def _units_gen(key: str, include: list[str] | None = None, normalize: str = "tensor", **spec):
    name, make = NETS[key]
    gen, states = _gen_on(name, [make(s) for s in range(4)], include, normalize, **spec)
    return gen, states, name


def _gen_on(name: str, nets: list[nn.Module], include: list[str] | None = None, normalize: str = "tensor", **spec):
    """A units G.pt (``UNITS`` updated by ``spec``) on the states of ``nets``, of registered net ``name``."""
    states = [n.state_dict() for n in nets]
    params = [k for k, _ in nets[0].named_parameters()]
    names = [k for k in params if include is None or any(k.startswith(p) for p in include)]
    tok = Tokenizer.fit(states, names, token_size=16, parameter_names=params, normalize=normalize)
    gen = GPT(GPTSpec.model_validate({**UNITS, **spec}), tok, states[0], {"name": name, "kwargs": {}})
    return gen, states


def _randomize(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))


@pytest.mark.parametrize("architecture", ["units", "graph"])
@pytest.mark.parametrize("key", list(NETS))
def test_every_value_is_in_a_token_and_padding_in_none(key, architecture):
    gen, states, _ = _units_gen(key, architecture=architecture)
    units = gen.net.units
    held = torch.zeros_like(units.counts)
    for idx in units.unit_indices() + units.edge_indices():
        held.index_add_(0, idx.flatten(), torch.ones(idx.numel()))
    loose = units.loose_index[units.loose_real.bool()]
    held.index_add_(0, loose, torch.ones(len(loose)))
    real = gen.tokenizer.mask.flatten()
    assert (held[real] >= 1).all() and (held[~real] == 0).all()
    shared = (held > 1).any()
    # Only a weight between two hidden layers sits twice, and as edges it sits once.
    assert bool(shared) == (key in SHARED and architecture == "units")
    edges = [tuple(i.shape) for i in units.edge_indices()]
    if architecture == "graph" and key in SHARED:  # (units of the first layer, of the second, values per edge)
        assert edges == ([(8, 6, 1)] if key == "mlp-two-hidden" else [(4, 6, 9)])
    else:
        assert edges == []


@pytest.mark.parametrize("key,architecture,exact", [
    ("mlp", "units", True), ("cnn-batchnorm", "units", True), ("cnn-flatten-head", "units", True),
    ("mlp-two-hidden", "units", False), ("cnn-two-conv", "units", False),
    ("mlp-two-hidden", "graph", True), ("cnn-two-conv", "graph", True), ("cnn-batchnorm", "graph", True),
    ("cnn-two-conv", "graph-bilinear", True)])
def test_equivariant_to_permuting_hidden_units_where_exact(key, architecture, exact):
    gen, states, name = _units_gen(key, **_arch(architecture))
    _randomize(gen.net)
    groups = hidden_groups(name, {k: v.shape for k, v in states[0].items()})
    # Exact: augmentation is redundant and skipped; otherwise it stays as configured (on).
    assert gen.groups == ([] if exact else gen.permutation_groups())
    _assert_equivariant(gen, states, groups, exact)


def _assert_equivariant(gen, states: list, groups, exact: bool) -> None:
    """Permuting the hidden units of a noisy network and its start permutes the model's output alike
    (to 1e-5) exactly when ``exact``; the permutation does move the output."""
    tok = gen.tokenizer
    start = {k: torch.stack([s[k] for s in states[:2]]) for k in tok.names}
    noisy = {k: torch.stack([1.3 * s[k] + 0.1 for s in states[2:]]) for k in tok.names}
    perms = random_permutations(groups, 2, torch.Generator().manual_seed(1))

    def tokens(d: dict) -> torch.Tensor:
        return tok.tokenize_batch({k: v[i] for k, v in d.items()} for i in range(2))

    args = torch.tensor([3, 15]), torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.1])
    with torch.no_grad():
        out = gen.net(tokens(noisy), args[0], tokens(start), *args[1:])
        moved = gen.net(tokens(permute_batch(noisy, groups, perms)), args[0],
                        tokens(permute_batch(start, groups, perms)), *args[1:])
    expected = permute_batch(tok.tensors(out), groups, perms)
    got = tok.tensors(moved)
    worst = max((expected[k] - got[k]).abs().max().item() for k in tok.names)
    assert (worst < 1e-5) == exact, worst
    assert not torch.allclose(tok.tensors(out)[tok.names[0]], expected[tok.names[0]])  # the permutation moved it


@pytest.mark.parametrize("key,architecture", [("mlp", "units"), ("cnn-two-conv", "graph"),
                                              ("cnn-two-conv", "graph-bilinear")])
def test_untrained_units_model_predicts_the_start(key, architecture):
    gen, states, _ = _units_gen(key, **_arch(architecture))
    tok = gen.tokenizer
    start, target = tok.tokenize_batch(states[:2]), tok.tokenize_batch(states[2:])
    with torch.no_grad():
        pred = gen.net(target + torch.randn(target.shape), torch.tensor([3, 17]), start, torch.ones(2), torch.zeros(2))
    assert torch.equal(pred, start)  # zero heads, loose and edge ones included: no update


def test_a_partly_generated_net_uses_the_generated_values_only():
    gen, states, _ = _units_gen("mlp", include=["1."])  # the hidden layer; the output layer comes from the start
    assert gen.tokenizer.names == ["1.weight", "1.bias"]
    assert [tuple(i.shape) for i in gen.net.units.unit_indices()] == [(8, 65)] and gen.net.units.loose_index.numel() == 0
    batch = next(gen.sample(2, {"start": states[1], "start_metric": 1.0, "target_metric": 0.5}, sampler="ddim",
                            steps=2))
    assert batch["1.weight"].shape == (2, 8, 64) and torch.equal(batch["3.bias"][0], states[1]["3.bias"])


def test_refusals_name_the_fix():
    with pytest.raises(GeneratorError, match="normalize: tensor or none.*'element'"):
        _units_gen("mlp", normalize="element")
    state = build_net("vit", (1, 8, 8), 10).state_dict()
    tok = Tokenizer.fit([state], token_size=16)
    with pytest.raises(GeneratorError, match="units' does not know net 'timm:resnet18'.*architecture: chunks"):
        GPT(GPTSpec.model_validate(UNITS), tok, state, {"name": "timm:resnet18"})
    with pytest.raises(ConfigError, match="architecture.*'chunks'.*'units'.*'graph'"):
        parse_config({**tiny_cfg(), "generator": {**UNITS, "architecture": "neurons"}})
    with pytest.raises(ConfigError, match="edge_input 'bilinear'.*architecture 'graph'.*got architecture 'units'"):
        parse_config({**tiny_cfg(), "generator": {**UNITS, "edge_input": "bilinear"}})
    with pytest.raises(ConfigError, match="edge_input.*'sum'.*'bilinear'"):
        parse_config({**tiny_cfg(), "generator": {**UNITS, "architecture": "graph", "edge_input": "product"}})


@pytest.mark.parametrize("key,architecture", [("mlp", "units"), ("mlp-two-hidden", "graph"),
                                              ("mlp-two-hidden", "graph-bilinear")])
def test_learns_an_update_that_treats_units_alike(key, architecture):
    """theta' = 0.5 theta + 0.1 in every entry: an update that commutes with permutations, so the
    units model can learn it from the units' own values, and the graph model from its edges' too
    (within a short fit)."""
    gen, _, name = _units_gen(key, d_model=32, heads=4, steps=150, lr=2e-3, batch_size=8, weight_decay=0.0,
                              diffusion={"timesteps": 100, "prediction": "sample"}, **_arch(architecture))
    starts = [NETS[key][1](10 + s).state_dict() for s in range(8)]
    laters = [{k: 0.5 * v + 0.1 for k, v in s.items()} for s in starts]
    tok = gen.tokenizer
    stacked = {k: torch.stack([s[k] for s in starts + laters]) for k in tok.names}
    theta, target = tok.tokenize_batch(starts), tok.tokenize_batch(laters)
    t = torch.full((8,), 99)  # almost pure noise: the update must come from theta
    noisy = gen.diffusion.train_scheduler.add_noise(target, torch.randn(target.shape, generator=torch.Generator()
                                                                        .manual_seed(0)), t)

    def error(pred: torch.Tensor, where: torch.Tensor) -> float:
        return float(((pred - target) ** 2 * where).sum() / (len(pred) * where.sum()))

    everywhere = tok.mask.float()
    edges = torch.zeros(tok.mask.numel())  # the weight between the two hidden layers, if edges
    for idx in gen.net.units.edge_indices():
        edges[idx.flatten()] = 1
    edges = edges.view_as(everywhere)
    assert bool(edges.any()) == architecture.startswith("graph")
    identity = [error(theta, w) for w in (everywhere, edges) if w.any()]
    gen.fit_pairs(stacked, torch.tensor([1.0] * 8 + [0.2] * 8), [[i, i + 8] for i in range(8)], show_progress=False)
    with torch.no_grad():
        pred = gen.net.eval()(noisy, t, theta, torch.ones(8), torch.full((8,), 0.2))
    fitted = [error(pred, w) for w in (everywhere, edges) if w.any()]
    assert all(f < 0.2 * i for f, i in zip(fitted, identity)), (identity, fitted)


def test_fit_sample_save_load_on_a_trajectory_zoo(trajectory_zoo_dir, tmp_path):
    with Zoo.open(trajectory_zoo_dir) as zoo:
        gen = GENERATORS.get("gpt").from_zoo(GPTSpec.model_validate({**UNITS, "steps": 5}), zoo,
                                              TokenizerSpec(token_size=16))
        stats = gen.fit(zoo, show_progress=False)
        m = zoo.members("train")[0]
        prompt = {"start": zoo.load(m), "start_metric": m.metrics["test_loss"],
                  "target_metric": min(member_metric(x, "test_loss") for x in zoo.members("train"))}
    assert stats["architecture"] == "units" and stats["permuted_layers"] == 0  # exact: no augmentation
    again = load_generator(gen.save(tmp_path / "units"))
    assert again.net.units is not None
    a = next(gen.sample(2, prompt, seed=3, sampler="ddim", steps=3))
    b = next(again.sample(2, prompt, seed=3, sampler="ddim", steps=3))
    assert all(torch.equal(a[k], b[k]) for k in a) and all(torch.isfinite(v).all() for v in a.values())
    net = again.build_net()
    net.load_state_dict({k: v[0] for k, v in a.items()})


@pytest.mark.parametrize("architecture", ["graph", "graph-bilinear"])
def test_graph_model_saves_and_loads_with_its_edges(tmp_path, architecture):
    gen, states, _ = _units_gen("cnn-two-conv", **_arch(architecture))
    _randomize(gen.net)
    again = load_generator(gen.save(tmp_path / "graph"))
    assert [tuple(i.shape) for i in again.net.units.edge_indices()] == [(4, 6, 9)]
    # the products of the two units' projections are there (and loaded) only when asked for
    block = again.net.units.edge_blocks[0][0]
    assert (block.pair_a is not None) == (architecture == "graph-bilinear")
    tok = gen.tokenizer
    x, start = tok.tokenize_batch(states[:2]), tok.tokenize_batch(states[2:])
    args = torch.tensor([3, 15]), start, torch.ones(2), torch.zeros(2)
    with torch.no_grad():
        assert torch.equal(gen.net(x, *args), again.net(x, *args))


def test_vit_unit_tokens_move_with_their_units():
    """The ViT's groups (residual channels, MLP units, heads whose rows sit in three stacked parts of
    one tensor): permuting one group's units permutes the rows of its unit tokens, nothing else."""
    vits = [build_net("vit", (1, 8, 8), 10, seed=s, dim=8, depth=1) for s in range(2)]  # 4 heads of 2
    gen, states = _gen_on("vit", vits)
    tok = gen.tokenizer
    groups = hidden_groups("vit", {k: v.shape for k, v in states[0].items()})
    assert [g.size for g in groups] == [8, 16, 4]
    index = gen.net.units.unit_indices()
    assert [tuple(i.shape[:1]) for i in index] == [(8,), (16,), (4,)]
    flat = tok.tokenize_batch([states[1]]).flatten()
    for g, group in enumerate(groups):
        perms = [torch.arange(x.size) for x in groups]
        perms[g] = torch.arange(group.size).roll(1)
        moved = tok.tokenize_batch([permute_state(states[1], groups, perms)]).flatten()
        torch.testing.assert_close(moved[index[g]], flat[index[g]][perms[g]], atol=1e-6, rtol=0)
        for other in set(range(len(groups))) - {g}:  # other groups' units hold the same values, maybe reordered
            torch.testing.assert_close(moved[index[other]].sort(1).values, flat[index[other]].sort(1).values,
                                       atol=1e-6, rtol=0)


@pytest.mark.parametrize("architecture,exact", [("units", False), ("graph", True)])
def test_a_traced_net_outside_the_package_gets_unit_tokens(monkeypatch, architecture, exact):
    """A net the package does not know (LayerNorm, odd widths 7 and 5): its groups come from tracing
    it (weightgen/nets/symmetry.py), its LayerNorm entries sit in its units' tokens, and the graph
    model is exactly equivariant to permuting them."""
    from weightgen.nets import NETS as REGISTRY

    def make(input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 7), nn.LayerNorm(7), nn.ReLU(), nn.Linear(7, 5),
                             nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, num_classes))

    monkeypatch.setitem(REGISTRY._items, "test-units-layernorm-mlp", make)
    net_build = {"name": "test-units-layernorm-mlp", "kwargs": {}, "input_shape": [1, 8, 8], "num_classes": 10}
    states = [_seeded(s, lambda: make((1, 8, 8), 10)).state_dict() for s in range(4)]
    tok = Tokenizer.fit(states, token_size=16, normalize="tensor")
    gen = GPT(GPTSpec.model_validate({**UNITS, "architecture": architecture}), tok, states[0], net_build)
    groups = gen.net_groups(("test", "off"))
    assert [g.size for g in groups] == [7, 5]
    # a unit's row (64 or 7 values), its bias, LayerNorm weight and bias, and its column of the next layer
    widths = [(7, 64 + 3 + 5), (5, 7 + 3 + 10)] if architecture == "units" else [(7, 64 + 3), (5, 3 + 10)]
    assert [tuple(i.shape) for i in gen.net.units.unit_indices()] == widths
    assert gen.groups == ([] if exact else groups)
    _randomize(gen.net)
    _assert_equivariant(gen, states, groups, exact)
