"""Pictures of neural fields: networks evaluated on a grid, shown as images (2D) or meshes (3D).

A field network maps coordinates ``(N, d)`` in [-1, 1]^d to values ``(N, 1)``. Many of them,
stacked as the evaluator stacks weights (``name -> (B, *shape)``), are evaluated at once on a
regular grid with ``functional_call`` under ``vmap``: images ``(B, R, R)`` for d = 2, volumes
``(B, R, R, R)`` for d = 3. The grid is the one the field families are fitted on
(``weightgen.fields.digits.grid_coords``): ``image[row, col]`` is the field at ``(x=col, y=row)``, and
``volume[i, j, k]`` at ``(x=k, y=j, z=i)``, so a digit field shows upright with row 0 at the top.

Three pictures, drawn with matplotlib (Agg, no display needed):

- ``plot_grid``: generated fields, each beside (under) its nearest training field (L2 between the
  rendered fields), so copies of the training set show at a glance;
- ``plot_strip`` and ``write_gif``: a denoising strip, the fields decoded from the sampler's
  prediction of the clean sample at several steps from noise to the end (``decode_during_sampling``);
- 3D panels: the isosurface at ``level`` by marching cubes (scikit-image, the ``fields`` extra,
  imported only here), drawn as a ``Poly3DCollection``; a field that is nowhere above the level has no
  surface, and its panel is left blank with a logged warning.
"""
from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import digits
from .fit import field_values

log = logging.getLogger(__name__)

# Grid points per side by dimension: a 64^3 volume costs 8 times a 32^3 one (about 0.2 s per 2k-parameter
# field on one core), and a zoo's nearest fields render every training field.
DEFAULT_RESOLUTION = {2: 64, 3: 32}
# The isosurface of an occupancy field: inside where the value exceeds one half.
DEFAULT_LEVEL = 0.5


class FieldError(ValueError):
    """A net that is not a field, or a rendering request that cannot be met (one line)."""


# -- evaluation on a grid --------------------------------------------------------------------
def grid_coords(resolution: int, dim: int) -> Tensor:
    """``(R ** dim, dim)`` points ``(x, y[, z])`` of the regular grid on [-1, 1]^dim, row-major with x
    along the last axis (as the field families are fitted), so ``values.view(R, ..., R)`` is the image
    or volume."""
    if resolution <= 0:
        raise FieldError(f"resolution must be a positive number of grid points per side, got {resolution}")
    if dim not in (2, 3):
        raise FieldError(f"fields are rendered in 2 or 3 dimensions, got {dim}")
    return digits.grid_coords(resolution, dim)


