"""RPG (weightgen/generators/rpg.py, weightgen/diffusion/token_unet.py): every backbone x recurrent
input, the 2D position embedding, permutation states, the Mamba scans, the masked loss, fitting on a
tiny zoo, chunked sampling (same result, bounded memory), DDPM/DDIM, save/load (including generators
saved with keys the library no longer has), a learning check, bad input, and the config's generator union."""
from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from conftest import build, parse, tiny_cfg
from weightgen.config import ConfigError, RPGSpec, TokenizerSpec, parse_config
from weightgen.diffusion.token_unet import TokenUNet1d
from weightgen.generators import GENERATORS, GeneratorError, load_generator
from weightgen.generators import rpg as rpg_mod
from weightgen.generators.mamba_scan import SequentialSelectiveScan, use_scan
from weightgen.generators.rpg import RPG, Backbone, RPGNet, distinct_rows
from weightgen.tokens import Tokenizer, TokenizerError
from weightgen.zoo import Zoo, ZooWriter

# A tiny RPG: it learns little, it exercises every code path in a fraction of a second.
TINY_RPG = {"method": "rpg", "d_model": 16, "layers": 1, "unet_channels": [4, 8], "kernel_size": 3, "steps": 3,
            "batch_size": 2, "tokens_per_step": 5, "sample_chunk": 1000,
            "diffusion": {"timesteps": 20}}
TOKENS16 = TokenizerSpec(token_size=16)


def _spec(**overrides) -> RPGSpec:
    return RPGSpec.model_validate({**TINY_RPG, **overrides})


def _states(n: int = 3, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"a.weight": torch.randn(5, 7, generator=g), "a.bias": torch.randn(5, generator=g),
             "b.weight": torch.randn(3, 5, generator=g)} for _ in range(n)]


def _standalone(spec: RPGSpec, token_size: int = 8, runs=(0, 1)) -> tuple[RPG, Tokenizer, list[dict]]:
    """An RPG over a synthetic 3-tensor layout (35 + 5 + 15 values), no zoo needed."""
    states = _states()
    tok = Tokenizer.fit(states, token_size=token_size)
    return RPG(spec, tok, states[0], {"name": "none"}, runs=list(runs)), tok, states


