"""Pictures of neural fields (weightgen/fields/render.py, ``weightgen render``): the grid evaluation,
the nearest-field grid, the denoising strip and its sampling hook, 3D meshes, and bad input."""
from __future__ import annotations

import logging

import pytest
import torch
from typer.testing import CliRunner

from conftest import build, parse, tiny_cfg
from weightgen.cli import app
from weightgen.diffusion.schedule import Diffusion
from weightgen.evaluate import stack_states
from weightgen.fields.render import (FieldError, decode_during_sampling, field_dim, grid_coords, marching_cubes,
                                     nearest, nearest_fields, plot_grid, plot_strip, render_fields, write_gif)
from weightgen.nets import build_net
from weightgen.pipeline import fit_generator, write_samples
from weightgen.zoo import Zoo

runner = CliRunner()


def one_line_error(res, *needles: str) -> None:
    """Exit code 2, an ``error:`` naming every needle (rich wraps long lines: compared without
    whitespace), and no traceback."""
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error:") and "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    text = "".join(res.output.split())
    for n in needles:
        assert "".join(n.split()) in text, (n, res.output)

# Field networks: MLPs from (x, y) to one value, fitted on the `functions` regression task.
FIELD_CFG = dict(task={"name": "functions", "num_samples": 200},
                 train={"optimizer": "adam", "lr": 0.01, "batch_size": 32, "epochs": 1},
                 zoo={"mode": "seeds", "runs": 3, "checkpoints": 2, "every": 2})
TINY_PDIFF = {"method": "pdiff", "fold_rate": 3, "kernel_size": 3, "enc_channels": [2, 2], "dec_channels": [2, 8],
              "denoiser_channels": [8, 16], "ae_steps": 5, "diffusion_steps": 5, "batch_size": 4,
              "diffusion": {"timesteps": 10}}
TINY_RPG = {"method": "rpg", "d_model": 16, "layers": 1, "unet_channels": [4, 8], "kernel_size": 3, "steps": 5,
            "batch_size": 2, "tokens_per_step": 5, "diffusion": {"timesteps": 10}}


def linear_fields(a_b: list[tuple[float, float]], hidden: int = 4):
    """An ``mlp`` (2 -> hidden -> 1) and, per (a, b), weights making it the field a * c0 + b * c1
    on [-1, 1]^2 (one ReLU unit kept positive by a bias of 3, taken off again at the output)."""
    net = build_net("mlp", (2,), 1, hidden=[hidden])
    states = []
    for a, b in a_b:
        s = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
        s["1.weight"][0] = torch.tensor([a, b])
        s["1.bias"][0] = 3.0
        s["3.weight"][0, 0] = 1.0
        s["3.bias"][0] = -3.0
        states.append(s)
    return net, stack_states(states)


@pytest.fixture(scope="module")
def field_zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoos") / "fields"
    build(tiny_cfg(**FIELD_CFG), path)
    return path


@pytest.fixture(scope="module", params=["pdiff", "rpg"])
def field_gen(request, field_zoo, tmp_path_factory):
    pdiff = request.param == "pdiff"
    cfg = parse(tiny_cfg(**FIELD_CFG, generator=TINY_PDIFF if pdiff else TINY_RPG,
                         tokenizer={"token_size": "flat" if pdiff else 8}))
    with Zoo.open(field_zoo) as zoo:
        gen, _ = fit_generator(cfg, zoo, show_progress=False)
    path = tmp_path_factory.mktemp("gens") / request.param
    gen.save(path)
    return gen, path


# -- evaluation on a grid ------------------------------------------------------------------------
def test_grid_coords_are_the_grid_the_field_families_are_fitted_on():
    from weightgen.fields import digits

    g = grid_coords(3, 2)
    assert g.shape == (9, 2)
    assert g[0].tolist() == [-1.0, -1.0] and g[1].tolist() == [0.0, -1.0] and g[-1].tolist() == [1.0, 1.0]
    assert grid_coords(4, 3).shape == (64, 3) and grid_coords(4, 3)[1].tolist()[1:] == [-1.0, -1.0]
    for dim in (2, 3):
        assert torch.equal(grid_coords(5, dim), digits.grid_coords(5, dim))


