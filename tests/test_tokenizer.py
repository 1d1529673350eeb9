"""weightgen.tokens: parameters <-> tokens for every net, layout, normalization, persistence."""
from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from conftest import net_input

from weightgen.nets import NETS, build_net, parameter_names
from weightgen.tokens import FLAT, Tokenizer, TokenizerError, select_names
from weightgen.zoo import Zoo

DIGITS = (1, 8, 8)


def _states(name: str, seeds, shape=DIGITS, num_classes: int = 10, **kwargs) -> tuple[list[dict], list[str]]:
    """State dicts of ``name`` built from ``seeds``; float buffers randomized per state, so a
    tensor taken from the wrong checkpoint cannot go unnoticed."""
    states, names = [], None
    for s in seeds:
        net = build_net(name, shape, num_classes, seed=s, **kwargs)
        names = parameter_names(net)
        gen = torch.Generator().manual_seed(1000 + s)
        state = {}
        for k, v in net.state_dict().items():
            v = v.detach().clone()
            if k not in names and v.is_floating_point():
                v = torch.rand(v.shape, generator=gen) + 0.5
            elif k not in names:
                v = torch.full_like(v, 17 + s)  # e.g. num_batches_tracked
            state[k] = v
        states.append(state)
    return states, names


# (net, kwargs, token_size, exclude the first parameter): every registered net, plus variants.
ROUNDTRIP = [(name, {}, 64, excl) for name in NETS.names() for excl in (False, True)] + [
    ("mlp", {"hidden": [8, 5]}, 7, False),
    ("mlp", {"hidden": [8]}, FLAT, True),
    ("cnn", {"channels": [4, 8], "batchnorm": True}, 5, False),
    ("cnn", {"channels": [4, 8], "batchnorm": True}, 5, True),
    ("cnn", {"channels": [4, 8], "batchnorm": True}, FLAT, False),
    ("vit", {"dim": 16, "depth": 1, "heads": 2}, 9, True),
    ("timm:resnet18", {"input_size": 32}, 256, False),
]


@pytest.mark.parametrize("name,kwargs,token_size,exclude_first", ROUNDTRIP,
                         ids=[f"{n}-{ts}-{'excl' if e else 'all'}-{i}" for i, (n, _, ts, e) in enumerate(ROUNDTRIP)])