def _jitter(gen: RPG, scale: float = 0.1) -> None:
    """Random weights everywhere (the U-Net's output starts at zero, which would hide bugs)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in gen.net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.fixture
def zoo(seeds_zoo):
    z = Zoo.open(seeds_zoo)
    yield z
    z.close()


# -- shapes, for every variant --------------------------------------------------------------------

@pytest.mark.parametrize("backbone,recurrent_input", list(itertools.product(
    ["mamba", "lstm", "transformer", "none"], ["positions", "tokens"])))
def test_every_variant_trains_and_samples(backbone, recurrent_input):
    gen, tok, states = _standalone(_spec(backbone=backbone, recurrent_input=recurrent_input))
    assert tok.num_tokens == 5 + 1 + 2 and tok.width == 8
    x = tok.tokenize_batch(states)
    proto = gen.net.prototypes(torch.tensor([0, 1, 1]), x)
    assert proto.shape == (3, tok.num_tokens, 16)
    seen = []
    hook = gen.net.denoiser.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
    loss = gen.loss(x, torch.tensor([0, 1, 1]), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and seen == [(3 * 5, 1, 8)]  # tokens_per_step of each checkpoint
    loss.backward()
    assert all(p.grad is not None for p in gen.net.parameters())  # every part is trained
    hook.remove()
    out = gen.sample_tokens(2, None, torch.Generator().manual_seed(0), "ddim", 2)
    assert out.shape == (2, tok.num_tokens, 8) and out.device.type == "cpu" and torch.isfinite(out).all()


def test_token_unet_shapes_and_zero_start():
    for width, channels in [(8, (4, 8)), (13, (4, 8, 16)), (1, (2, 2, 2)), (64, (32, 64, 128))]:
        net = TokenUNet1d(width, 16, channels, kernel=5).eval()  # eval: BatchNorm as at sampling
        x, t, c = torch.randn(6, 1, width), torch.randint(0, 1000, (6,)), torch.randn(6, 16)
        assert torch.equal(net(x, t, c), torch.zeros(6, 1, width))  # output layer starts at zero
        torch.nn.init.normal_(net.out.conv.weight)
        y = net(x, t, c)
        assert y.shape == (6, 1, width) and torch.isfinite(y).all()
        # each token is denoised on its own: a token's output does not depend on its batch-mates
        torch.testing.assert_close(net(x[:2], t[:2], c[:2]), y[:2], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(net(x, t, torch.randn(6, 16)), y)  # the prototype matters


@pytest.mark.parametrize("backbone", ["mamba", "lstm", "transformer"])
def test_tokens_mode_is_causal_and_steps_match_the_parallel_pass(backbone):
    gen, tok, states = _standalone(_spec(backbone=backbone, recurrent_input="tokens"))
    _jitter(gen)
    x = tok.tokenize_batch(states)
    s = torch.tensor([0, 1, 1])
    with torch.no_grad():
        base = gen.net.prototypes(s, x)
        changed = x.clone()
        changed[:, 3] += 1.0
        after = gen.net.prototypes(s, changed)
        # token 3's values reach token 4 onwards, never tokens 0..3
        assert torch.equal(after[:, :4], base[:, :4]) and not torch.allclose(after[:, 4], base[:, 4])
        bb, state, steps = gen.net.backbone, gen.net.backbone.begin(3, torch.device("cpu")), []
        prev = torch.zeros(3, tok.width)
        for t in range(tok.num_tokens):
            y, state = bb.step(gen.net.step_input(s, t, prev), state)
            steps.append(y)
            prev = x[:, t]
    torch.testing.assert_close(torch.stack(steps, 1), base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["mamba", "lstm", "transformer"])
@pytest.mark.parametrize("condition", ["none", "metric"])
def test_rows_sharing_state_and_condition_share_one_recurrent_pass(backbone, condition):
    """Prototypes (and their gradients) computed once per distinct (state, condition) row equal
    those of one recurrent pass per row."""
    extra = {"condition": condition, "metric": "test_loss"} if condition == "metric" else {}
    gen, tok, _ = _standalone(_spec(backbone=backbone, **extra))
    _jitter(gen)
    net = gen.net
    states = torch.tensor([0, 1, 0, 0, 1, 0])
    conditions = torch.tensor([0.5, 0.5, 0.5, 0.7, 0.5, 0.5]) if condition == "metric" else None
    weights = torch.randn(len(states), tok.num_tokens, net.pos.shape[1], generator=torch.Generator().manual_seed(2))

    def run(prototypes):
        net.zero_grad()
        out = prototypes()
        (out * weights).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    shared, shared_grads = run(lambda: net.prototypes(states, None, conditions))
    each, each_grads = run(lambda: net.backbone(net.inputs(states, None, conditions)))
    torch.testing.assert_close(shared, each, atol=1e-5, rtol=1e-5)
    assert shared_grads.keys() == each_grads.keys() and "states.weight" in shared_grads
    for name in each_grads:
        torch.testing.assert_close(shared_grads[name], each_grads[name], atol=1e-4, rtol=1e-4, msg=name)
    first, inverse = distinct_rows(states, conditions)
    assert len(first) == (3 if condition == "metric" else 2)  # (0, .5) (1, .5) (0, .7) | 0, 1
    assert torch.equal(states[first][inverse], states)


# -- the Mamba scans, the position embedding, permutation states ------------------------------------

def test_sequential_scan_is_the_recurrence_and_its_gradient_is_exact():
    """The hand-written backward of the token-by-token scan against autograd's numerical
    gradient (double precision), and its output against the recurrence written out."""
    g = torch.Generator().manual_seed(0)
    x, delta = torch.randn(2, 9, 5, generator=g, dtype=torch.double), torch.rand(2, 9, 5, generator=g, dtype=torch.double)
    A = -torch.rand(5, 3, generator=g, dtype=torch.double)
    B, C = torch.randn(2, 9, 3, generator=g, dtype=torch.double), torch.randn(2, 9, 3, generator=g, dtype=torch.double)
    h, want = torch.zeros(2, 5, 3, dtype=torch.double), []
    for t in range(9):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        want.append((h * C[:, t, None, :]).sum(-1))
    torch.testing.assert_close(SequentialSelectiveScan.apply(x, delta, A, B, C), torch.stack(want, 1))
    inputs = [v.clone().requires_grad_() for v in (x, delta, A, B, C)]
    assert torch.autograd.gradcheck(SequentialSelectiveScan.apply, inputs)
    with torch.no_grad():  # sampling keeps no states for a backward, and gets the same output
        torch.testing.assert_close(SequentialSelectiveScan.apply(*inputs), torch.stack(want, 1))


@pytest.mark.parametrize("scan", ["sequential", "parallel"])
def test_both_mamba_scans_compute_mambapys_recurrence(scan):
    """Either scan gives mambapy's own outputs and gradients."""
    def run(backbone):
        x = torch.randn(3, 37, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y = backbone(x)
        y.square().sum().backward()
        return y.detach(), [x.grad, *(p.grad for p in backbone.parameters())]

    torch.manual_seed(0)
    ours = Backbone("mamba", 16, 2, 4)
    use_scan(ours.net, scan)
    mambapys = Backbone("mamba", 16, 2, 4)
    mambapys.load_state_dict(ours.state_dict())
    for layer in mambapys.net.layers:
        del layer.mixer.selective_scan  # back to mambapy's own method
    (y0, g0), (y1, g1) = run(mambapys), run(ours)
    assert torch.allclose(y0, y1, atol=1e-5)
    for want_grad, got in zip(g0, g1):
        assert torch.allclose(want_grad, got, atol=1e-4, rtol=1e-4)


def test_the_scan_follows_the_device(monkeypatch):
    """Without a scan named, a Mamba backbone scans token by token on a CPU (parallel on a GPU);
    a scan named is checked."""
    calls = []
    apply = SequentialSelectiveScan.apply
    monkeypatch.setattr(SequentialSelectiveScan, "apply", lambda *a: (calls.append(1), apply(*a))[1])
    Backbone("mamba", 16, 2, 4)(torch.randn(2, 5, 16))
    assert len(calls) == 2  # one per layer
    with pytest.raises(ValueError, match="scan must be one of parallel, sequential"):
        use_scan(Backbone("mamba", 16, 1, 4).net, "fast")


@pytest.mark.parametrize("precision,trained_in", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_denoiser_precision_sets_the_training_convs_and_leaves_sampling_float32(precision, trained_in):
    gen, tok, states = _standalone(_spec(denoiser_precision=precision))
    _jitter(gen)
    seen = []
    hook = gen.net.denoiser.out.conv.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    x = tok.tokenize_batch(states)
    draw = lambda: (torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))  # tokens, noise
    loss = gen.loss(x, torch.tensor([0, 1, 1]), *draw())
    assert seen == [trained_in] and loss.dtype == torch.float32 and torch.isfinite(loss)
    # the same model and draws at float32: the same loss to bfloat16 rounding (exactly, at float32)
    spec, gen.spec = gen.spec, _spec()
    full = gen.loss(x, torch.tensor([0, 1, 1]), *draw())
    gen.spec = spec
    assert torch.allclose(loss, full, rtol=0.02) and (loss == full) == (precision == "float32")
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in gen.net.parameters())  # float32 weights and optimizer
    seen.clear()
    out = gen.sample_tokens(2, None, torch.Generator().manual_seed(0), "ddim", 2)
    assert set(seen) == {torch.float32} and out.dtype == torch.float32  # sampled at full precision
    hook.remove()


