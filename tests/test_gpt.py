"""G.pt (weightgen/generators/gpt.py, gpt_pairs.py, weightgen/nets/permute.py): the spec and its
removed keys, the identity at init, permutation augmentation (function-preserving, the same for both
checkpoints of a pair), the released code's pair draw and target balancing, fitting on a tiny
trajectory zoo, prompted sampling, save/load, bad prompts, the CLI, and a learning check."""
from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from conftest import TRAJECTORY_ZOO_CFG, build, parse, tiny_cfg
from weightgen.config import ConfigError, GPTSpec, TokenizerSpec, parse_config
from weightgen.generators import GENERATORS, GeneratorError, load_generator
from weightgen.generators.gpt import GPT, member_metric
from weightgen.generators.gpt_pairs import PairSampler, all_pairs, pair_count, training_runs
from weightgen.nets import build_net
from weightgen.nets.permute import PermutationError, hidden_groups, permute_state, random_permutations
from weightgen.tokens import Tokenizer
from weightgen.zoo import Zoo

# A tiny G.pt: it learns little, it exercises every code path in a fraction of a second.
TINY_GPT = {"method": "gpt", "d_model": 16, "layers": 1, "heads": 2, "steps": 3, "batch_size": 4, "ema": None,
            "diffusion": {"timesteps": 20, "prediction": "sample"}}
TOKENS16 = TokenizerSpec(token_size=16)
# Digits MLP (64 -> 8 -> 10), 3 runs (the last held out) x 4 checkpoints from the init to the end.
TRAJECTORY_CFG = TRAJECTORY_ZOO_CFG


def _spec(**overrides) -> GPTSpec:
    return GPTSpec.model_validate({**TINY_GPT, **overrides})


def _toy_states(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"a.weight": torch.randn(4, 6, generator=g), "a.bias": torch.randn(4, generator=g)} for _ in range(n)]


def _standalone(spec: GPTSpec, states: list[dict]) -> GPT:
    """A G.pt over a toy layout (24 + 4 values in tokens of 8), no zoo and no net to permute."""
    tok = Tokenizer.fit(states, token_size=8)
    return GPT(spec.model_copy(update={"permutation_augmentation": False}), tok, states[0], {"name": "toy"})