def test_round_trip(name, kwargs, token_size, exclude_first):
    shape = net_input(name)
    states, params = _states(name, [0, 1, 2], shape, **kwargs)
    (reference,), _ = _states(name, [7], shape, **kwargs)
    exclude = [params[0]] if exclude_first else []
    tok = Tokenizer.fit(states, exclude=exclude, token_size=token_size, parameter_names=params)
    expected_names = [k for k in states[0] if k in params and k not in exclude and states[0][k].is_floating_point()]
    assert tok.names == expected_names
    assert tok.num_params == sum(states[0][k].numel() for k in expected_names)

    target = states[1]
    tokens = tok.tokenize(target)
    assert tokens.dtype == torch.float32 and tokens.shape == (tok.num_tokens, tok.width)
    out = tok.detokenize(tokens, reference)
    assert list(out) == list(reference)
    for k, v in out.items():
        assert v.dtype == reference[k].dtype and v.shape == reference[k].shape, k
        if k in tok.names:
            assert_close(v, target[k], rtol=1e-6, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
        else:  # buffers and excluded layers: the reference's, bit for bit
            assert torch.equal(v, reference[k]), k
    # the result is a complete state_dict of the architecture
    build_net(name, shape, 10, **kwargs).load_state_dict(out, strict=True)


def test_layout_tokens_never_span_tensors():
    states, params = _states("cnn", [0, 1], channels=[3, 5], batchnorm=True)
    tok = Tokenizer.fit(states, token_size=10, parameter_names=params)
    pos, mask, tokens = tok.positions, tok.mask, tok.tokenize(states[0])
    assert tok.width == 10
    assert pos.shape == (tok.num_tokens, 2) and mask.shape == tokens.shape == (tok.num_tokens, 10)
    assert int(mask.sum()) == tok.num_params == sum(states[0][n].numel() for n in params)
    first = 0
    for i, seg in enumerate(tok.segments):
        assert seg.name == params[i] and seg.shape == tuple(states[0][seg.name].shape)
        assert seg.first == first and seg.count == math.ceil(seg.numel / 10)
        rows = slice(seg.first, seg.first + seg.count)
        # every token of the segment belongs to tensor i, numbered 0..count-1
        assert (pos[rows, 0] == i).all()
        assert torch.equal(pos[rows, 1], torch.arange(seg.count))
        # only the segment's last token may be padded, padding is masked and zero
        m = mask[rows]
        assert m[:-1].all() and int(m.sum()) == seg.numel
        assert (tokens[rows][~m] == 0).all()
        # the values of these tokens are exactly tensor i's, normalized
        normalized = ((states[0][seg.name].double().flatten() - tok.mean[i]) / tok.std[i]).float()
        assert torch.equal(tokens[rows][m], normalized)
        first += seg.count
    assert first == tok.num_tokens


def test_flat_mode_is_one_token():
    states, params = _states("mlp", [0, 1], hidden=[8])
    tok = Tokenizer.fit(states, token_size=FLAT, parameter_names=params)
    n = sum(states[0][k].numel() for k in params)
    assert tok.flat and tok.num_tokens == 1 and tok.width == tok.num_params == n
    tokens = tok.tokenize(states[0])
    assert tokens.shape == (1, n)
    assert tok.mask.shape == (1, n) and tok.mask.all()
    assert torch.equal(tok.positions, torch.zeros(1, 2, dtype=torch.long))
    expected = torch.cat([((states[0][k].double().flatten() - tok.mean[i]) / tok.std[i]).float()
                          for i, k in enumerate(tok.names)])
    assert torch.equal(tokens[0], expected)


def test_glob_include_exclude_and_buffers():
    (state,), params = _states("cnn", [0], channels=[4, 8, 8], batchnorm=True)
    assert select_names(state, ["features.2.*"], [], params) == [
        "features.2.0.weight", "features.2.0.bias", "features.2.1.weight", "features.2.1.bias"]
    # without parameter_names, float buffers are selectable; integer ones never are
    assert select_names(state, ["features.2.*"], [], None) == [
        "features.2.0.weight", "features.2.0.bias", "features.2.1.weight", "features.2.1.bias",
        "features.2.1.running_mean", "features.2.1.running_var"]
    assert select_names(state, ["*"], ["*.bias", "features.0.*"], params) == [
        "features.1.0.weight", "features.1.1.weight", "features.2.0.weight", "features.2.1.weight", "head.weight"]
    # buffers are left out by default when parameter names are given
    tok = Tokenizer.fit([state], token_size=8, parameter_names=params)
    assert tok.names == params
    assert not any("running" in n or "num_batches" in n for n in tok.names)
    tok = Tokenizer.fit([state], include=["features.2.*"], token_size=8)
    assert "features.2.1.running_var" in tok.names and "features.2.1.num_batches_tracked" not in tok.names


def test_selection_of_nothing_is_an_error():
    (state,), params = _states("mlp", [0], hidden=[8])
    with pytest.raises(TokenizerError, match="select no tensor"):
        select_names(state, ["features.*"], [], params)
    with pytest.raises(TokenizerError, match="select no tensor"):
        Tokenizer.fit([state], include=["*"], exclude=["*"])


def test_normalization_stats_match_torch(seeds_zoo):
    zoo = Zoo.open(seeds_zoo)
    members = zoo.members()  # the 'train' split only: held-out runs never shape the tokenizer
    assert {m.split for m in members} == {"train"}
    states = [zoo.load(m) for m in members]
    tok = Tokenizer.fit_zoo(zoo, token_size=16)
    assert sorted(tok.names) == sorted(zoo.parameter_names)  # the order: test_fit_zoo_keeps_state_dict_order
    for i, n in enumerate(tok.names):
        stacked = torch.stack([s[n].double() for s in states])
        assert_close(tok.mean[i], stacked.mean(), rtol=1e-9, atol=1e-12)
        assert_close(tok.std[i], stacked.std(correction=0), rtol=1e-6, atol=1e-12)
    batch = tok.tokenize_batch(states)
    assert batch.shape == (len(states), tok.num_tokens, tok.width)
    mask = tok.mask
    for seg in tok.segments:
        rows = slice(seg.first, seg.first + seg.count)
        values = batch[:, rows][:, mask[rows]].double()
        assert values.numel() == len(states) * seg.numel
        assert abs(values.mean().item()) < 1e-5, seg.name
        assert values.std(correction=0).item() == pytest.approx(1.0, abs=1e-4), seg.name
    zoo.close()


def test_fit_zoo_buffers_flag(tail_zoo):
    zoo = Zoo.open(tail_zoo)
    without = Tokenizer.fit_zoo(zoo, token_size=4)
    assert sorted(without.names) == sorted(zoo.parameter_names)
    with_buffers = Tokenizer.fit_zoo(zoo, token_size=4, buffers=True)
    extra = {n for n in with_buffers.names if n not in zoo.parameter_names}
    assert extra == {f"features.{i}.1.{b}" for i in (0, 1) for b in ("running_mean", "running_var")}
    head = Tokenizer.fit_zoo(zoo, include=["head.*"], token_size=4)
    assert sorted(head.names) == ["head.bias", "head.weight"]
    zoo.close()


def test_fit_zoo_keeps_state_dict_order(tail_zoo):
    """Zoo.load returns tensors in the manifest's (state_dict) order, not safetensors' hash-map
    order, which changes from process to process: the token layout (segment order, the positions'
    layer index) of one zoo is the same in every process, in layer order."""
    zoo = Zoo.open(tail_zoo)
    member = zoo.members()[0]
    net_order = list(zoo.build_net().state_dict())
    assert list(member.tensors) == net_order
    assert list(zoo.load(member)) == net_order
    assert Tokenizer.fit_zoo(zoo, token_size=4).names == zoo.parameter_names
    zoo.close()


def test_constant_tensors_get_std_one():
    states, params = _states("mlp", [0, 1, 2], hidden=[8])
    for s in states:
        s["1.bias"] = torch.full_like(s["1.bias"], 0.25)
        s["3.bias"] = torch.zeros_like(s["3.bias"])
    tok = Tokenizer.fit(states, token_size=4, parameter_names=params)
    i, j = tok.names.index("1.bias"), tok.names.index("3.bias")
    assert tok.std[i] == 1.0 and tok.mean[i] == pytest.approx(0.25)
    assert tok.std[j] == 1.0 and tok.mean[j] == 0.0
    out = tok.detokenize(tok.tokenize(states[0]), states[1])
    assert torch.equal(out["1.bias"], states[0]["1.bias"])
    assert torch.isfinite(tok.tokenize(states[0])).all()


def test_element_mode_gives_values_the_zoo_never_changes_their_tensors_typical_scale():
    """A value constant across the zoo has token 0 in every checkpoint; its scale is what the
    generator's error there costs in the weight. It takes the median spread of its tensor's
    changing values (the network's when the whole tensor is constant), not 1."""
    states, params = _states("mlp", [0, 1, 2], hidden=[8])
    for s in states:
        s["1.weight"][:, :3] = 0.5  # part of a tensor frozen
        s["3.bias"] = torch.zeros_like(s["3.bias"])  # a whole tensor frozen
    tok = Tokenizer.fit(states, token_size=4, parameter_names=params, normalize="element")
    stacked = {n: torch.stack([s[n].double() for s in states]) for n in params}
    w = tok.stats(tok.names.index("1.weight"))[1].view(8, -1)
    moving = stacked["1.weight"].std(0, correction=0)[:, 3:]
    assert_close(w[:, 3:], moving, rtol=1e-6, atol=1e-12)  # changing values keep their own spread
    assert torch.all(w[:, :3] == moving.median())
    spreads = torch.cat([stacked[n].std(0, correction=0).flatten() for n in params])
    assert torch.all(tok.stats(tok.names.index("3.bias"))[1] == spreads[spreads > 1e-8].median())
    # tokens of the frozen values are exactly 0 and come back exactly
    out = tok.detokenize(tok.tokenize(states[0]), states[1])
    assert torch.equal(out["1.weight"][:, :3], states[0]["1.weight"][:, :3])
    assert torch.equal(out["3.bias"], states[0]["3.bias"])
    sample = tok.tokenize(states[0]) + 0.1  # a generator's error of 0.1 everywhere
    err = (tok.detokenize(sample, states[1])["1.weight"] - states[0]["1.weight"])[:, :3].abs()
    assert torch.all(err < 0.1 * moving.max() * 1.01)


def test_token_size_limits():
    states, params = _states("mlp", [0], hidden=[8])
    largest = max(states[0][n].numel() for n in params)  # 8 x 64
    assert Tokenizer.fit(states, token_size=largest, parameter_names=params).num_tokens == len(params)
    with pytest.raises(TokenizerError, match=str(largest)):
        Tokenizer.fit(states, token_size=largest + 1, parameter_names=params)
    for bad in (0, -3, "big"):
        with pytest.raises(TokenizerError, match="token_size"):
            Tokenizer.fit(states, token_size=bad, parameter_names=params)


def test_fit_errors():
    with pytest.raises(TokenizerError, match="zero checkpoints"):
        Tokenizer.fit([])
    a, _ = _states("mlp", [0], hidden=[8])
    b, _ = _states("mlp", [0], hidden=[6])
    with pytest.raises(TokenizerError, match="'1.weight'"):
        Tokenizer.fit([a[0], b[0]])


def test_check_names_layer_and_shapes():
    states, params = _states("mlp", [0, 1], hidden=[8])
    tok = Tokenizer.fit(states, token_size=8, parameter_names=params)
    (other,), _ = _states("mlp", [0], hidden=[6])
    with pytest.raises(TokenizerError) as e:
        tok.check(other)
    msg = str(e.value)
    assert "'1.weight'" in msg and "(8, 64)" in msg and "(6, 64)" in msg
    with pytest.raises(TokenizerError) as e:
        tok.detokenize(tok.tokenize(states[0]), other)
    assert "'1.weight'" in str(e.value) and "(6, 64)" in str(e.value)
    missing = {k: v for k, v in states[0].items() if k != "3.bias"}
    with pytest.raises(TokenizerError, match="'3.bias'"):
        tok.tokenize(missing)
    with pytest.raises(TokenizerError, match="expected"):
        tok.tensors(torch.zeros(tok.num_tokens + 1, tok.width))


def test_tensors_keep_leading_dims():
    states, params = _states("cnn", [0, 1, 2, 3, 4, 5], channels=[3, 4])
    tok = Tokenizer.fit(states, token_size=6, parameter_names=params)
    tokens = tok.tokenize_batch(states).view(2, 3, tok.num_tokens, tok.width)
    out = tok.tensors(tokens)
    assert list(out) == tok.names
    for n, v in out.items():
        assert v.shape == (2, 3, *states[0][n].shape)
        for a in range(2):
            for b in range(3):
                assert_close(v[a, b], states[a * 3 + b][n], rtol=1e-6, atol=1e-6)
    single = tok.tensors(tokens[1, 2])
    assert all(single[n].shape == states[5][n].shape for n in single)


def test_dtypes_are_kept():
    states = [{"w": torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(s)),
               "b": torch.randn(5, generator=torch.Generator().manual_seed(10 + s)).half(),
               "steps": torch.tensor(3)} for s in range(3)]
    tok = Tokenizer.fit(states, token_size=4)
    assert tok.names == ["w", "b"]
    out = tok.detokenize(tok.tokenize(states[0]), states[1])
    assert out["w"].dtype == torch.float64 and out["b"].dtype == torch.float16
    assert_close(out["w"], states[0]["w"], rtol=1e-6, atol=1e-6)
    assert torch.equal(out["b"], states[0]["b"])  # float16 survives a float32 round trip exactly
    assert torch.equal(out["steps"], states[1]["steps"])