def test_denoiser_precision_is_checked_and_named_in_the_error():
    with pytest.raises(ConfigError, match="denoiser_precision") as e:
        parse_config(tiny_cfg(generator={**TINY_RPG, "denoiser_precision": "float16"}))
    assert "'float32'" in str(e.value) and "'bfloat16'" in str(e.value)


def test_2d_positions_split_layer_and_index():
    gen, tok, _ = _standalone(_spec(d_model=32))
    pe, pos = gen.net.pos, tok.positions
    first, second = pe[:, :16], pe[:, 16:]
    for i, j in itertools.combinations(range(tok.num_tokens), 2):
        same_layer, same_index = pos[i, 0] == pos[j, 0], pos[i, 1] == pos[j, 1]
        assert torch.equal(first[i], first[j]) == bool(same_layer), (i, j)
        assert torch.equal(second[i], second[j]) == bool(same_index), (i, j)
    # sinusoids of the integer positions (cos | sin halves, as timestep embeddings)
    torch.testing.assert_close(first[:, 0], torch.cos(pos[:, 0].float()))
    torch.testing.assert_close(second[:, 8], torch.sin(pos[:, 1].float()))
    assert "pos" not in gen.net.state_dict()  # a fixed table: rebuilt, never saved


def test_one_permutation_state_per_run(zoo):
    gen = RPG.from_zoo(_spec(), zoo, TOKENS16)
    members = zoo.members("train")
    runs = sorted({m.run for m in members})
    assert len(runs) == 2 and len(members) == 4  # the session zoo: 2 training runs x 2 checkpoints
    assert gen.runs == runs and gen.net.states.num_embeddings == len(runs)
    idx = gen.state_index(members)
    for a, b in itertools.combinations(range(len(members)), 2):
        assert (idx[a] == idx[b]) == (members[a].run == members[b].run)
    # a member of a run the generator was not fitted on (a held-out run) has no state: named, and
    # the known runs summarized rather than listed in full (a tasks zoo has ~1000)
    stranger = dataclasses.replace(members[0], run=999)
    with pytest.raises(GeneratorError, match=r"run 999 has no permutation state.*knows runs \[0, 1\]"):
        gen.state_index([stranger])
    gen.runs = list(range(40))
    with pytest.raises(GeneratorError, match=r"knows 40 runs \(0, 1, 2, 3, 4, \.\.\., 39\)"):
        gen.state_index([stranger])
    gen.runs = runs
    _jitter(gen)
    inputs = gen.net.inputs(idx)
    for a, b in itertools.combinations(range(len(members)), 2):
        assert torch.equal(inputs[a], inputs[b]) == (members[a].run == members[b].run)
    # sampling draws one learned state per sample, at random
    drawn = []
    original = gen.net.prototypes
    gen.net.prototypes = lambda states, tokens=None, conditions=None: (drawn.append(states.clone()),
                                                                        original(states, tokens, conditions))[1]
    gen.sample_tokens(12, None, torch.Generator().manual_seed(0), "ddim", 1)
    assert set(drawn[0].tolist()) == {0, 1}
    without = RPG.from_zoo(_spec(permutation_state=False), zoo, TOKENS16)
    assert without.net.states is None
    assert not any("states" in k for k in without.net.state_dict())