def field_dim(input_shape: Sequence[int], num_classes: int) -> int:
    """The field's dimension d from a net recipe (``input_shape == (d,)``, one output, d in 2 or 3);
    a net of any other shape is refused in one line."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 1 or shape[0] not in (2, 3) or int(num_classes) != 1:
        raise FieldError(f"not a field network: it takes inputs of shape {shape} and gives {num_classes} outputs; "
                         "a field takes (2,) or (3,) coordinates and gives 1 value")
    return shape[0]


def check_field(net: nn.Module, dim: int) -> None:
    """One forward pass on a single point: ``net`` must map ``(1, dim)`` coordinates to ``(1, 1)``."""
    try:
        with torch.no_grad():
            out = net.eval()(torch.zeros(1, dim))
    except RuntimeError as e:
        raise FieldError(f"not a field network: it cannot take (N, {dim}) coordinates "
                         f"({str(e).splitlines()[0]})") from None
    if tuple(out.shape) != (1, 1):
        raise FieldError(f"not a field network: (1, {dim}) coordinates give an output of shape {tuple(out.shape)}, "
                         "not (1, 1)")


@torch.no_grad()
def render_fields(net: nn.Module, stacked: dict[str, Tensor], resolution: int, dim: int) -> Tensor:
    """Evaluate B stacked field networks on the grid: ``(B, R, R)`` for dim 2, ``(B, R, R, R)``
    for dim 3, float32 on the CPU. ``net`` gives the architecture (its own weights are unused)."""
    coords = grid_coords(resolution, dim)
    check_field(net, dim)
    from weightgen.evaluate.batched import check_stacked

    try:
        b = check_stacked(net, stacked)
    except ValueError as e:
        raise FieldError(f"the weights do not fit the field network: {e}") from None
    return field_values(net, stacked, coords)[..., 0].view(b, *[resolution] * dim)


def nearest(generated: Tensor, training: Tensor) -> tuple[Tensor, Tensor]:
    """For each generated field ``(B, ...)``, the index of its nearest training field ``(M, ...)``
    by L2 distance over every grid value, and that distance as a root mean square (divided by the
    square root of the number of grid values, so it reads in the field's units at any resolution);
    both ``(B,)``."""
    d = torch.cdist(generated.flatten(1).double(), training.flatten(1).double())
    dist, idx = d.min(dim=1)
    return idx, (dist / generated[0].numel() ** 0.5).float()


def nearest_fields(net: nn.Module, training: dict[str, Tensor], generated: Tensor, chunk: int = 64
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Each generated field's nearest training field, from the training networks' stacked weights
    (rendered ``chunk`` at a time at the generated fields' resolution, so a zoo of thousands of 3D
    fields is never in memory at once): ``(indices (B,), rms distances (B,), fields (B, R, ...))``."""
    from weightgen.evaluate.batched import _num_models

    m, dim, resolution = _num_models(training), generated.dim() - 1, generated.shape[1]
    best = torch.full((len(generated),), float("inf"))
    idx = torch.zeros(len(generated), dtype=torch.long)
    fields = torch.zeros_like(generated)
    for start in range(0, m, chunk):
        part = render_fields(net, {k: v[start:start + chunk] for k, v in training.items()}, resolution, dim)
        i, d = nearest(generated, part)
        better = d < best
        best[better], idx[better], fields[better] = d[better], i[better] + start, part[i[better]]
    return idx, best, fields


# -- sampling: the fields at several steps of the reverse process ------------------------------
def strip_steps(total: int, frames: int) -> list[int]:
    """``frames`` step indices spread from the first step (0) to the last (``total - 1``)."""
    if frames < 2:
        raise FieldError(f"a denoising strip needs at least 2 frames, got {frames}")
    return sorted({round(i * (total - 1) / (frames - 1)) for i in range(frames)})


@torch.no_grad()
def decode_during_sampling(gen, n: int, condition: Any = None, seed: int = 0, frames: int = 6,
                           sampler: str = "ddpm", steps: int | None = None
                           ) -> tuple[list[int], list[dict[str, Tensor]]]:
    """The ``n`` networks that ``gen.sample(n, condition, seed, ...)`` makes, decoded at ``frames``
    steps of the reverse process: ``(timesteps, stacked state_dicts)``, one per frame, the last the
    finished sample.

    Works for any generator that samples through ``gen.diffusion``: sampling is run again with the
    same seed up to each chosen step and stopped there (``Diffusion.watching``), returning the
    prediction of the clean sample at that step in place of the sample; the generator decodes it
    by its own path (p-diff's autoencoder, RPG's token chunks), so the frames are networks exactly
    as its samples are. Costs about ``frames / 2`` extra samplings.
    """
    diffusion = getattr(gen, "diffusion", None)
    if diffusion is None or not hasattr(diffusion, "watching"):
        raise FieldError(f"generator '{gen.method}' does not sample through a Diffusion; it has no denoising strip")
    total = steps or (diffusion.timesteps if sampler == "ddpm" else min(60, diffusion.timesteps))
    picked = strip_steps(total, frames)
    labels, states = [], []
    for k in picked:
        seen: list[int] = []

        def stop_at(step: int, t: int, x0: Tensor, k=k, seen=seen) -> Tensor | None:
            if step == k:
                seen.append(t)
                return x0
            return None

        if k == total - 1:  # the finished sample, exactly as `sample` makes it
            batches = list(gen.sample(n, condition, seed, n, sampler, steps))
            labels.append(0)
        else:
            with diffusion.watching(stop_at):
                batches = list(gen.sample(n, condition, seed, n, sampler, steps))
            labels.append(seen[0] if seen else k)
        states.append({name: torch.cat([b[name] for b in batches]) for name in batches[0]})
    return labels, states


# -- pictures ----------------------------------------------------------------------------------
def _figure(rows: int, cols: int, dim: int, size: float = 1.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kw = {"subplot_kw": {"projection": "3d"}} if dim == 3 else {}
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.4), squeeze=False, **kw)
    return plt, fig, axes


def marching_cubes(volume: Tensor, level: float = DEFAULT_LEVEL):
    """``(vertices (V, 3) as (x, y, z) in [-1, 1]^3, faces (F, 3))`` as numpy arrays, the isosurface of
    ``volume`` (indexed z, y, x) at ``level`` (``evaluate.generative.marching_cubes``), or None with a
    logged warning where the field has no surface, so its panel is left blank."""
    from weightgen.evaluate.generative import EmptySurfaceError
    from weightgen.evaluate.generative import marching_cubes as mesh

    try:
        verts, faces = mesh(volume, level)
    except EmptySurfaceError as e:
        log.warning("%s; its panel is left blank", e)
        return None
    except ImportError:
        raise FieldError("3D fields need scikit-image for marching cubes: pip install 'weightgen[fields]'") from None
    return verts.numpy(), faces.numpy()