@pytest.mark.parametrize("token_size", [5, FLAT])
def test_save_load_round_trip(tmp_path, token_size):
    states, params = _states("cnn", [0, 1, 2], channels=[3, 4], batchnorm=True)
    tok = Tokenizer.fit(states, token_size=token_size, parameter_names=params)
    tok.save(tmp_path / "tok")
    back = Tokenizer.load(tmp_path / "tok")
    assert back.segments == tok.segments
    assert back.token_size == tok.token_size and back.width == tok.width and back.num_tokens == tok.num_tokens
    assert torch.equal(back.mean, tok.mean) and torch.equal(back.std, tok.std)
    assert back.mean.dtype == torch.float64
    assert torch.equal(back.tokenize(states[2]), tok.tokenize(states[2]))
    assert torch.equal(back.positions, tok.positions) and torch.equal(back.mask, tok.mask)


@pytest.mark.parametrize("broken,how", [
    ("tokenizer.json", "missing"),
    ("tokenizer.safetensors", "missing"),
    ("tokenizer.json", "garbage"),
    ("tokenizer.safetensors", "garbage"),
    ("tokenizer.json", "empty-object"),
])
def test_load_broken_tokenizer_names_the_file(tmp_path, broken, how):
    """A missing, corrupt or incomplete tokenizer file raises a TokenizerError naming that file
    (which of the two is broken), never a bare KeyError or safetensors' own error."""
    states, params = _states("mlp", [0, 1], hidden=[8])
    d = tmp_path / "tok"
    Tokenizer.fit(states, token_size=8, parameter_names=params).save(d)
    path = d / broken
    if how == "missing":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(b"\x00\xffnot what it should be" * 3)
    else:
        path.write_text("{}")
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(d)
    assert str(path) in str(e.value)