def test_loss_ignores_padding():
    gen, tok, states = _standalone(_spec(tokens_per_step=8))  # 35 + 5 + 15 values in tokens of 8
    assert (~tok.mask).sum() == 8 * 8 - 55
    _jitter(gen)
    x, s = tok.tokenize_batch(states), torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        table = gen.net.prototypes(s[:1])[0]  # (T, D): which token a denoised row is, from its prototype

    def loss_with(where: str | None) -> float:
        def add(module, args, out):
            token = torch.cdist(args[2], table).argmin(1)
            hit = ~tok.mask[token] if where == "padding" else tok.mask[token]
            return out + 1e3 * hit[:, None, :]

        hook = gen.net.denoiser.register_forward_hook(add) if where else None
        try:
            with torch.no_grad():
                return gen.loss(x, s, torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)).item()
        finally:
            if hook is not None:
                hook.remove()

    clean = loss_with(None)
    assert loss_with("padding") == clean  # an error on padding costs nothing
    assert loss_with("real") > clean + 1e5  # the same error on real values does


# -- fitting, sampling, persistence ---------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted(seeds_zoo, tmp_path_factory):
    """(directory, stats) of a tiny RPG fitted on the session seeds zoo and saved."""
    z = Zoo.open(seeds_zoo)
    try:
        gen = GENERATORS.get("rpg").from_zoo(_spec(steps=20, ema=0.9), z, TOKENS16)
        stats = gen.fit(z, show_progress=False, seed=0)
        return gen.save(tmp_path_factory.mktemp("generators") / "rpg"), stats
    finally:
        z.close()