def draw_field(ax, field: Tensor, level: float = DEFAULT_LEVEL, vmin: float | None = None,
               vmax: float | None = None) -> None:
    """One field in one panel: an image (2D, gray, y down the rows) or its mesh (3D)."""
    if field.dim() == 2:
        ax.imshow(field.numpy(), cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    ax.set_axis_off()
    ax.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1))
    ax.set_box_aspect((1, 1, 1), zoom=1.3)  # the cube [-1, 1]^3 fills the panel
    mesh = marching_cubes(field, level)
    if mesh is None:
        ax.text2D(0.5, 0.5, "empty", ha="center", va="center", transform=ax.transAxes, color="0.5")
        return
    verts, faces = mesh
    tris = verts[faces]  # (F, 3, 3)
    normals = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)
    light = np.array([0.4, -0.5, 0.75]) / np.linalg.norm([0.4, -0.5, 0.75])
    shade = 0.35 + 0.65 * np.abs(normals @ light)  # Lambert, lit from both sides
    colors = np.stack([0.55 * shade, 0.65 * shade, 0.85 * shade, np.ones_like(shade)], axis=1)
    ax.add_collection3d(Poly3DCollection(tris, facecolors=colors, edgecolors="none", linewidth=0))


def _range(*fields: Tensor) -> tuple[float, float]:
    """One gray scale for every 2D panel of a picture, so panels compare."""
    values = torch.cat([f.flatten() for f in fields if f is not None and f.numel()])
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return 0.0, 1.0
    return float(finite.min()), float(finite.max())


def plot_grid(generated: Tensor, path: str | Path, training: Tensor | None = None, distances: Tensor | None = None,
              level: float = DEFAULT_LEVEL, columns: int = 8, title: str | None = None) -> Path:
    """A PNG of the generated fields ``(B, R, ...)``, each above its nearest training field
    (``training``, ``(B, R, ...)``, in the same order) with their distance (``nearest``), where given."""
    b, dim = len(generated), generated.dim() - 1
    cols = max(1, min(columns, b))
    groups = math.ceil(b / cols)
    per = 2 if training is not None else 1
    plt, fig, axes = _figure(groups * per, cols, dim)
    vmin, vmax = _range(generated, training) if dim == 2 else (None, None)
    for i in range(groups * cols):
        g, c = divmod(i, cols)
        top = axes[g * per, c]
        if i >= b:
            for r in range(per):
                axes[g * per + r, c].set_axis_off()
            continue
        draw_field(top, generated[i], level, vmin, vmax)
        top.set_title(f"sample {i}", fontsize=7)
        if training is not None:
            bottom = axes[g * per + 1, c]
            draw_field(bottom, training[i], level, vmin, vmax)
            label = "nearest train" if distances is None else f"nearest, rms {float(distances[i]):.3g}"
            bottom.set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)