def test_a_hand_made_linear_field_renders_its_values():
    net, stacked = linear_fields([(1.0, 0.0), (0.0, 2.0), (0.5, -0.5)])
    img = render_fields(net, stacked, 5, 2)
    axis = torch.linspace(-1, 1, 5)
    assert img.shape == (3, 5, 5)
    torch.testing.assert_close(img[0], axis[None, :].expand(5, 5))  # x along the columns
    torch.testing.assert_close(img[1], 2 * axis[:, None].expand(5, 5))  # y down the rows
    torch.testing.assert_close(img[2], 0.5 * axis[None, :] - 0.5 * axis[:, None])


def test_volumes_have_one_axis_per_coordinate():
    net = build_net("mlp", (3,), 1, hidden=[4])
    stacked = stack_states([build_net("mlp", (3,), 1, hidden=[4], seed=s).state_dict() for s in range(2)])
    vol = render_fields(net, stacked, 6, 3)
    assert vol.shape == (2, 6, 6, 6)
    one = build_net("mlp", (3,), 1, hidden=[4], seed=1).eval()
    with torch.no_grad():
        torch.testing.assert_close(vol[1].reshape(-1), one(grid_coords(6, 3))[:, 0])


def test_nearest_finds_the_closest_training_field():
    train = torch.stack([torch.zeros(4, 4), torch.ones(4, 4), 2 * torch.ones(4, 4)])
    idx, dist = nearest(torch.stack([0.9 * torch.ones(4, 4), 2.2 * torch.ones(4, 4)]), train)
    assert idx.tolist() == [1, 2]
    torch.testing.assert_close(dist, torch.tensor([0.1, 0.2]))  # root mean square differences


