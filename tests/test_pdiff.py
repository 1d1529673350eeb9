"""p-diff (weightgen/generators/pdiff.py): the autoencoder's geometry, noise augmentation,
spec validation, fitting on a tiny tail zoo, sampling full state_dicts, save/load."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import nn

from conftest import PDIFF_GEN, PDIFF_ZOO_CFG, parse, tiny_cfg
from weightgen.config import ConfigError, PDiffSpec, TokenizerSpec
from weightgen.generators import GENERATORS, GeneratorError, load_generator
from weightgen.generators.pdiff import PDiff, PDiffAutoencoder, augment
from weightgen.zoo import Zoo


def _spec(**overrides) -> PDiffSpec:
    return PDiffSpec.model_validate({**PDIFF_GEN, **overrides})


@pytest.fixture
def zoo(pdiff_zoo):
    z = Zoo.open(pdiff_zoo)
    yield z
    z.close()


@pytest.fixture
def fitted(pdiff_saved):
    """A fresh instance of the session's fitted p-diff (safe to modify)."""
    return load_generator(pdiff_saved[0])


def _new(zoo, **overrides) -> PDiff:
    return GENERATORS.get("pdiff").from_zoo(_spec(**overrides), zoo, parse(PDIFF_ZOO_CFG).tokenizer)


def _one(gen, n=3, **kwargs) -> dict[str, torch.Tensor]:
    batches = list(gen.sample(n, **kwargs))
    assert len(batches) == 1
    return batches[0]


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the autoencoder ------------------------------------------------------------------------