def plot_strip(frames: Sequence[Tensor], timesteps: Sequence[int], path: str | Path, level: float = DEFAULT_LEVEL,
               title: str | None = None) -> Path:
    """A PNG of the denoising strip: one row per sample, one column per frame (``frames[k]`` is
    ``(B, R, ...)``), from noise on the left to the finished field on the right."""
    b, dim = len(frames[0]), frames[0].dim() - 1
    plt, fig, axes = _figure(b, len(frames), dim)
    vmin, vmax = _range(frames[-1]) if dim == 2 else (None, None)  # the finished fields' scale
    for k, (frame, t) in enumerate(zip(frames, timesteps)):
        for i in range(b):
            draw_field(axes[i, k], frame[i], level, vmin, vmax)
        axes[0, k].set_title("end" if k == len(frames) - 1 else f"t = {t}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)


def write_gif(frames: Sequence[Tensor], timesteps: Sequence[int], path: str | Path, level: float = DEFAULT_LEVEL,
              columns: int = 8, seconds_per_frame: float = 0.6) -> Path:
    """An animated GIF of the denoising strip: each frame shows every sample at one step, and the
    finished fields stay twice as long. Frames are drawn with matplotlib and joined with Pillow."""
    from PIL import Image

    b, dim = len(frames[0]), frames[0].dim() - 1
    cols = max(1, min(columns, b))
    rows = math.ceil(b / cols)
    vmin, vmax = _range(frames[-1]) if dim == 2 else (None, None)
    images = []
    for k, (frame, t) in enumerate(zip(frames, timesteps)):
        plt, fig, axes = _figure(rows, cols, dim)
        for i in range(rows * cols):
            ax = axes[divmod(i, cols)]
            if i < b:
                draw_field(ax, frame[i], level, vmin, vmax)
            else:
                ax.set_axis_off()
        fig.suptitle("end" if k == len(frames) - 1 else f"denoising: t = {t}", fontsize=9)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        images.append(Image.open(io.BytesIO(buf.getvalue())).convert("P", palette=Image.ADAPTIVE))
    ms = int(seconds_per_frame * 1000)
    durations = [ms] * (len(images) - 1) + [2 * ms]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    tmp.replace(path)
    return path


def _save(plt, fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


# -- the `weightgen render` job ----------------------------------------------------------------
def render_source(source: str | Path, out: str | Path, resolution: int | None = None, n: int = 16, strip: bool = False,
                  zoo: str | Path | None = None, condition: Any = None, seed: int = 0, sampler: str = "ddpm",
                  steps: int | None = None, frames: int = 6, level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """Pictures of the fields in ``source``: a folder written by ``weightgen sample`` (its first
    ``n`` networks) or a saved generator (it samples ``n``, and ``strip`` adds the denoising strip).
    With ``zoo``, the grid shows each field's nearest training field. ``resolution``: grid points per
    side (default ``DEFAULT_RESOLUTION`` of the field's dimension). Writes ``grid.png`` (and
    ``strip.png``, ``strip.gif``) in ``out``; returns what it wrote and the nearest distances."""
    from weightgen.generators import GeneratorError, load_generator
    from weightgen.nets import build_net
    from weightgen.pipeline import SAMPLES_JSON, read_samples

    source, out = Path(source), Path(out)
    if resolution is not None and resolution <= 0:
        raise FieldError(f"--resolution must be a positive number of grid points per side, got {resolution}")
    gen = None
    if (source / "generator.json").is_file():
        gen = load_generator(source, device="cpu")
        build = gen.net_build
    elif (source / SAMPLES_JSON).is_file():
        if strip:
            raise FieldError(f"{source}: the denoising strip needs a saved generator, not a folder of samples")
        meta, batches = read_samples(source, batch_size=n)
        build = meta.get("net_build")
        if build is None:
            raise FieldError(f"{source / SAMPLES_JSON}: has no 'net_build'; write the samples again with "
                             "`weightgen sample`")
    else:
        raise GeneratorError(f"{source}: neither a saved generator (generator.json) nor a folder of samples "
                             f"({SAMPLES_JSON})")
    dim = field_dim(build["input_shape"], build["num_classes"])
    resolution = resolution or DEFAULT_RESOLUTION[dim]
    net = build_net(build["name"], build["input_shape"], build["num_classes"], **build["kwargs"])
    check_field(net, dim)
    written: dict[str, Any] = {}
    if gen is not None:
        if strip:
            timesteps, states = decode_during_sampling(gen, n, condition, seed, frames, sampler, steps)
            fields = [render_fields(net, s, resolution, dim) for s in states]
            written["strip_png"] = str(plot_strip(fields, timesteps, out / "strip.png", level,
                                                  title=f"{source.name}: denoising, noise to field"))
            written["strip_gif"] = str(write_gif(fields, timesteps, out / "strip.gif", level))
            generated = fields[-1]
        else:
            stacked = next(iter(gen.sample(n, condition, seed, n, sampler, steps)))
            generated = render_fields(net, stacked, resolution, dim)
    else:
        generated = render_fields(net, next(iter(batches)), resolution, dim)
    training = distances = None
    if zoo is not None:
        from weightgen.pipeline import train_stack
        from weightgen.zoo import Zoo

        z = Zoo.open(zoo)
        zb = z.meta("net_build")
        if (zb["name"], list(zb["input_shape"]), zb["num_classes"]) != (build["name"], list(build["input_shape"]),
                                                                       build["num_classes"]):
            raise FieldError(f"zoo {zoo}: its net ({zb['name']}, input {tuple(zb['input_shape'])}) is not the "
                             f"samples' net ({build['name']}, input {tuple(build['input_shape'])})")
        _, distances, training = nearest_fields(net, train_stack(z), generated)
        written["nearest_rms"] = [round(float(d), 6) for d in distances]
    written["grid_png"] = str(plot_grid(generated, out / "grid.png", training, distances, level,
                                        title=f"{source.name}: generated" + (", nearest training field below"
                                                                             if training is not None else "")))
    written["n"], written["dim"], written["resolution"] = len(generated), dim, resolution
    return written