def test_load_missing_directory(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer"):
        Tokenizer.load(tmp_path / "nowhere")


def test_generated_running_var_is_never_negative():
    """A BatchNorm variance below zero would make the net output NaN: the inverse clamps it."""
    from weightgen.evaluate.baselines import noise_added

    states = [{"bn.weight": torch.randn(6), "bn.running_var": torch.rand(6) + 0.01} for _ in range(3)]
    tok = Tokenizer.fit(states, token_size=3)
    tokens = tok.tokenize(states[0])[None] - 100.0  # far below every variance seen
    out = tok.tensors(tokens)
    assert (out["bn.running_var"] == 0).all() and (out["bn.weight"] < 0).all()  # only the variance is clamped
    pieces = {name: v for name, _, v in tok.pieces(0, tokens[0])}
    assert (pieces["bn.running_var"] >= 0).all()
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    noisy = noise_added(stacked, ["bn.weight", "bn.running_var"], sigma=10.0, n=20, seed=0)
    assert (noisy["bn.running_var"] >= 0).all() and (noisy["bn.weight"] < 0).any()


@pytest.mark.parametrize("normalize", ["tensor", "element", "none"])
def test_round_trip_is_within_its_documented_bound(normalize):
    """Float32 tokens round each normalized value once: x comes back within ``ROUND_TRIP_BOUND *
    |x - mean|``, and exactly without normalization. Small values of a tensor whose mean is far
    from them are where the rounding shows."""
    from weightgen.tokens.tokenizer import ROUND_TRIP_BOUND

    g = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(40, 30, generator=g) * 0.05 + 2.0 * (i % 2), "b": torch.randn(9, generator=g) * 1e-4}
              for i in range(4)]
    tok = Tokenizer.fit(states, token_size=16, normalize=normalize)
    worst = 0.0
    for state in states:
        out = tok.tensors(tok.tokenize(state))
        for i, name in enumerate(tok.names):
            if normalize == "none":
                assert torch.equal(out[name], state[name]), name
                continue
            x, y = state[name].double(), out[name].double()
            mean = tok.stats(i)[0]
            mean = mean.view(x.shape) if normalize == "element" else mean
            allowed = ROUND_TRIP_BOUND * (x - mean).abs()
            assert ((y - x).abs() <= allowed).all(), name
            worst = max(worst, float(((y - x).abs() / allowed.clamp_min(1e-300)).max()))
    if normalize != "none":
        assert 0 < worst <= 1  # not exact, and the bound is the one that holds