def test_nearest_fields_renders_the_training_set_in_chunks():
    net, train = linear_fields([(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (-1.0, 0.0), (0.0, -1.0)])
    _, gen = linear_fields([(0.0, 0.9), (-1.1, 0.0)])
    generated = render_fields(net, gen, 6, 2)
    idx, dist, fields = nearest_fields(net, train, generated, chunk=2)
    assert idx.tolist() == [1, 3]
    every = render_fields(net, train, 6, 2)
    torch.testing.assert_close(fields, every[idx])
    torch.testing.assert_close(dist, nearest(generated, every)[1])


@pytest.mark.parametrize("resolution", [0, -3])
def test_a_resolution_of_zero_or_less_is_refused(resolution):
    net, stacked = linear_fields([(1.0, 0.0)])
    with pytest.raises(FieldError, match=f"resolution must be a positive number.*got {resolution}$"):
        render_fields(net, stacked, resolution, 2)


def test_a_net_that_is_not_a_field_is_refused():
    with pytest.raises(FieldError, match=r"not a field network: it takes inputs of shape \(64,\) and gives 10 outputs"):
        field_dim((64,), 10)
    with pytest.raises(FieldError, match="not a field network"):
        field_dim((2,), 3)
    assert field_dim([3], 1) == 3
    net = build_net("mlp", (2,), 3, hidden=[4])
    with pytest.raises(FieldError, match=r"give an output of shape \(1, 3\), not \(1, 1\)"):
        render_fields(net, stack_states([net.state_dict()]), 4, 2)
    with pytest.raises(FieldError, match="cannot take"):
        render_fields(build_net("mlp", (5,), 1, hidden=[4]), {}, 4, 2)


# -- pictures ------------------------------------------------------------------------------------
def test_grid_strip_and_gif_are_written(tmp_path):
    net, stacked = linear_fields([(1.0, 0.0), (0.0, 2.0)])
    img = render_fields(net, stacked, 8, 2)
    grid = plot_grid(img, tmp_path / "grid.png", img.flip(0), torch.tensor([1.0, 2.0]))
    strip = plot_strip([0.1 * img, 0.5 * img, img], [9, 4, 0], tmp_path / "strip.png")
    gif = write_gif([0.1 * img, 0.5 * img, img], [9, 4, 0], tmp_path / "strip.gif")
    for path, magic in ((grid, b"\x89PNG"), (strip, b"\x89PNG"), (gif, b"GIF8")):
        assert path.stat().st_size > 500 and path.read_bytes()[:4] == magic
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 3


def test_meshes_are_drawn_and_an_empty_isosurface_is_a_blank_panel(tmp_path, caplog):
    pytest.importorskip("skimage")
    g = grid_coords(12, 3).view(12, 12, 12, 3)
    sphere = 1.0 - 1.5 * g.norm(dim=-1)  # above 0.5 inside a sphere of radius 1/3
    verts, faces = marching_cubes(sphere, 0.5)
    assert len(faces) > 0 and verts.min() >= -1 and verts.max() <= 1
    radius = torch.as_tensor(verts).norm(dim=1).mean().float()
    torch.testing.assert_close(radius, torch.tensor(1 / 3), atol=0.03, rtol=0)
    # vertices are points (x, y, z): a ball moved along x is found there
    moved = 1.0 - 1.5 * (grid_coords(12, 3) - torch.tensor([0.5, 0.0, 0.0])).norm(dim=1).view(12, 12, 12)
    centre = torch.as_tensor(marching_cubes(moved, 0.5)[0]).mean(0).float()
    torch.testing.assert_close(centre, torch.tensor([0.5, 0.0, 0.0]), atol=0.03, rtol=0)
    with caplog.at_level(logging.WARNING):
        assert marching_cubes(torch.zeros(12, 12, 12), 0.5) is None
        assert marching_cubes(torch.full((12, 12, 12), float("nan")), 0.5) is None
        path = plot_grid(torch.stack([sphere, torch.zeros(12, 12, 12)]), tmp_path / "grid3.png")
    assert "no surface at level 0.5" in caplog.text and "non-finite" in caplog.text
    assert path.stat().st_size > 500


# -- the denoising strip's sampling hook --------------------------------------------------------------
def test_the_callback_sees_every_step_and_can_stop_sampling_early():
    diff = Diffusion(timesteps=10)
    denoise = lambda x, t: 0.1 * x  # noqa: E731
    plain = diff.sample(denoise, (3, 1, 4), torch.Generator().manual_seed(0))
    seen = []
    watched = diff.sample(denoise, (3, 1, 4), torch.Generator().manual_seed(0),
                          callback=lambda step, t, x0: seen.append((step, t)))
    assert torch.equal(plain, watched)
    assert seen == [(i, 9 - i) for i in range(10)]
    stopped = []
    with diff.watching(lambda step, t, x0: (stopped.append(x0), x0)[1] if step == 3 else None):
        early = diff.sample(denoise, (3, 1, 4), torch.Generator().manual_seed(0))
    assert torch.equal(early, stopped[0]) and diff.callback is None
    # the last step's prediction of the clean sample is the sample
    last = []
    diff.sample(denoise, (3, 1, 4), torch.Generator().manual_seed(0), callback=lambda s, t, x0: last.append(x0))
    torch.testing.assert_close(last[-1], plain)


def test_the_strip_ends_in_the_generators_own_sample(field_gen):
    gen, _ = field_gen
    timesteps, states = decode_during_sampling(gen, 3, seed=5, frames=4)
    assert len(states) == 4 and timesteps[0] == 9 and timesteps[-1] == 0 and timesteps == sorted(timesteps)[::-1]
    plain = next(iter(gen.sample(3, None, 5, 3)))
    for k in plain:
        assert torch.equal(states[-1][k], plain[k])
    assert any(not torch.equal(states[0][k], plain[k]) for k in gen.tokenizer.names)  # noise decodes otherwise
    assert gen.diffusion.callback is None
    timesteps, states = decode_during_sampling(gen, 2, seed=1, frames=3, sampler="ddim", steps=5)
    plain = next(iter(gen.sample(2, None, 1, 2, "ddim", 5)))
    assert len(timesteps) == 3 and timesteps[-1] == 0 and all(torch.equal(states[-1][k], plain[k]) for k in plain)


# -- the command ---------------------------------------------------------------------------------
def test_render_a_generator_with_strip_and_zoo(field_gen, field_zoo, tmp_path):
    _, path = field_gen
    out = tmp_path / "pics"
    res = runner.invoke(app, ["render", str(path), "--out", str(out), "--resolution", "8", "--n", "2", "--strip",
                              "--frames", "3", "--zoo", str(field_zoo)])
    assert res.exit_code == 0, res.output
    assert "2 2D fields rendered at 8 per side: strip.png, strip.gif, grid.png" in res.output
    for name in ("grid.png", "strip.png", "strip.gif"):
        assert (out / name).stat().st_size > 500


def test_render_a_folder_of_samples(field_gen, tmp_path):
    gen, _ = field_gen
    samples = tmp_path / "samples"
    write_samples(gen, samples, 3, 0, 3, "ddpm", None)
    res = runner.invoke(app, ["render", str(samples), "--out", str(tmp_path / "pics"), "--resolution", "6"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pics" / "grid.png").stat().st_size > 500
    res = runner.invoke(app, ["render", str(samples), "--out", str(tmp_path / "pics"), "--strip"])
    one_line_error(res, "the denoising strip needs a saved generator, not a folder of samples")


def test_render_refuses_bad_input_in_one_line(field_gen, tmp_path):
    _, path = field_gen
    for resolution in ("0", "-2"):
        res = runner.invoke(app, ["render", str(path), "--out", str(tmp_path / "o"), "--resolution", resolution])
        one_line_error(res, f"--resolution must be a positive number of grid points per side, got {resolution}")
    res = runner.invoke(app, ["render", str(tmp_path), "--out", str(tmp_path / "o")])
    one_line_error(res, "neither a saved generator (generator.json) nor a folder of samples (samples.json)")
    res = runner.invoke(app, ["render", str(path), "--out", str(tmp_path / "o"), "--classes", "3"])
    one_line_error(res, "is unconditional")


def test_render_refuses_a_net_that_is_not_a_field(tmp_path):
    """Samples of a digits classifier (64 inputs, 10 outputs): one line, before any picture."""
    from weightgen.pipeline import SAMPLES_JSON
    import json
    from safetensors.torch import save_file

    net = build_net("mlp", (64,), 10, hidden=[8])
    d = tmp_path / "samples"
    d.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "sample_0000.safetensors"))
    (d / SAMPLES_JSON).write_text(json.dumps({"n": 1, "method": "pdiff", "generated_names": list(net.state_dict()),
                                              "net_build": {"name": "mlp", "input_shape": [64], "num_classes": 10,
                                                            "kwargs": {"hidden": [8]}}}))
    res = runner.invoke(app, ["render", str(d), "--out", str(tmp_path / "o")])
    one_line_error(res, "not a field network: it takes inputs of shape (64,) and gives 10 outputs")
    assert not (tmp_path / "o" / "grid.png").exists()


def test_render_3d_samples_as_meshes_with_an_empty_one_blank(tmp_path, caplog):
    """A folder of two 3D fields: a half space (x + 0.5 above one half where x > 0) and a field that
    is zero everywhere; the grid is written, the empty one with a stated warning, never a traceback."""
    pytest.importorskip("skimage")
    import json

    from safetensors.torch import save_file

    from weightgen.pipeline import SAMPLES_JSON

    net = build_net("mlp", (3,), 1, hidden=[4])
    half = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    half["1.weight"][0] = torch.tensor([1.0, 0.0, 0.0])
    half["1.bias"][0] = 3.0
    half["3.weight"][0, 0] = 1.0
    half["3.bias"][0] = -2.5
    empty = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    d = tmp_path / "samples"
    d.mkdir()
    for i, s in enumerate((half, empty)):
        save_file(s, str(d / f"sample_{i:04d}.safetensors"))
    (d / SAMPLES_JSON).write_text(json.dumps({"n": 2, "method": "rpg", "generated_names": list(half),
                                              "net_build": {"name": "mlp", "input_shape": [3], "num_classes": 1,
                                                            "kwargs": {"hidden": [4]}}}))
    vol = render_fields(net, stack_states([half]), 5, 3)[0]
    torch.testing.assert_close(vol[:, :, 4], torch.full((5, 5), 1.5))  # x runs along the last axis
    with caplog.at_level(logging.WARNING):
        res = runner.invoke(app, ["render", str(d), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "2 3D fields rendered at 32 per side: grid.png" in res.output  # the 3D default
    assert "no surface at level" in caplog.text
    assert (tmp_path / "o" / "grid.png").stat().st_size > 500