def test_fit_and_sample_full_state_dicts(fitted, zoo):
    gen = load_generator(fitted[0])
    stats = fitted[1]
    assert isinstance(gen, RPG) and math.isfinite(stats["diffusion_loss"])
    assert stats["num_train"] == 4 and stats["num_states"] == 2 and stats["num_tokens"] == 32 + 1 + 5 + 1
    batches = list(gen.sample(5, seed=0, batch_size=3, sampler="ddim", steps=3))
    assert [len(b["1.weight"]) for b in batches] == [3, 2]
    ref = zoo.load(zoo.members("train")[0])
    net = gen.build_net()
    for batch in batches:
        assert batch.keys() == ref.keys()
        for i in range(len(batch["1.weight"])):
            net.load_state_dict({k: v[i] for k, v in batch.items()})  # strict: every key, every shape
            assert all(torch.isfinite(v[i]).all() for v in batch.values())
    with pytest.raises(GeneratorError, match="condition=None"):
        next(gen.sample(1, condition={"code": "0101010101"}))


def test_ddpm_and_ddim(fitted):
    gen = load_generator(fitted[0])
    ddpm = next(gen.sample(2, seed=0, sampler="ddpm"))["1.weight"]  # T = 20 steps
    ddim = next(gen.sample(2, seed=0, sampler="ddim", steps=4))["1.weight"]
    assert ddpm.shape == ddim.shape == (2, 8, 64)
    assert torch.isfinite(ddpm).all() and torch.isfinite(ddim).all() and not torch.allclose(ddpm, ddim)
    again = next(gen.sample(2, seed=0, sampler="ddpm"))["1.weight"]
    assert torch.equal(ddpm, again)  # same seed, same weights
    assert not torch.equal(ddpm, next(gen.sample(2, seed=1, sampler="ddpm"))["1.weight"])


def test_save_load_round_trip_is_bit_identical(fitted, tmp_path):
    gen = load_generator(fitted[0])
    assert gen.ema is not None and gen.runs == load_generator(fitted[0]).runs
    again = load_generator(gen.save(tmp_path / "again"))
    for sampler, steps in (("ddim", 3), ("ddpm", None)):
        a = next(gen.sample(3, seed=7, sampler=sampler, steps=steps))
        b = next(again.sample(3, seed=7, sampler=sampler, steps=steps))
        assert all(torch.equal(a[k], b[k]) for k in a)


# Keys of RPGSpec and DiffusionSpec the library no longer has, at the values that meant "off".
REMOVED_AT_DEFAULT = {"teacher_noise": 0.0, "state_mix": 0.0, "condition_dropout": 0.0, "guidance_scale": 1.0,
                      "position": "2d", "mamba_scan": "auto"}
REMOVED_DIFFUSION_AT_DEFAULT = {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}


def _saved_with(fitted, tmp_path, extra: dict, diffusion: dict):
    """A copy of the fitted generator whose generator.json also holds ``extra`` spec keys."""
    import json
    import shutil

    d = tmp_path / "saved"
    shutil.copytree(fitted[0], d)
    meta = json.loads((d / "generator.json").read_text())
    meta["spec"].update(extra)
    meta["spec"]["diffusion"].update(diffusion)
    (d / "generator.json").write_text(json.dumps(meta))
    return d


def test_a_generator_saved_with_removed_keys_at_their_defaults_loads(fitted, tmp_path):
    gen = load_generator(_saved_with(fitted, tmp_path, REMOVED_AT_DEFAULT, REMOVED_DIFFUSION_AT_DEFAULT))
    a = next(gen.sample(2, seed=3, sampler="ddim", steps=3))
    b = next(load_generator(fitted[0]).sample(2, seed=3, sampler="ddim", steps=3))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra,diffusion,key", [
    ({"teacher_noise": 0.2}, {}, "teacher_noise"),
    ({"state_mix": 0.5}, {}, "state_mix"),
    ({"position": "learned"}, {}, "position"),
    ({}, {"beta_schedule": "squaredcos_cap_v2"}, "diffusion.beta_schedule"),
])
def test_a_generator_saved_with_a_removed_option_on_is_refused_naming_the_key(fitted, tmp_path, extra, diffusion, key):
    with pytest.raises(GeneratorError, match=rf"generator.json: spec: '{key}' is .*was removed.*What did not work"):
        load_generator(_saved_with(fitted, tmp_path, extra, diffusion))


