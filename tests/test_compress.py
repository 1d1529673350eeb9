"""Sparse and quantized zoos (``zoo.compress``) and their generation (``tokenizer.mask``): tiny digits MLPs."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import PDIFF_GEN, build, parse, tiny_cfg

from weightgen.compress import keep_largest, quantize, snap
from weightgen.compress.prune import magnitude_masks
from weightgen.compress.quantize import dequantize, levels, pack, unpack
from weightgen.compress.store import read_compact
from weightgen.compress.zoo import COMPRESS_META, compact_path, zoo_masks
from weightgen.config import ConfigError
from weightgen.nets import build_net
from weightgen.tasks import get_task
from weightgen.tokens import Tokenizer
from weightgen.tokens.tokenizer import TokenizerError
from weightgen.zoo import Zoo

ZOO = {"mode": "seeds", "runs": 2, "checkpoints": 2, "every": 2}
SHARED = tiny_cfg(zoo={**ZOO, "compress": {"prune": {"sparsity": 0.8, "mask": "shared", "finetune_steps": 5}}})
OWN_INT4 = tiny_cfg(zoo={**ZOO, "compress": {"prune": {"sparsity": 0.5, "scope": "layer", "finetune_steps": 3},
                                             "quantize": {"bits": 4}}})


@pytest.fixture(scope="module")
def shared_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("compress") / "shared"
    build(SHARED, path)
    return path


@pytest.fixture(scope="module")
def own_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("compress") / "own"
    build(OWN_INT4, path)
    return path


# -- quantization -----------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 4, 2])
def test_codes_lie_in_range_and_snapping_is_idempotent(bits):
    t = torch.randn(6, 5, 3)
    codes, scale = quantize(t, bits)
    q = levels(bits)
    assert codes.abs().max() == q and scale.shape == (6,)
    snapped = snap(t, bits)
    assert torch.equal(snap(snapped, bits), snapped)
    assert torch.allclose(snapped, dequantize(codes, scale))
    assert (snapped - t).abs().max() <= scale.max() / 2 + 1e-6
    assert torch.equal(unpack(pack(codes, bits), bits, codes.numel()), codes.reshape(-1))
    assert pack(codes, bits).numel() == math.ceil(codes.numel() * bits / 8)


def test_ternary_has_three_levels_and_a_batch_snaps_per_network():
    assert set(quantize(torch.randn(4, 9), 2)[0].unique().tolist()) <= {-1, 0, 1}
    batch = torch.randn(3, 4, 9)
    assert torch.equal(snap(batch, 4, lead=1)[1], snap(batch[1], 4))


# -- pruning ----------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_masks_remove_the_smallest_entries(scope):
    net = build_net("mlp", (1, 8, 8), 10, seed=0, hidden=[8])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    masks = magnitude_masks(net, ["*weight"], 0.75, scope)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the net is left as it was
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert kept == total - round(0.75 * total) or scope == "layer"
    for name, m in masks.items():
        if scope == "layer":
            assert int(m.sum()) == m.numel() - round(0.75 * m.numel())
        w = before[name].abs()
        if scope == "layer" or len(masks) == 1:
            assert w[m].min() >= w[~m].max()
    w = torch.cat([before[n].abs().flatten() for n in masks])
    m = torch.cat([masks[n].flatten() for n in masks])
    if scope == "global":
        assert w[m].min() >= w[~m].max()


@pytest.mark.parametrize("section, message", [
    ({"prune": {"sparsity": 1.5}}, "sparsity 1.5 is outside (0, 1)"),
    ({"prune": {"sparsity": 0}}, "sparsity 0.0 is outside (0, 1)"),
    ({"quantize": {"bits": 3}}, "bits 3 is not supported; allowed: 8, 4, 2"),
])
def test_bad_compress_settings_are_refused_in_one_line(section, message):
    with pytest.raises(ConfigError) as e:
        parse(tiny_cfg(zoo={**ZOO, "compress": section}))
    line = next(x for x in str(e.value).splitlines() if "compress" in x)
    assert message in line
    with pytest.raises(ValueError, match=r"outside \(0, 1\)"):
        magnitude_masks(build_net("mlp", (1, 8, 8), 10, hidden=[8]), ["*weight"], 1.0)
    with pytest.raises(ValueError, match="bits 3 is not supported; allowed: 8, 4, 2"):
        snap(torch.ones(2, 2), 3)


# -- compressed zoos --------------------------------------------------------------------

def test_a_pruned_zoo_is_stored_dense_and_compact_and_judged_as_pruned(shared_zoo):
    with Zoo.open(shared_zoo) as zoo:
        record = zoo.meta(COMPRESS_META)
        assert record["pruned"] == ["1.weight", "3.weight"] and record["masks_shared"]
        assert abs(record["density"] - 0.2) < 0.01
        assert record["compact_bytes"] < record["dense_bytes"]
        net = zoo.build_net()
        for m in zoo.members(None):
            state = zoo.load(m)
            masks = zoo_masks(zoo, m)
            for name, mask in masks.items():
                assert torch.equal(state[name] != 0, mask)
            compact = read_compact(compact_path(zoo.root, m))
            assert all(torch.equal(compact[k], state[k]) for k in state)
            net.load_state_dict(state)  # the stored metrics are the pruned network's own
            x, y = get_task("digits").split("test")
            with torch.no_grad():
                acc = (net.eval()(x).argmax(1) == y).float().mean().item()
            assert abs(acc - m.metrics["test_accuracy"]) < 1e-6


def test_a_quantized_zoo_holds_values_on_each_channels_grid(own_zoo):
    with Zoo.open(own_zoo) as zoo:
        record = zoo.meta(COMPRESS_META)
        assert record["bits"] == 4 and not record["masks_shared"]
        for m in zoo.members(None):
            state = zoo.load(m)
            for name in record["quantized"]:
                assert torch.equal(snap(state[name], 4), state[name])
                assert (state[name].reshape(len(state[name]), -1) != 0).sum(1).max() > 0
            compact = read_compact(compact_path(zoo.root, m))
            assert all(torch.equal(compact[k], state[k]) for k in state)


def test_a_finished_compressed_zoo_is_not_compressed_again(shared_zoo):
    with Zoo.open(shared_zoo) as zoo:
        before = [m.sha256 for m in zoo.members(None)]
    summary = build(SHARED, shared_zoo)
    with Zoo.open(shared_zoo) as zoo:
        assert [m.sha256 for m in zoo.members(None)] == before
    assert summary["trained"] == 0


def test_lottery_tickets_reach_the_sparsity_from_the_runs_init(tmp_path):
    cfg = tiny_cfg(zoo={"mode": "seeds", "runs": 1, "checkpoints": 1,
                        "compress": {"prune": {"sparsity": 0.75, "recipe": "lottery", "rounds": 2}}})
    build(cfg, tmp_path / "z")
    with Zoo.open(tmp_path / "z") as zoo:
        record = zoo.meta(COMPRESS_META)
        assert abs(record["density"] - 0.25) < 0.01
        assert zoo.members()[0].metrics["train_accuracy"] > 0.3  # retrained from the init, not a pruned copy
    with pytest.raises(ConfigError, match="lottery"):
        parse(tiny_cfg(zoo={**ZOO, "align": "weight_matching",
                            "compress": {"prune": {"sparsity": 0.5, "recipe": "lottery"}}}))


# -- the tokenizer over the kept entries ------------------------------------------------

def test_the_shared_mask_tokenizer_covers_only_the_kept_entries(shared_zoo, tmp_path):
    with Zoo.open(shared_zoo) as zoo:
        dense = Tokenizer.fit_zoo(zoo, token_size=16)
        sparse = Tokenizer.fit_zoo(zoo, token_size=16, mask="shared", normalize="none")
        state = zoo.load(zoo.members()[0])
        masks = zoo_masks(zoo, zoo.members()[0])
    kept = sum(int(m.sum()) for m in masks.values()) + state["1.bias"].numel() + state["3.bias"].numel()
    assert sparse.num_params == kept < dense.num_params
    assert sparse.num_tokens < dense.num_tokens
    tokens = sparse.tokenize(state)
    back = sparse.tensors(tokens[None])
    assert all(torch.equal(back[k][0], state[k]) for k in back)  # exact without normalization
    noisy = sparse.tensors(tokens[None] + 1.0)
    for name, mask in masks.items():
        assert (noisy[name][0][~mask] == 0).all() and (noisy[name][0][mask] != 0).all()
    sparse.save(tmp_path / "tok")
    again = Tokenizer.load(tmp_path / "tok")
    assert again.num_tokens == sparse.num_tokens and torch.equal(again.tokenize(state), tokens)
    # streamed pieces land where the whole tensors do, zeros in between
    out = {k: torch.full_like(v[0], float("nan")) for k, v in back.items()}
    for name, start, values in sparse.pieces(3, tokens[3:7]):
        out[name].view(-1)[start:start + len(values)] = values
    for name, start, values in sparse.pieces(0, tokens[:3]):
        out[name].view(-1)[start:start + len(values)] = values
    for name, start, values in sparse.pieces(7, tokens[7:]):
        out[name].view(-1)[start:start + len(values)] = values
    assert all(torch.equal(out[k], back[k][0]) for k in out)


def test_masks_that_differ_are_refused_by_the_shared_tokenizer_and_generated_otherwise(own_zoo):
    with Zoo.open(own_zoo) as zoo:
        with pytest.raises(TokenizerError) as e:
            Tokenizer.fit_zoo(zoo, token_size=16, mask="shared")
        message = str(e.value)
        assert "\n" not in message and "differ in" in message and "mask: generated" in message
        tok = Tokenizer.fit_zoo(zoo, token_size=16, mask="generated")
        record = zoo.meta(COMPRESS_META)
    made = tok.tensors(torch.randn(3, tok.num_tokens, tok.width))
    for name in record["pruned"]:
        density = (made[name] != 0).flatten(1).float().mean(1)
        assert torch.allclose(density, torch.tensor(record["densities"][name]), atol=0.02)
        assert torch.equal(snap(made[name], 4, lead=1), made[name])  # on its grid


def test_a_mask_mode_needs_a_pruned_zoo(seeds_zoo):
    with Zoo.open(seeds_zoo) as zoo, pytest.raises(TokenizerError, match="'shared' needs a pruned zoo"):
        Tokenizer.fit_zoo(zoo, mask="shared")


def test_keep_largest_keeps_the_density_per_network():
    t = torch.randn(2, 10, 10)
    kept = keep_largest(t, 0.1, lead=1)
    assert ((kept != 0).flatten(1).sum(1) == 10).all()


def test_a_pruned_zoo_through_pdiff_end_to_end(shared_zoo, tmp_path):
    import shutil

    from weightgen.pipeline import run_experiment

    zoo_dir = tmp_path / "zoo"
    shutil.copytree(shared_zoo, zoo_dir)
    cfg = parse({**SHARED, "tokenizer": {"token_size": "flat", "normalize": "element", "mask": "shared"},
                 "generator": {**PDIFF_GEN, "ae_steps": 10, "diffusion_steps": 10},
                 "sample": {"n": 2}, "evaluate": {"n_noise": 2, "sigmas": [0.01]}})
    report = run_experiment(cfg, zoo_dir, tmp_path / "run", show_progress=False)
    assert report["groups"]["generated"]["n"] == 2
    from weightgen.generators import load_generator

    gen = load_generator(tmp_path / "run" / "generator")
    with Zoo.open(zoo_dir) as zoo:
        masks = zoo_masks(zoo, zoo.members()[0])
    assert gen.tokenizer.num_params < 200
    batch = next(gen.sample(2, seed=1))
    for name, mask in masks.items():
        assert (batch[name][:, ~mask] == 0).all()


def test_training_under_a_mask_keeps_pruned_attention_weights_at_zero():
    from weightgen.compress.prune import train_masked
    from weightgen.config import TrainSpec

    net = build_net("vit", (1, 8, 8), 10, seed=0)
    masks = magnitude_masks(net, ["*weight"], 0.9)
    assert "blocks.0.attn.out_proj.weight" in masks  # read by its parent's forward, not its own
    train_masked(net, masks, get_task("digits"), TrainSpec(batch_size=32), 2, seed=0, device="cpu")
    state = net.state_dict()
    assert all(torch.equal(state[k] != 0, m) for k, m in masks.items())
    assert not any(k.endswith(("_orig", "_mask")) for k in state)


def test_a_tensor_its_shared_mask_empties_streams_as_zeros():
    state = {"a": torch.randn(4, 4), "b": torch.randn(3)}
    kept = {"a": torch.tensor([], dtype=torch.long)}
    tok = Tokenizer.fit([state], token_size=2, normalize="none", kept=kept, mask="shared",
                        compressed={"pruned": ["a"]})
    pieces = list(tok.pieces(0, tok.tokenize(state)))
    assert pieces[0][0] == "a" and torch.equal(pieces[0][2], torch.zeros(16))
    assert torch.equal(tok.tensors(tok.tokenize(state)[None])["b"][0], state["b"])


def test_gpt_units_refuse_a_shared_mask_in_one_line(shared_zoo):
    """G.pt's unit tokens read whole tensors, which a shared-mask tokenizer does not give."""
    from weightgen.generators import GENERATORS, GeneratorError

    cfg = parse({**SHARED, "tokenizer": {"token_size": 16, "mask": "shared"},
                 "generator": {"method": "gpt", "architecture": "units", "d_model": 16, "layers": 1}})
    with Zoo.open(shared_zoo) as zoo, pytest.raises(GeneratorError, match="tokenizer.mask: shared"):
        GENERATORS.get("gpt").from_zoo(cfg.generator, zoo, cfg.tokenizer, "cpu")