@pytest.mark.parametrize("length,fold,kernel,enc,dec", [
    (7, 2, 3, [2, 2], [2, 4]),
    (394, 3, 3, [2, 2, 2, 2], [2, 16, 16, 8]),  # the demo's 394 values and autoencoder
    (2048, 3, 3, [2, 2, 2, 2], [2, 16, 16, 8]),
    (2048, 5, 5, [4, 4, 4, 4], [4, 8, 8, 8]),
    (100, 4, 1, [3], [3]),
    (486, 3, 5, [2, 3, 4, 5, 6], [6, 5, 4, 3, 2]),  # 2 x 3^5: no padding at all
], ids=["7", "394-demo", "2048-fold3", "2048-fold5", "100-one-stage", "486-exact"])
def test_autoencoder_geometry(length, fold, kernel, enc, dec):
    torch.manual_seed(0)
    ae = PDiffAutoencoder(length, fold, kernel, enc, dec)
    levels = len(enc)
    assert ae.padded % fold**levels == 0 and length <= ae.padded < length + fold**levels
    assert ae.latent_shape == (enc[-1], ae.padded // fold**levels)
    x = torch.randn(3, length)
    for mode in (ae.train, ae.eval):
        mode()
        z = ae.encode(x)
        assert z.shape == (3, *ae.latent_shape)
        assert z.abs().max() < 1  # Tanh on the latent
        y = ae.decode(z)
        assert y.shape == (3, length)  # exact length, padding cropped
        assert torch.isfinite(y).all()
    assert not torch.allclose(ae.encode(x + torch.randn_like(x)), ae.encode(x))


@pytest.mark.parametrize("length,fold,enc,dec", [
    (1, 2, [2], [2]),
    (394, 5, [4, 4, 4, 4], [4, 256, 256, 8]),  # PDiffSpec's defaults on the demo's 394 values
    (600, 5, [4, 4, 4, 4], [4, 8, 8, 8]),
], ids=["length-1", "394-default-spec", "600-default-fold"])
def test_autoencoder_with_a_latent_of_length_one(length, fold, enc, dec):
    """A latent of one position per channel (any length <= fold**levels: with the spec's defaults,
    every net of <= 625 generated values) is padded to two, so the InstanceNorms always see more
    than one spatial element, in train and in eval mode."""
    ae = PDiffAutoencoder(length, fold, 3, enc, dec)
    x = torch.randn(2, length)
    for mode in (ae.train, ae.eval):
        mode()
        assert ae.decode(ae.encode(x)).shape == (2, length)


def test_augment_mixes_noise_in_as_the_released_code():
    x = torch.randn(4, 50)
    assert augment(x, 0.0) is x
    torch.manual_seed(5)
    mixed = augment(x, 0.1)
    torch.manual_seed(5)
    eps = torch.randn_like(x)
    torch.testing.assert_close(mixed, x * 0.9 + 0.1 * eps)
    torch.manual_seed(5)
    assert torch.equal(augment(x, 0.1), mixed)  # seeded: reproducible
    assert not torch.equal(augment(x, 0.1), mixed)  # and not the same noise twice


# -- the spec -------------------------------------------------------------------------------

def test_spec_validation():
    with pytest.raises(ValidationError, match=r"dec_channels must start with .* enc_channels\[-1\] = 4"):
        PDiffSpec(enc_channels=[2, 4], dec_channels=[2, 8])
    with pytest.raises(ValidationError, match="same number of stages"):
        PDiffSpec(enc_channels=[2, 2], dec_channels=[2, 8, 8])
    with pytest.raises(ValidationError, match="fold_rate"):
        PDiffSpec(fold_rate=1)
    with pytest.raises(ConfigError, match=r"generator[.a-z]*: unknown key 'ae_stepz' \(did you mean 'ae_steps'"):
        parse(tiny_cfg(generator={"method": "pdiff", "ae_stepz": 3}))
    with pytest.raises(ConfigError, match=r"generator.*dec_channels must start"):
        parse(tiny_cfg(generator={"method": "pdiff", "enc_channels": [3], "dec_channels": [4]}))
    ok = PDiffSpec(enc_channels=[3, 5], dec_channels=[5, 7])
    assert ok.ema is None and ok.diffusion.timesteps == 1000


def test_spec_rejects_empty_channel_lists():
    """Empty channel lists are refused by the spec, not left to fail inside PDiffAutoencoder."""
    with pytest.raises(ValidationError, match="channels"):
        PDiffSpec(enc_channels=[], dec_channels=[])


def test_non_flat_tokenizer_is_refused(zoo):
    with pytest.raises(GeneratorError, match="flat"):
        GENERATORS.get("pdiff").from_zoo(_spec(), zoo, TokenizerSpec(include=["head.*"], token_size=16))


# -- fitting and sampling ---------------------------------------------------------------------

def test_fit_stats_and_full_state_dicts(pdiff_saved, zoo, fitted):
    _, stats = pdiff_saved
    members = zoo.members("train")
    assert stats["num_train"] == len(members) == 24
    assert stats["latent_dim"] == fitted.latent_dim == 2 * 10  # 90 values -> 2 channels x 90 / 3^2
    for key in ("ae_loss", "ae_recon_mse", "diffusion_loss", "fit_seconds"):
        assert math.isfinite(stats[key]) and stats[key] >= 0, key
    assert fitted.tokenizer.names == ["head.weight", "head.bias"]

    net = fitted.build_net()
    reference = zoo.load(members[0])
    batch = _one(fitted, 4)
    assert set(batch) == set(net.state_dict())  # every key of the net, nothing else
    for k, v in batch.items():
        assert v.shape == (4, *net.state_dict()[k].shape), k
        assert v.dtype == net.state_dict()[k].dtype, k
        if k not in fitted.tokenizer.names:  # BatchNorm buffers, frozen convs: the reference's
            assert all(torch.equal(v[i], reference[k]) for i in range(4)), k
    assert torch.isfinite(batch["head.weight"]).all()
    assert not torch.equal(batch["head.weight"][0], batch["head.weight"][1])
    assert not torch.equal(batch["head.weight"][0], reference["head.weight"])
    for i in range(4):
        net.load_state_dict({k: v[i] for k, v in batch.items()}, strict=True)
        assert torch.equal(net.head.weight, batch["head.weight"][i])


def test_autoencoder_learns(zoo):
    """A real learning check: 200 steps bring the reconstruction error well below the
    error of the same autoencoder before training, on the same checkpoints."""
    torch.manual_seed(0)
    gen = _new(zoo, ae_steps=200, diffusion_steps=0, batch_size=24)
    x = gen.training_tokens(zoo)[:, 0, :]
    gen.ae.eval()
    with torch.no_grad():
        before = nn.functional.mse_loss(gen.ae.decode(gen.ae.encode(x)), x).item()
    stats = gen.fit(zoo, show_progress=False)
    with torch.no_grad():
        after = nn.functional.mse_loss(gen.ae.decode(gen.ae.encode(x)), x).item()
    assert stats["ae_recon_mse"] == pytest.approx(after, rel=1e-5)
    assert stats["diffusion_loss"] is None  # no diffusion steps asked for
    assert after < 0.3 * before, (before, after)


def test_a_generator_saved_with_removed_keys_loads_at_their_defaults_and_is_refused_otherwise(pdiff_saved, tmp_path):
    def saved_with(**extra):
        d = shutil.copytree(pdiff_saved[0], tmp_path / f"gen{len(list(tmp_path.iterdir()))}")
        meta = json.loads((d / "generator.json").read_text())
        meta["spec"].update(extra)
        (d / "generator.json").write_text(json.dumps(meta))
        return d

    gen = load_generator(saved_with(latent_norm="none", noise_mode="mix"))
    assert _equal_states(_one(gen, 2, seed=3), _one(load_generator(pdiff_saved[0]), 2, seed=3))
    with pytest.raises(GeneratorError, match="spec: 'latent_norm' is 'standardize'.*removed.*What did not work"):
        load_generator(saved_with(latent_norm="standardize"))
    with pytest.raises(GeneratorError, match="spec: 'noise_mode' is 'add'"):
        load_generator(saved_with(noise_mode="add"))


def test_an_unknown_top_level_key_of_generator_json_is_refused(pdiff_saved, tmp_path):
    d = shutil.copytree(pdiff_saved[0], tmp_path / "gen")
    meta = json.loads((d / "generator.json").read_text())
    assert set(meta) == {"method", "spec", "net_build", "layout", "weightgen_version"}  # what p-diff writes loads
    (d / "generator.json").write_text(json.dumps({**meta, "weightgen_versoin": "0"}))
    with pytest.raises(GeneratorError, match=r"generator\.json: unknown key 'weightgen_versoin' \(did you mean "
                                             r"'weightgen_version'\?\); allowed keys: method, spec, net_build"):
        load_generator(d)


def test_save_load_round_trip_is_bit_identical(pdiff_saved, tmp_path):
    directory, _ = pdiff_saved
    a = load_generator(directory)
    b = load_generator(a.save(tmp_path / "again"))
    assert type(b) is PDiff and b.spec == a.spec and b.net_build == a.net_build
    assert b.tokenizer.names == a.tokenizer.names
    assert _equal_states(a.reference, b.reference)
    for name, module in a.components().items():
        assert _equal_states(module.state_dict(), b.components()[name].state_dict()), name
    for sampler in ("ddpm", "ddim"):
        assert _equal_states(_one(a, 3, seed=11, sampler=sampler, steps=10),
                             _one(b, 3, seed=11, sampler=sampler, steps=10))


def test_the_fitted_generator_is_what_was_saved(pdiff_zoo, tmp_path):
    """fit -> save -> load gives the same samples as the fitted object itself."""
    from weightgen.pipeline import fit_generator

    zoo = Zoo.open(pdiff_zoo)
    try:
        cfg = parse({**PDIFF_ZOO_CFG, "generator": {**PDIFF_GEN, "ae_steps": 5, "diffusion_steps": 5}})
        gen, _ = fit_generator(cfg, zoo, show_progress=False)
    finally:
        zoo.close()
    loaded = load_generator(gen.save(tmp_path / "g"))
    assert _equal_states(_one(gen, 2, seed=1), _one(loaded, 2, seed=1))


GENERATOR_FILES = ["generator.json", "tokenizer.json", "tokenizer.safetensors", "weights.safetensors",
                   "reference.safetensors"]


@pytest.mark.parametrize("damage", ["missing", "truncated"])
@pytest.mark.parametrize("name", GENERATOR_FILES)
def test_load_names_the_missing_or_corrupt_file(pdiff_saved, tmp_path, name, damage):
    """A missing or truncated generator file is named in the error."""
    d = shutil.copytree(pdiff_saved[0], tmp_path / "gen")
    f = d / name
    if damage == "missing":
        f.unlink()
    else:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(GeneratorError) as err:
        load_generator(d)
    assert name in str(err.value)


def test_load_refuses_weights_that_do_not_fit_the_spec(pdiff_saved, tmp_path):
    d = shutil.copytree(pdiff_saved[0], tmp_path / "gen")
    meta = json.loads((d / "generator.json").read_text())
    meta["spec"]["denoiser_channels"] = [8, 32]
    (d / "generator.json").write_text(json.dumps(meta))
    with pytest.raises(GeneratorError, match=r"weights\.safetensors.*'denoiser'"):
        load_generator(d)
    meta["spec"]["fold_rate"] = 1
    (d / "generator.json").write_text(json.dumps(meta))
    with pytest.raises(GeneratorError, match=r"(?s)generator\.json: bad spec.*fold_rate"):
        load_generator(d)


def test_condition_is_refused(fitted):
    with pytest.raises(GeneratorError, match="unconditional"):
        next(fitted.sample(2, condition={"code": "0000000011"}))


def test_sampling_streams_bounded_batches(fitted, monkeypatch):
    sizes = []
    inner = fitted.sample_tokens

    def spy(n, *args, **kwargs):
        sizes.append(n)
        return inner(n, *args, **kwargs)

    monkeypatch.setattr(fitted, "sample_tokens", spy)
    it = fitted.sample(7, seed=0, batch_size=3, sampler="ddim", steps=5)
    assert sizes == []  # lazy: nothing is drawn before it is asked for
    first = next(it)
    assert sizes == [3]
    rest = list(it)
    assert sizes == [3, 3, 1]
    assert [b["head.weight"].shape[0] for b in [first, *rest]] == [3, 3, 1]
    assert all(b.keys() == first.keys() for b in rest)


def test_seeds(fitted):
    a, b, c = (_one(fitted, 3, seed=s, sampler="ddim", steps=10) for s in (0, 0, 1))
    assert _equal_states(a, b)
    assert not torch.equal(a["head.weight"], c["head.weight"])
    torch.manual_seed(99)  # the global RNG plays no part in sampling
    assert _equal_states(_one(fitted, 3, seed=0, sampler="ddim", steps=10), a)


def test_samples_do_not_depend_on_the_batch_size(fitted):
    """Each sample draws all its noise from a stream of its own (``per_sample_noise``): the batch it
    is made in changes only the float rounding of batched matrix products."""
    for sampler, steps in (("ddpm", None), ("ddim", 5)):
        made = []
        for batch_size in (5, 2, 1):
            batches = list(fitted.sample(5, seed=3, batch_size=batch_size, sampler=sampler, steps=steps))
            made.append({k: torch.cat([b[k] for b in batches]) for k in fitted.tokenizer.names})
        for other in made[1:]:
            for k in fitted.tokenizer.names:
                torch.testing.assert_close(other[k], made[0][k], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(made[0]["head.weight"][0], made[0]["head.weight"][1])  # and samples differ


def test_ema_is_used_saved_and_loaded(zoo, tmp_path):
    torch.manual_seed(0)
    gen = _new(zoo, ema=0.9, ae_steps=5, diffusion_steps=20)
    assert "ema" in gen.components()
    gen.fit(zoo, show_progress=False)
    ema_w, live_w = gen.ema.module.out.weight, gen.denoiser.out.weight
    assert not torch.equal(ema_w, live_w)  # an average, not a copy
    assert int(gen.ema.n_averaged) == 20
    d = gen.save(tmp_path / "g")
    assert any(k.startswith("ema.") for k in load_file(str(d / "weights.safetensors")))
    loaded = load_generator(d)
    assert loaded.ema is not None and "ema" in loaded.components()
    assert _equal_states(loaded.ema.state_dict(), gen.ema.state_dict())
    before = _one(loaded, 2, seed=4, sampler="ddim", steps=5)
    with torch.no_grad():  # sampling reads the EMA weights, not the live denoiser's
        for p in loaded.denoiser.parameters():
            p.add_(1.0)
    assert _equal_states(_one(loaded, 2, seed=4, sampler="ddim", steps=5), before)
    with torch.no_grad():
        loaded.ema.module.out.weight.add_(1.0)
    assert not torch.equal(_one(loaded, 2, seed=4, sampler="ddim", steps=5)["head.weight"], before["head.weight"])
    # and without EMA nothing of the kind is saved
    assert "ema" not in load_generator(_new(zoo).save(tmp_path / "plain")).components()
    # ema_warmup is part of the spec: a loaded generator averages with the schedule it was fitted with
    assert not loaded.ema.warmup
    assert load_generator(_new(zoo, ema=0.9, ema_warmup=True).save(tmp_path / "warm")).ema.warmup