def test_the_net_is_built_once_at_the_zoos_sizes_and_fit_on_that_zoo_only(zoo, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(rpg_mod, "RPGNet", lambda *a: built.append(a) or RPGNet(*a))
    gen = RPG.from_zoo(_spec(steps=1), zoo, TOKENS16)
    assert len(built) == 1 and built[0][3] == 2  # two training runs, two permutation states
    net = gen.net
    gen.fit(zoo, show_progress=False)
    assert gen.net is net and len(built) == 1
    three = tmp_path / "three"
    build(tiny_cfg(zoo={"mode": "seeds", "runs": 3, "checkpoints": 1}), three)
    with Zoo.open(three) as other, pytest.raises(GeneratorError, match=r"states for runs \[0, 1\], .*three has "
                                                                     r"training runs \[0, 1, 2\]"):
        gen.fit(other, show_progress=False)


@pytest.mark.parametrize("recurrent_input", ["positions", "tokens"])
def test_chunked_sampling_same_result_bounded_memory(recurrent_input):
    gen, tok, _ = _standalone(_spec(recurrent_input=recurrent_input, sample_chunk=3))
    _jitter(gen)
    sizes = []
    gen.net.denoiser.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0]))
    for sampler, steps in (("ddpm", None), ("ddim", 4)):
        sizes.clear()
        small = gen.sample_tokens(4, None, torch.Generator().manual_seed(3), sampler, steps)
        assert sizes and max(sizes) <= 3  # never more than one chunk of tokens in the denoiser
        gen.spec.sample_chunk = 1000
        sizes.clear()
        large = gen.sample_tokens(4, None, torch.Generator().manual_seed(3), sampler, steps)
        gen.spec.sample_chunk = 3
        assert max(sizes) == (4 * tok.num_tokens if recurrent_input == "positions" else 4)
        # Equal up to float rounding: matrix products may round differently for other batch sizes.
        torch.testing.assert_close(small, large, atol=1e-5, rtol=1e-5)
        assert small.abs().mean() > 0.1


@pytest.fixture(scope="module")
def same_state_zoo(tmp_path_factory):
    """Three runs whose single checkpoints are one and the same state_dict."""
    path = tmp_path_factory.mktemp("zoos") / "same"
    build(tiny_cfg(zoo={"mode": "seeds", "runs": 1, "checkpoints": 1}), path)
    z = Zoo.open(path)
    state = z.load(z.members("train")[0])
    z.close()
    writer = ZooWriter(path)
    try:
        for run in (1, 2):
            writer.begin_run(run, run, "digits", {}, "train")
            writer.add_checkpoint(run, 0, 17, state, {})
            writer.finish_run(run, 0.0)
    finally:
        writer.close()
    return path, state


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_learns_a_single_state(same_state_zoo, prediction):
    path, state = same_state_zoo
    z = Zoo.open(path)
    try:
        spec = _spec(d_model=32, unet_channels=[16, 32], steps=1000, lr=1e-2, batch_size=3, tokens_per_step=39,
                     diffusion={"timesteps": 1000, "prediction": prediction})
        gen = RPG.from_zoo(spec, z, TOKENS16)
        assert len(gen.runs) == 3
        target = gen.tokenizer.tokenize(state)

        def error() -> float:
            out = gen.sample_tokens(3, None, torch.Generator().manual_seed(0), "ddim", 20)
            return ((out - target) ** 2 * gen.tokenizer.mask).sum().item() / (3 * gen.tokenizer.mask.sum().item())

        before = error()
        gen.fit(z, show_progress=False)
        after = error()
    finally:
        z.close()
    # Tokens are standardized per tensor: always answering the mean (0) scores ~1, and 0.2 is a
    # fifth of the values' variance. The untrained generator is worse than the mean (its zero
    # output means x0 = x_t / sqrt(abar) for epsilon, x0 = sqrt(abar) x_t for v). The bound and
    # the 1,000 steps leave room for the fit's chaos across fit seeds and CPUs.
    assert before > 1 and after < 0.2, (before, after)


