"""Generation straight to disk (weightgen/tensorfile.py, Generator.sample_to_file, Tokenizer.pieces):
the file is an ordinary safetensors file equal to in-memory sampling, loads into the net, and an
interrupted generation never leaves a file that looks complete. Also the memory-bounded paths
behind it (token-by-token Mamba scan, chunk size capped by activation memory, fixed-only reference)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from test_rpg import TOKENS16, _jitter, _spec, _standalone, _states
from weightgen.generators import GENERATORS, load_generator
from weightgen.generators import rpg as rpg_mod
from weightgen.tensorfile import StreamingSafetensorsWriter
from weightgen.tokens import Tokenizer
from weightgen.zoo import Zoo


# -- the writer --------------------------------------------------------------------------------

def test_writer_pieces_in_any_order_make_a_safetensors_file(tmp_path):
    tensors = {"w": torch.randn(4, 5), "b": torch.randn(5).to(torch.bfloat16), "n": torch.tensor([3, 1], dtype=torch.int64)}
    path = tmp_path / "net.safetensors"
    with StreamingSafetensorsWriter(path, {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()},
                                    {"seed": "3"}) as out:
        flat = tensors["w"].flatten()
        out.write("w", 12, flat[12:])  # out of order on purpose
        out.write("w", 0, flat[:12])
        out.write_tensor("b", tensors["b"])
        out.write_tensor("n", tensors["n"])
        assert not path.exists()  # nothing looks complete before the end
    loaded = load_file(str(path))
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"seed": "3"}
    assert not list(tmp_path.glob(".*partial"))


def test_writer_refuses_an_incomplete_file(tmp_path):
    path = tmp_path / "net.safetensors"
    out = StreamingSafetensorsWriter(path, {"w": ((4, 5), torch.float32), "b": ((5,), torch.float32)})
    out.write("w", 0, torch.zeros(20))
    with pytest.raises(ValueError, match="tensor 'b' has 0 of 5"):
        out.close()
    assert not path.exists() and not list(tmp_path.iterdir())


def test_writer_error_mid_way_leaves_nothing(tmp_path):
    path = tmp_path / "net.safetensors"
    with pytest.raises(RuntimeError, match="interrupted"):
        with StreamingSafetensorsWriter(path, {"w": ((4, 5), torch.float32)}) as out:
            out.write("w", 0, torch.zeros(10))
            raise RuntimeError("interrupted")
    assert not list(tmp_path.iterdir())


def test_writer_bad_piece(tmp_path):
    with StreamingSafetensorsWriter(tmp_path / "x.safetensors", {"w": ((4,), torch.float32)}) as out:
        with pytest.raises(ValueError, match=r"tensor 'w': values \[2, 6\) outside its 4"):
            out.write("w", 2, torch.zeros(4))
        with pytest.raises(ValueError, match=r"shape \(3,\), the file declares \(4,\)"):
            out.write_tensor("w", torch.zeros(3))
        out.write_tensor("w", torch.zeros(4))


# -- tokenizer pieces --------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", ["tensor", "element", "none"])
@pytest.mark.parametrize("chunk,token_size", [(1, 4), (3, 4), (100, 4), (1, "flat")])
def test_pieces_rebuild_the_tensors(normalize, chunk, token_size):
    states = _states(4)
    tok = Tokenizer.fit(states, token_size=token_size, normalize=normalize)
    tokens = tok.tokenize(states[2])
    rebuilt = {n: torch.full((s.numel,), float("nan")) for n, s in zip(tok.names, tok.segments)}
    for first in range(0, tok.num_tokens, chunk):
        for name, start, values in tok.pieces(first, tokens[first: first + chunk]):
            rebuilt[name][start: start + len(values)] = values
    expected = tok.tensors(tokens[None])
    for n, s in zip(tok.names, tok.segments):
        torch.testing.assert_close(rebuilt[n].view(s.shape), expected[n][0])
        torch.testing.assert_close(rebuilt[n].view(s.shape), states[2][n], atol=1e-5, rtol=1e-5)
    assert torch.equal(tok.valid_counts, tok.mask.sum(1))


# -- generators to file ------------------------------------------------------------------------

@pytest.mark.parametrize("recurrent_input", ["positions", "tokens"])
def test_rpg_file_equals_in_memory_sample(tmp_path, recurrent_input):
    gen, tok, states = _standalone(_spec(recurrent_input=recurrent_input, sample_chunk=3))
    _jitter(gen)
    info = gen.sample_to_file(tmp_path / "a.safetensors", seed=5, sampler="ddim", steps=3)
    assert info["nonfinite"] == 0 and info["params"] == tok.num_params
    on_disk = load_file(str(tmp_path / "a.safetensors"))
    in_memory = next(gen.sample(1, seed=5, sampler="ddim", steps=3))
    assert set(on_disk) == set(states[0])
    for k in on_disk:
        torch.testing.assert_close(on_disk[k], in_memory[k][0], atol=1e-5, rtol=1e-5)
    other = gen.sample_to_file(tmp_path / "b.safetensors", seed=6, sampler="ddim", steps=3)
    assert not torch.equal(load_file(other["path"])["a.weight"], on_disk["a.weight"])


def test_interrupted_generation_leaves_no_complete_looking_file(tmp_path, monkeypatch):
    gen, _, _ = _standalone(_spec(sample_chunk=2))
    calls = []

    def fail_later(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = gen._denoise
    monkeypatch.setattr(gen, "_denoise", fail_later)
    with pytest.raises(KeyboardInterrupt):
        gen.sample_to_file(tmp_path / "net.safetensors", seed=0, sampler="ddim", steps=2)
    assert not list(tmp_path.iterdir())


def test_fitted_rpg_file_loads_into_the_net(seeds_zoo, tmp_path):
    z = Zoo.open(seeds_zoo)
    try:
        gen = GENERATORS.get("rpg").from_zoo(_spec(steps=2), z, TOKENS16)
        gen.fit(z, show_progress=False)
        saved = gen.save(tmp_path / "gen")
    finally:
        z.close()
    # The saved reference holds only what is not generated; the layout keeps the net's order.
    meta = json.loads((saved / "generator.json").read_text())
    assert [row[0] for row in meta["layout"]] == list(gen.build_net().state_dict())
    assert load_file(str(saved / "reference.safetensors")).keys() == gen.reference.keys()
    assert not set(gen.reference) & set(gen.tokenizer.names)
    loaded = load_generator(saved)
    loaded.sample_to_file(tmp_path / "net.safetensors", seed=1, sampler="ddim", steps=2)
    net = loaded.build_net()
    net.load_state_dict(load_file(str(tmp_path / "net.safetensors")))  # strict: every key and shape


def test_pdiff_file_equals_in_memory_sample(pdiff_saved, tmp_path):
    gen = load_generator(pdiff_saved[0])
    gen.sample_to_file(tmp_path / "p.safetensors", seed=2, sampler="ddim", steps=3)
    on_disk = load_file(str(tmp_path / "p.safetensors"))
    in_memory = next(gen.sample(1, seed=2, sampler="ddim", steps=3))
    assert on_disk.keys() == in_memory.keys()
    assert all(torch.allclose(on_disk[k], in_memory[k][0], atol=1e-6) for k in on_disk)
    gen.build_net().load_state_dict(on_disk)


# -- bounded memory ----------------------------------------------------------------------------

def test_long_mamba_scan_equals_the_parallel_scan(monkeypatch):
    gen, tok, states = _standalone(_spec(layers=2))
    _jitter(gen)
    with torch.no_grad():
        parallel = gen.net.prototypes(torch.tensor([0, 1]))
        monkeypatch.setattr(rpg_mod, "MAMBA_SCAN_TOKENS", 2)  # 8 tokens: now "long"
        stepped = gen.net.prototypes(torch.tensor([0, 1]))
    torch.testing.assert_close(stepped, parallel, atol=1e-5, rtol=1e-4)


def test_chunk_is_capped_by_activation_memory(monkeypatch):
    gen, _, _ = _standalone(_spec(sample_chunk=1000))
    per_token = gen.net.denoiser.activation_bytes_per_token()
    assert gen.chunk_size() == 1000
    monkeypatch.setattr(rpg_mod, "SAMPLE_ACTIVATION_BYTES", 3 * per_token)
    assert gen.chunk_size() == 3
    sizes = []
    gen.net.denoiser.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0]))
    gen.sample_tokens(2, None, torch.Generator().manual_seed(0), "ddim", 2)
    assert max(sizes) == 3