def _implied_x0(gen: GPT, prediction: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean theta' an x0 or v prediction implies at ``x_t``: x0 = sqrt(abar) x_t - sqrt(1 - abar) v."""
    if gen.spec.diffusion.prediction == "sample":
        return prediction
    a = gen.diffusion.train_scheduler.alphas_cumprod[t].view(-1, 1, 1)
    return a.sqrt() * x_t - (1 - a).sqrt() * prediction


def _randomized(net: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values in every float entry (positive running variances), loaded into ``net``."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            v = 0.5 * torch.randn(v.shape, generator=g)
            v = v.abs() + 0.5 if k.endswith("running_var") else v
        state[k] = v
    net.load_state_dict(state)
    return state


@pytest.fixture(scope="module")
def trajectory_zoo(trajectory_zoo_dir):
    z = Zoo.open(trajectory_zoo_dir)
    yield z
    z.close()


@pytest.fixture(scope="module")
def fitted(trajectory_zoo, tmp_path_factory):
    """(directory, stats) of a tiny G.pt fitted on the trajectory zoo (with augmentation) and saved."""
    gen = GENERATORS.get("gpt").from_zoo(_spec(steps=20, ema=0.9), trajectory_zoo, TOKENS16)
    stats = gen.fit(trajectory_zoo, show_progress=False, seed=0)
    return gen.save(tmp_path_factory.mktemp("generators") / "gpt"), stats


def _prompt(zoo: Zoo, target: float | None = None, **changes) -> dict:
    m = zoo.members("train")[0]
    lo = min(member_metric(x, "test_loss") for x in zoo.members("train"))
    return {"start": zoo.load(m), "start_metric": m.metrics["test_loss"],
            "target_metric": lo if target is None else target, **changes}


# -- the spec ---------------------------------------------------------------------------------------

def test_spec_defaults_and_validation():
    cfg = parse(tiny_cfg(generator={"method": "gpt", "d_model": 32, "heads": 4}))
    assert isinstance(cfg.generator, GPTSpec) and cfg.generator.d_model == 32
    s = GPTSpec()
    assert (s.diffusion.prediction, s.diffusion.timesteps) == ("sample", 1000)
    assert (s.lr, s.weight_decay, s.metric, s.permutation_augmentation, s.balance_targets) == \
        (4e-4, 0.1, "test_loss", True, None)
    # as G.pt's released MNIST config: cosine lr, gradients clipped at 0.75
    assert (s.lr_schedule, s.grad_clip) == ("cosine", 0.75)

    def error(generator: dict) -> str:
        with pytest.raises(ConfigError) as e:
            parse_config(tiny_cfg(generator=generator), "cfg.yaml")
        return str(e.value)

    msg = error({"method": "gpt", "d_modle": 8})
    assert "'d_modle'" in msg and "did you mean 'd_model'" in msg
    for key in ("metric", "permutation_augmentation", "balance_targets", "ema"):
        assert key in msg
    assert "backbone" not in msg  # the allowed keys of the chosen method only
    assert "did you mean 'gpt'" in error({"method": "gtp"})
    assert "divisible by heads" in error({"method": "gpt", "d_model": 10, "heads": 4})
    # the name's form here; whether the zoo records it, when the generator meets the zoo (test_objectives.py)
    assert "test_error" in error({"method": "gpt", "metric": "test-loss"})


@pytest.mark.parametrize("key,value", [
    ("preconditioning", "posterior"), ("scale_augmentation", 1.5), ("canonical_order", True),
    ("condition_dropout", 0.1), ("guidance_scale", 2.0), ("pair_sampling", "uniform_pair"), ("max_gap", 5),
    ("frequencies", 4), ("max_freq_log2", 6.0),
])
def test_a_removed_gpt_key_is_refused_by_name(key, value):
    """A G.pt option that lost is named as removed, with a pointer to the evidence, not as a typo."""
    with pytest.raises(ConfigError, match=rf"'{key}' was removed.*What did not work"):
        parse_config(tiny_cfg(generator={**TINY_GPT, key: value}), "cfg.yaml")


def test_metric_of_a_member(trajectory_zoo):
    m = trajectory_zoo.members("train")[-1]
    assert member_metric(m, "test_loss") == m.metrics["test_loss"]
    assert member_metric(m, "test_error") == pytest.approx(1 - m.metrics["test_accuracy"])
    with pytest.raises(GeneratorError, match="no metric 'return'.*test_loss"):
        member_metric(m, "return")


# -- the identity at init -----------------------------------------------------------------------------

def test_untrained_model_predicts_the_start():
    states = _toy_states(4)
    gen = _standalone(_spec(), states)
    tok = gen.tokenizer
    start, target = tok.tokenize_batch(states[:2]), tok.tokenize_batch(states[2:])
    noisy = target + torch.randn(target.shape)
    with torch.no_grad():
        pred = gen.net(noisy, torch.tensor([3, 17]), start, torch.tensor([2.0, 1.0]), torch.tensor([0.5, 0.1]))
    assert torch.equal(pred, start)  # x0 = theta + zero-initialized heads
    gen.net.head.weight.data.normal_()  # once the heads move, so does the prediction
    assert not torch.allclose(gen.net(noisy, torch.tensor([3, 17]), start, torch.ones(2), torch.zeros(2)), start)


def test_untrained_v_model_gives_the_posterior_mean_around_the_start():
    """v prediction (ours): the zero heads imply theta' = (1 - abar) theta + sqrt(abar) x_t, the
    posterior mean under a unit Gaussian prior on theta: theta at pure noise, the input near the data."""
    states = _toy_states(4)
    gen = _standalone(_spec(diffusion={"timesteps": 1000, "prediction": "v_prediction"}), states)
    start, target = gen.tokenizer.tokenize_batch(states[:2]), gen.tokenizer.tokenize_batch(states[2:])
    t = torch.tensor([999, 5])
    noisy = gen.diffusion.train_scheduler.add_noise(target, torch.randn(target.shape), t)
    with torch.no_grad():
        x0 = _implied_x0(gen, gen.net(noisy, t, start, torch.ones(2), torch.zeros(2)), noisy, t)
    a = gen.diffusion.train_scheduler.alphas_cumprod[t].view(-1, 1, 1)
    torch.testing.assert_close(x0, (1 - a) * start + a.sqrt() * noisy)
    assert (x0[0] - start[0]).abs().max() < 0.02  # pure noise: the start
    assert ((x0[1] - target[1]) ** 2).mean() < 0.01 * ((start[1] - target[1]) ** 2).mean()  # nearly clean: the input


def test_untrained_ddim_returns_the_start_weights():
    states = _toy_states(3)
    gen = _standalone(_spec(diffusion={"timesteps": 1000, "prediction": "sample"}), states)
    batch = next(gen.sample(2, {"start": states[1], "start_metric": 1.0, "target_metric": 0.5}, seed=0,
                            sampler="ddim", steps=10))
    for k, v in states[1].items():
        torch.testing.assert_close(batch[k], v.expand_as(batch[k]), atol=1e-4, rtol=1e-4)


# -- permutation augmentation ----------------------------------------------------------------------------

class FlattenCNN(nn.Module):
    """The library's CNN with the global pool removed: the head reads channels x 4 x 4 positions."""

    def __init__(self, batchnorm: bool):
        super().__init__()
        cnn = build_net("cnn", (1, 8, 8), 10, channels=[3, 5], batchnorm=batchnorm)
        self.features, self.head = cnn.features, nn.Linear(5 * 4 * 4, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


VIT_KWARGS = {"dim": 12, "depth": 2, "heads": 3, "mlp_ratio": 1.5}


@pytest.mark.parametrize("name,make,layers", [
    ("mlp", lambda: build_net("mlp", (1, 8, 8), 10, hidden=[8, 6]), 2),
    ("cnn", lambda: build_net("cnn", (1, 8, 8), 10, channels=[4, 6, 5]), 3),
    ("cnn", lambda: build_net("cnn", (1, 8, 8), 10, channels=[4, 6], batchnorm=True), 2),
    ("cnn", lambda: FlattenCNN(batchnorm=True), 2),
    # the residual stream, then each block's MLP units and its heads
    ("vit", lambda: build_net("vit", (1, 8, 8), 10, **VIT_KWARGS), 5),
], ids=["mlp", "cnn", "cnn-batchnorm", "cnn-flatten-head", "vit"])
def test_a_permuted_network_computes_the_same_function(name, make, layers):
    net = make().eval()  # eval: BatchNorm uses its (permuted) running statistics
    state = _randomized(net)
    groups = hidden_groups(name, {k: v.shape for k, v in state.items()}, VIT_KWARGS if name == "vit" else None)
    assert len(groups) == layers
    perms = [p[0] for p in random_permutations(groups, 1, torch.Generator().manual_seed(2))]
    perms = [p.roll(1) if torch.equal(p, torch.arange(len(p))) else p for p in perms]  # none the identity
    _assert_moved_but_same_function(net, state, groups, permute_state(state, groups, perms))


def _assert_moved_but_same_function(net: nn.Module, state: dict, groups: list, moved: dict) -> None:
    """Every entry a hidden layer indexes differs between ``state`` and ``moved``, and ``net`` computes the same."""
    x = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = net(x)
    for g in groups:
        for axis in g.axes:
            assert not torch.allclose(moved[axis.name], state[axis.name]), axis
    net.load_state_dict(moved)
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)


def test_unsupported_net_is_named():
    state = build_net("vit", (1, 8, 8), 10).state_dict()  # any state: the net's name is what is refused
    with pytest.raises(PermutationError, match="net 'timm:resnet18'.*mlp, cnn, vit"):
        hidden_groups("timm:resnet18", {k: v.shape for k, v in state.items()})
    with pytest.raises(PermutationError, match="width 32.*not a multiple of its 5 heads"):
        hidden_groups("vit", {k: v.shape for k, v in state.items()}, {"heads": 5})
    with pytest.raises(PermutationError, match="vit: no entry 'patch_embed.weight'"):
        hidden_groups("vit", {k: v.shape for k, v in state.items() if not k.startswith("patch_embed")})
    tok = Tokenizer.fit([state], token_size=16)
    net_build = {"name": "timm:resnet18", "input_shape": [1, 8, 8], "num_classes": 10, "kwargs": {}}
    with pytest.raises(GeneratorError, match="net 'timm:resnet18'.*permutation_augmentation: false"):
        GPT(_spec(), tok, state, net_build)
    assert GPT(_spec(permutation_augmentation=False), tok, state, net_build).groups == []


@pytest.mark.parametrize("normalize", ["tensor", "element"])
def test_the_same_permutation_for_both_checkpoints_of_a_pair(normalize):
    nets = [build_net("mlp", (1, 8, 8), 10, seed=s, hidden=[8]) for s in range(3)]
    thetas = [n.state_dict() for n in nets]
    laters = [{k: 2 * v + 1 for k, v in s.items()} for s in thetas]  # theta' = 2 theta + 1, entry by entry
    tok = Tokenizer.fit(thetas + laters, token_size=16, normalize=normalize)
    net_build = {"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "kwargs": {"hidden": [8]}}
    gen = GPT(_spec(), tok, thetas[0], net_build)
    assert len(gen.groups) == 1 and gen.groups[0].size == 8
    stacked = {k: torch.stack([s[k] for s in thetas + laters]) for k in tok.names}
    pairs = torch.tensor([[0, 3], [1, 4], [2, 5], [0, 3]])
    start, target = gen.pair_tokens(stacked, pairs, torch.Generator().manual_seed(0))
    a, b = tok.tensors(start), tok.tensors(target)
    for k in tok.names:
        torch.testing.assert_close(b[k], 2 * a[k] + 1, atol=1e-5, rtol=1e-5)  # the same permutation for both
    assert not torch.equal(a["1.bias"][0], a["1.bias"][3])  # the same pair twice: two permutations
    x = torch.randn(5, 1, 8, 8)
    for i, (s, _) in enumerate(pairs.tolist()):
        net = nets[s]
        expected = net(x)
        assert not torch.allclose(a["1.weight"][i], thetas[s]["1.weight"])  # permuted...
        net.load_state_dict({k: a[k][i] for k in tok.names})
        torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)  # ...and the same network
        net.load_state_dict(thetas[s])


def test_a_layer_partly_outside_the_generated_tensors_is_not_permuted():
    state = build_net("mlp", (1, 8, 8), 10, hidden=[8, 6]).state_dict()
    tok = Tokenizer.fit([state], include=["1.*", "3.*"], token_size=8)  # 5.* (the head) stays fixed
    net_build = {"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "kwargs": {"hidden": [8, 6]}}
    gen = GPT(_spec(), tok, state, net_build)
    assert [g.size for g in gen.groups] == [8]  # the 6 units feed 5.weight, which is not generated


# -- training pairs ----------------------------------------------------------------------------------------

def test_pairs_come_from_one_run_and_move_forward(trajectory_zoo):
    members = trajectory_zoo.members("train")
    assert len({m.run for m in members}) == 2 and len(members) == 8
    runs = training_runs(members)
    pairs = all_pairs(runs)
    assert len(pairs) == pair_count(runs) == 2 * 6  # 4 checkpoints per run: C(4, 2) pairs each
    for i, j in pairs.tolist():
        assert members[i].run == members[j].run and members[j].step > members[i].step
    assert pair_count([list(range(50)), [50, 51]]) == len(all_pairs([list(range(50)), [50, 51]])) == 49 * 50 // 2 + 1


def test_the_pair_draw_makes_every_gap_equally_likely():
    """G.pt's released draw: a run, a gap uniform over 1..n-1, then a start uniform over the n - g
    places it fits, so the initialization -> end pair is as likely as any one-checkpoint step."""
    runs = [list(range(r * 50, r * 50 + 50)) for r in range(3)]  # 3 runs of 50 checkpoints
    n = 60000
    pairs = PairSampler(runs).sample(n, torch.Generator().manual_seed(0))
    assert ((pairs[:, 0] // 50) == (pairs[:, 1] // 50)).all() and (pairs[:, 1] > pairs[:, 0]).all()
    gaps = torch.bincount(pairs[:, 1] - pairs[:, 0], minlength=50)[1:].float() / n
    assert torch.allclose(gaps, torch.full((49,), 1 / 49), atol=0.01)
    for gap in (1, 25):
        starts = pairs[(pairs[:, 1] - pairs[:, 0]) == gap][:, 0] % 50
        assert set(starts.tolist()) == set(range(50 - gap))


def test_policy_probabilities_are_what_the_sampler_draws():
    """The per-pair odds that target balancing starts from: the draw's own (runs of unequal length)."""
    runs = [list(range(0, 6)), list(range(6, 16)), list(range(16, 19))]
    sampler = PairSampler(runs)
    probs = sampler.policy_probabilities(runs)
    pairs = all_pairs(runs)
    assert len(probs) == len(pairs) and abs(float(probs.sum()) - 1) < 1e-9
    n = 200000
    drawn = sampler.sample(n, torch.Generator().manual_seed(0))
    index = {tuple(p): i for i, p in enumerate(pairs.tolist())}
    counts = torch.bincount(torch.tensor([index[tuple(p)] for p in drawn.tolist()]), minlength=len(pairs))
    assert torch.allclose(counts.double() / n, probs, atol=0.004)


def test_balanced_targets_spread_evenly_and_keep_the_policy_within_a_bin():
    """Targets that pile up low (as trained networks do) are drawn equally often per bin; inside a
    bin the pairs keep the draw's own odds."""
    runs = [list(range(r * 20, r * 20 + 20)) for r in range(10)]
    metrics = torch.tensor([0.9 * 0.7 ** (i % 20) for i in range(200)])  # falls fast, then flat near 0
    bins = 4
    sampler = PairSampler(runs, metrics, bins)
    n = 100000
    drawn = sampler.sample(n, torch.Generator().manual_seed(0))
    assert ((drawn[:, 0] // 20) == (drawn[:, 1] // 20)).all() and (drawn[:, 1] > drawn[:, 0]).all()
    targets = metrics[drawn[:, 1]]
    lo, hi = float(metrics[1:20].min()), float(metrics[1:20].max())  # targets are never a run's first checkpoint
    which = ((targets - lo) / (hi - lo) * bins).long().clamp(0, bins - 1)
    share = torch.bincount(which, minlength=bins).float() / n
    assert torch.allclose(share, torch.full((bins,), 1 / bins), atol=0.01), share
    plain = metrics[PairSampler(runs).sample(n, torch.Generator().manual_seed(0))[:, 1]]
    assert float(((plain - lo) / (hi - lo) * bins).long().clamp(0, bins - 1).eq(0).float().mean()) > 0.7
    # within the lowest bin (target at index >= 5 of its run), every pair keeps the draw's own odds
    probs = sampler.policy_probabilities(runs)
    pairs = all_pairs(runs)
    low = metrics[pairs[:, 1]] < lo + (hi - lo) / bins
    expected = probs[low] / probs[low].sum()
    index = {tuple(p): i for i, p in enumerate(pairs[low].tolist())}
    picked = drawn[which == 0]
    counts = torch.bincount(torch.tensor([index[tuple(p)] for p in picked.tolist()]), minlength=len(index))
    assert torch.allclose(counts.double() / len(picked), expected, atol=0.005)


def test_balancing_needs_the_metrics():
    with pytest.raises(ValueError, match="target_metrics"):
        PairSampler([[0, 1, 2]], None, 4)


def test_a_zoo_without_pairs_is_refused():
    states = _toy_states(2)
    gen = _standalone(_spec(), states)
    stacked = {k: torch.stack([s[k] for s in states]) for k in gen.tokenizer.names}
    with pytest.raises(GeneratorError, match="trajectory"):
        gen.fit_pairs(stacked, torch.zeros(2), [], show_progress=False)


# -- fitting, sampling, persistence ------------------------------------------------------------------------

def test_fit_on_a_trajectory_zoo(fitted, trajectory_zoo):
    stats = fitted[1]
    assert math.isfinite(stats["diffusion_loss"]) and stats["num_pairs"] == 12 and stats["permuted_layers"] == 1
    losses = [member_metric(m, "test_loss") for m in trajectory_zoo.members("train")]
    assert stats["metric_range"] == pytest.approx([min(losses), max(losses)])


def test_fit_with_balanced_targets(trajectory_zoo):
    gen = GENERATORS.get("gpt").from_zoo(_spec(steps=2, balance_targets=3), trajectory_zoo, TOKENS16)
    stats = gen.fit(trajectory_zoo, show_progress=False, seed=0)
    assert math.isfinite(stats["diffusion_loss"]) and stats["balance_targets"] == 3
    with pytest.raises(ValueError, match="balance_targets"):
        _spec(balance_targets=1)


def test_sampling_shapes_finite_and_seeded(fitted, trajectory_zoo):
    gen = load_generator(fitted[0])
    assert isinstance(gen, GPT) and gen.ema is not None
    prompt = _prompt(trajectory_zoo)
    batches = list(gen.sample(5, prompt, seed=0, batch_size=3, sampler="ddim", steps=3))
    assert [len(b["1.weight"]) for b in batches] == [3, 2]
    net = gen.build_net()
    for batch in batches:
        assert batch.keys() == prompt["start"].keys()
        for i in range(len(batch["1.weight"])):
            net.load_state_dict({k: v[i] for k, v in batch.items()})  # strict: every key, every shape
            assert all(torch.isfinite(v[i]).all() for v in batch.values())
    again = next(gen.sample(3, prompt, seed=0, sampler="ddim", steps=3))
    assert all(torch.equal(again[k], batches[0][k]) for k in again)  # same seed, same weights
    other = next(gen.sample(3, prompt, seed=1, sampler="ddim", steps=3))
    assert not torch.equal(other["1.weight"], again["1.weight"])
    ddpm = next(gen.sample(2, prompt, seed=0))["1.weight"]  # T = 20 steps
    assert ddpm.shape == (2, 8, 64) and torch.isfinite(ddpm).all()


def test_one_target_per_network(fitted, trajectory_zoo):
    """A list of targets gives one network per target, across batches, each the network a
    single-target prompt gives (at temperature 0 DDIM draws no noise, so seeds do not matter)."""
    gen = load_generator(fitted[0])
    gen.spec.diffusion.temperature = 0.0
    prompt = _prompt(trajectory_zoo)
    targets = [0.5, 1.0, 2.0]
    batches = list(gen.sample(3, {**prompt, "target_metric": targets}, batch_size=2, sampler="ddim", steps=3))
    together = torch.cat([b["1.weight"] for b in batches])
    for i, t in enumerate(targets):
        alone = next(gen.sample(1, {**prompt, "target_metric": t}, seed=7, sampler="ddim", steps=3))["1.weight"][0]
        assert torch.allclose(together[i], alone, atol=1e-5)
    assert not torch.allclose(together[0], together[2])  # the targets reach the networks
    with pytest.raises(GeneratorError, match="3 target metrics, one per network, but 2"):
        next(gen.sample(2, {**prompt, "target_metric": targets}))
    with pytest.raises(GeneratorError, match="empty"):
        next(gen.sample(1, {**prompt, "target_metric": []}))
    with pytest.raises(GeneratorError, match="finite"):
        next(gen.sample(2, {**prompt, "target_metric": [0.5, float("nan")]}))


def test_entries_not_generated_come_from_the_start(trajectory_zoo, tmp_path):
    reference = trajectory_zoo.load(trajectory_zoo.members("train")[0])
    tok = Tokenizer.fit_zoo(trajectory_zoo, include=["1.*"], token_size=16)
    gen = GPT(_spec(), tok, reference, trajectory_zoo.meta("net_build"))
    prompt = _prompt(trajectory_zoo)
    prompt["start"] = trajectory_zoo.load(trajectory_zoo.members("train")[-1])  # another checkpoint
    batch = next(gen.sample(2, prompt, seed=0, sampler="ddim", steps=2))
    for k in ("3.weight", "3.bias"):
        assert torch.equal(batch[k][1], prompt["start"][k]) and not torch.equal(batch[k][1], reference[k])
    info = gen.sample_to_file(tmp_path / "one.safetensors", prompt, seed=0, sampler="ddim", steps=2)
    from safetensors.torch import load_file

    written = load_file(info["path"])
    assert torch.equal(written["3.weight"], prompt["start"]["3.weight"])
    torch.testing.assert_close(written["1.weight"], batch["1.weight"][0])
    assert torch.equal(gen.reference["3.weight"], reference["3.weight"])  # restored afterwards


def test_save_load_round_trip(fitted, trajectory_zoo, tmp_path):
    gen = load_generator(fitted[0])
    again = load_generator(gen.save(tmp_path / "again"))
    assert again.metric_range == gen.metric_range == tuple(fitted[1]["metric_range"])
    assert [g.size for g in again.groups] == [8]
    prompt = _prompt(trajectory_zoo)
    for sampler, steps in (("ddim", 3), ("ddpm", None)):
        a = next(gen.sample(3, prompt, seed=7, sampler=sampler, steps=steps))
        b = next(again.sample(3, prompt, seed=7, sampler=sampler, steps=steps))
        assert all(torch.equal(a[k], b[k]) for k in a)


# G.pt keys the library no longer has, at the values that meant "off" (as in a generator.json saved before).
REMOVED_AT_DEFAULT = {"preconditioning": "residual", "scale_augmentation": None, "canonical_order": False,
                      "condition_dropout": 0.0, "guidance_scale": 1.0, "pair_sampling": "uniform_gap",
                      "max_gap": None, "frequencies": 32, "max_freq_log2": 8.0}


def test_a_generator_saved_with_removed_keys_at_their_defaults_loads(fitted, trajectory_zoo, tmp_path):
    """A saved spec that holds a removed key at its old default made the generator the library makes now:
    it loads and samples the same networks. Any other value cannot be rebuilt and is refused by name."""
    import json
    import shutil

    d = tmp_path / "saved"
    shutil.copytree(fitted[0], d)
    meta = json.loads((d / "generator.json").read_text())
    (d / "generator.json").write_text(json.dumps({**meta, "spec": {**meta["spec"], **REMOVED_AT_DEFAULT}}))
    prompt = _prompt(trajectory_zoo)
    a = next(load_generator(fitted[0]).sample(2, prompt, seed=3, sampler="ddim", steps=3))
    b = next(load_generator(d).sample(2, prompt, seed=3, sampler="ddim", steps=3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    (d / "generator.json").write_text(json.dumps({**meta, "spec": {**meta["spec"], "preconditioning": "posterior"}}))
    with pytest.raises(GeneratorError, match="'preconditioning' is 'posterior'.*was removed"):
        load_generator(d)


# -- bad prompts ----------------------------------------------------------------------------------------

def test_bad_conditions_are_refused(fitted, trajectory_zoo, tmp_path):
    gen = load_generator(fitted[0])
    with pytest.raises(GeneratorError, match="prompt.*'start'.*'start_metric'.*'target_metric'"):
        next(gen.sample(1, None))
    with pytest.raises(GeneratorError, match="lacks 'start_metric', 'target_metric'"):
        next(gen.sample(1, {"start": _prompt(trajectory_zoo)["start"]}))
    with pytest.raises(GeneratorError, match="unknown key 'target'"):
        next(gen.sample(1, {**_prompt(trajectory_zoo), "target": 0.5}))
    with pytest.raises(GeneratorError, match="'target_metric' must be a number"):
        next(gen.sample(1, _prompt(trajectory_zoo, target_metric="low")))
    other = tmp_path / "mlp12"
    build(tiny_cfg(net={"name": "mlp", "hidden": [12]}, zoo={"mode": "seeds", "runs": 1, "checkpoints": 1}), other)
    with Zoo.open(other) as z:
        wrong = z.load(z.members("train")[0])
    with pytest.raises(GeneratorError, match=r"start checkpoint.*layer '1\.weight'.*\(8, 64\).*\(12, 64\)"):
        next(gen.sample(1, _prompt(trajectory_zoo, start=wrong)))
    only_generated = {k: wrong[k] for k in gen.tokenizer.names}
    with pytest.raises(GeneratorError, match=r"layer '1\.weight'.*\(8, 64\).*\(12, 64\)"):
        next(gen.sample(1, _prompt(trajectory_zoo, start=only_generated)))


def test_a_target_outside_the_training_range_warns(fitted, trajectory_zoo, caplog):
    gen = load_generator(fitted[0])
    lo, hi = gen.metric_range
    with caplog.at_level(logging.WARNING, logger="weightgen.generators.gpt"):
        next(gen.sample(1, _prompt(trajectory_zoo, target=(lo + hi) / 2), sampler="ddim", steps=1))
        assert not caplog.records
        batch = next(gen.sample(1, _prompt(trajectory_zoo, target=lo / 10), sampler="ddim", steps=1))
    assert torch.isfinite(batch["1.weight"]).all()  # a warning, not an error
    (record,) = caplog.records
    assert "outside the range" in record.getMessage() and f"{lo:.4g}" in record.getMessage()
    assert f"{hi:.4g}" in record.getMessage()


def test_weightgen_run_asks_for_a_prompt(tmp_path):
    from weightgen.pipeline import run_experiment

    cfg = parse(tiny_cfg(zoo=TRAJECTORY_CFG["zoo"], generator=TINY_GPT))
    with pytest.raises(GeneratorError, match="cannot sample generator 'gpt'.*prompt"):
        run_experiment(cfg, tmp_path / "zoo", tmp_path / "run", show_progress=False)
    assert not (tmp_path / "zoo").exists()  # refused before anything was built


# -- learning ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", ["sample", "v_prediction"])
def test_learns_to_move_toward_the_later_checkpoint(prediction):
    """Toy runs where theta' = theta + a fixed update: after a short fit the x0 prediction from a
    noisy theta' is much closer to theta' than the untrained identity (which predicts theta)."""
    starts = _toy_states(8, seed=0)
    delta = _toy_states(1, seed=1)[0]
    laters = [{k: v + delta[k] for k, v in s.items()} for s in starts]
    gen = _standalone(_spec(d_model=32, heads=4, steps=150, lr=2e-3, batch_size=8, weight_decay=0.0,
                            diffusion={"timesteps": 100, "prediction": prediction}), starts + laters)
    tok = gen.tokenizer
    stacked = {k: torch.stack([s[k] for s in starts + laters]) for k in tok.names}
    metrics = torch.tensor([1.0] * 8 + [0.2] * 8)
    pairs = [[i, i + 8] for i in range(8)]  # eight two-checkpoint runs
    theta, target = tok.tokenize_batch(starts), tok.tokenize_batch(laters)
    mask = tok.mask

    def error(pred: torch.Tensor) -> float:
        return (((pred - target) ** 2) * mask).sum().item() / (len(pred) * mask.sum().item())

    t = torch.full((8,), 99)  # almost pure noise: the update must come from theta and the metrics
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    noisy = gen.diffusion.train_scheduler.add_noise(target, noise, t)
    identity = error(theta)
    gen.fit_pairs(stacked, metrics, pairs, show_progress=False)
    with torch.no_grad():
        pred = gen.net.eval()(noisy, t, theta, torch.ones(8), torch.full((8,), 0.2))
        fitted = error(_implied_x0(gen, pred, noisy, t))
    assert fitted < 0.2 * identity, (identity, fitted)


# -- the CLI: weightgen sample GENERATOR --start ckpt --start-metric x --target-metric y ------------
def test_cli_prompt_writes_networks_from_the_start(fitted, trajectory_zoo, tmp_path):
    import json

    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    from weightgen.cli import app

    directory, _ = fitted
    first = trajectory_zoo.members("train")[0]
    save_file(trajectory_zoo.load(first), str(tmp_path / "start.safetensors"))
    runner = CliRunner()
    res = runner.invoke(app, ["sample", str(directory), "-o", str(tmp_path / "s"), "-n", "2", "--start",
                              str(tmp_path / "start.safetensors"), "--start-metric", "2.3", "--target-metric", "0.5"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert meta["condition"]["target_metric"] == 0.5 and meta["condition"]["start"].startswith("state_dict of")
    gen = load_generator(directory)
    expected = next(gen.sample(2, {"start": trajectory_zoo.load(first), "start_metric": 2.3, "target_metric": 0.5}))
    got = load_file(str(tmp_path / "s" / "sample_0001.safetensors"))
    assert all(torch.equal(got[k], expected[k][1]) for k in got)


@pytest.mark.parametrize("args,match", [
    (["--start-metric", "2.3", "--target-metric", "0.5"], "missing --start"),
    (["--start", "nope.safetensors", "--start-metric", "2.3", "--target-metric", "0.5"], "no such checkpoint"),
    (["--start", "bad.safetensors", "--start-metric", "2.3", "--target-metric", "0.5"], "not a readable safetensors"),
    ([], "samples from a prompt: give --start"),
])
def test_cli_bad_prompt_is_named(fitted, tmp_path, args, match, monkeypatch):
    from typer.testing import CliRunner

    from weightgen.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    res = CliRunner().invoke(app, ["sample", str(fitted[0]), "-o", str(tmp_path / "x"), "-n", "1", *args])
    assert res.exit_code != 0 and match in " ".join(res.output.split()), res.output