# -- bad input ------------------------------------------------------------------------------------

def test_other_architecture_is_refused_with_layer_and_shapes(fitted, tmp_path):
    other = tmp_path / "mlp12"
    build(tiny_cfg(net={"name": "mlp", "hidden": [12]}, zoo={"mode": "seeds", "runs": 1, "checkpoints": 1}), other)
    gen = load_generator(fitted[0])
    z = Zoo.open(other)
    try:
        with pytest.raises(GeneratorError, match=r"layer '1\.weight'.*\(8, 64\).*\(12, 64\)"):
            gen.check_zoo(z)
        with pytest.raises(GeneratorError, match=r"layer '1\.weight'"):
            gen.fit(z, show_progress=False)
    finally:
        z.close()


def test_token_size_larger_than_every_layer(zoo):
    with pytest.raises(TokenizerError, match="token_size 100000 is larger than every selected layer.*512"):
        RPG.from_zoo(_spec(), zoo, TokenizerSpec(token_size=100000))
    with pytest.raises(GeneratorError, match="token_size"):
        RPG.from_zoo(_spec(), zoo, TokenizerSpec(token_size="flat"))


# -- the config: a union of generator specs on `method` -------------------------------------------

def test_generator_union_in_the_config():
    assert parse_config({}).generator.method == "pdiff"
    assert parse_config(tiny_cfg(generator={"fold_rate": 3})).generator.method == "pdiff"  # method omitted
    cfg = parse(tiny_cfg(generator={"method": "rpg", "backbone": "lstm"}))
    assert isinstance(cfg.generator, RPGSpec) and cfg.generator.backbone == "lstm"
    spec = RPGSpec()
    assert (spec.backbone, spec.layers, spec.permutation_state, spec.recurrent_input) == ("mamba", 2, True, "positions")
    assert (spec.diffusion.timesteps, spec.diffusion.prediction) == (1000, "epsilon")

    def error(generator: dict) -> str:
        with pytest.raises(ConfigError) as e:
            parse_config(tiny_cfg(generator=generator), "cfg.yaml")
        return str(e.value)

    msg = error({"method": "rpg", "d_modle": 8})
    assert "'d_modle'" in msg and "did you mean 'd_model'" in msg and "generator" in msg
    for key in ("backbone", "permutation_state", "recurrent_input", "tokens_per_step", "sample_chunk"):
        assert key in msg
    assert "fold_rate" not in msg  # the allowed keys of the chosen method only
    msg = error({"fold_rat": 3})
    assert "'fold_rat'" in msg and "fold_rate" in msg and "backbone" not in msg
    msg = error({"method": "rgp"})
    assert "'rgp'" in msg and "did you mean 'rpg'" in msg and "pdiff" in msg and "rpg" in msg
    assert "kernel_size must be odd" in error({"method": "rpg", "kernel_size": 4})
    assert "unet_channels" in error({"method": "rpg", "unet_channels": []})


def test_fixed_entries_that_vary_across_the_zoo_are_warned_about(tmp_path, pdiff_zoo, caplog):
    """A BatchNorm net's running statistics differ between seeds; left to the reference (the
    first checkpoint), every sample would carry that one checkpoint's statistics."""
    path = tmp_path / "bn_seeds"
    build(tiny_cfg(net={"name": "cnn", "channels": [4, 4], "batchnorm": True}), path)
    with Zoo.open(path) as zoo, caplog.at_level("WARNING", logger="weightgen.generators.base"):
        RPG.from_zoo(_spec(), zoo, TokenizerSpec(token_size=16))
        warned = [r.getMessage() for r in caplog.records]
        assert len(warned) == 1 and "running_" in warned[0] and "tokenizer.buffers: true" in warned[0]
        caplog.clear()
        gen = RPG.from_zoo(_spec(), zoo, TokenizerSpec(token_size=16, buffers=True))
        assert any(n.endswith("running_var") for n in gen.tokenizer.names) and not caplog.records
    with Zoo.open(pdiff_zoo) as zoo, caplog.at_level("WARNING", logger="weightgen.generators.base"):
        # p-diff's tail phase runs in eval mode: the body and its statistics stay as in the reference
        RPG.from_zoo(_spec(), zoo, TokenizerSpec(include=["head.*"], token_size=16))
        assert not caplog.records


# -- init_from: continuing a fit --------------------------------------------------------------------

def _fit_from(zoo, **generator):
    from weightgen.pipeline import fit_generator

    cfg = parse(tiny_cfg(tokenizer={"token_size": 16}, generator={**TINY_RPG, "ema": 0.9, "ema_warmup": True, **generator}))
    return fit_generator(cfg, zoo, show_progress=False)[0]


def test_init_from_continues_a_saved_fit(fitted, zoo):
    """``generator.init_from`` starts from the saved weights and EMA: with no new steps the fit is the
    saved generator, sample for sample; with new steps its EMA keeps counting from the saved one."""
    saved = load_generator(fitted[0])
    same = _fit_from(zoo, steps=0, init_from=str(fitted[0]))
    a, b = next(saved.sample(3, seed=5, sampler="ddim", steps=3)), next(same.sample(3, seed=5, sampler="ddim", steps=3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    more = _fit_from(zoo, steps=4, seed=1, init_from=str(fitted[0]))
    assert int(more.ema.n_averaged) == int(saved.ema.n_averaged) + 4
    fresh = _fit_from(zoo, steps=4, seed=1)
    assert int(fresh.ema.n_averaged) == 4
    def away(gen) -> float:  # squared distance of the weights from the saved generator's
        theirs = saved.net.state_dict()
        return sum(float((v.float() - theirs[k].float()).pow(2).sum()) for k, v in gen.net.state_dict().items())

    # the saved fit took 20 steps from the fixed initialization: 4 more steps stay nearer to it than 4 fresh ones
    assert 0 < away(more) < away(fresh)


def test_init_from_other_runs_is_refused_with_both_sets_of_runs(fitted, tmp_path):
    """A permutation state belongs to one training run: a zoo with other runs, or with the same run ids
    trained from other seeds (another zoo of the same net), cannot continue the fit."""
    more_runs = tmp_path / "three"
    build(tiny_cfg(zoo={"mode": "seeds", "runs": 3, "checkpoints": 2, "every": 2}), more_runs)
    with Zoo.open(more_runs) as z, pytest.raises(GeneratorError, match=r"states are runs \[0, 1\], this zoo's "
                                                                      r"training runs are \[0, 1, 2\]"):
        _fit_from(z, steps=0, init_from=str(fitted[0]))
    reseeded = tmp_path / "seed5"
    build(tiny_cfg(seed=5, zoo={"mode": "seeds", "runs": 3, "heldout": 1, "checkpoints": 2, "every": 2}), reseeded)
    with Zoo.open(reseeded) as z, pytest.raises(GeneratorError, match=r"seeds \[0, 1\], this zoo's training runs "
                                                                     r"have seeds \[5, 6\]"):
        _fit_from(z, steps=0, init_from=str(fitted[0]))


def test_init_from_another_architecture_names_the_entry_and_both_shapes(fitted, zoo, tmp_path):
    with pytest.raises(GeneratorError, match=r"(?s)init_from .*weights of 'net' do not fit.*size mismatch for [\w.]+: copying "
                                             r"a param with shape torch.Size\(\[\d+.*\]\) from checkpoint, the shape in "
                                             r"current model is torch.Size\(\[\d+"):
        _fit_from(zoo, steps=0, d_model=24, init_from=str(fitted[0]))
    with pytest.raises(GeneratorError, match="modules ema, net, this fit needs net"):
        _fit_from(zoo, steps=0, ema=None, init_from=str(fitted[0]))
    other = tmp_path / "mlp12"
    build(tiny_cfg(net={"name": "mlp", "hidden": [12]}, zoo={"mode": "seeds", "runs": 2, "checkpoints": 1}), other)
    with Zoo.open(other) as z, pytest.raises(GeneratorError, match=r"another net.*'1\.weight' is \(8, 64\) \S+ there, \(12, 64\)"):
        _fit_from(z, steps=0, init_from=str(fitted[0]))
    with pytest.raises(GeneratorError, match="generator.json: missing"):
        _fit_from(zoo, steps=0, init_from=str(tmp_path))
