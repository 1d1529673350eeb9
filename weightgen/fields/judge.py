"""Generated fields judged as a set against held-out fields: MMD, COV and 1-NNA, and novelty at equal quality.

A field report compares several groups of decoded fields with one reference set, the first half of the
zoo's held-out fields, each group as many fields as the reference:

- ``generated``: the generator's samples (spread evenly over the classes asked for);
- ``noise_<sigma>``: training fields' weights plus Gaussian noise, one group per ``evaluate.sigmas``;
- ``weight_average``: the average of the training weights (of each class, for a class-conditioned
  generator, in the classes the generated fields were asked for);
- ``heldout``: the second half of the held-out fields, real fields the generator never saw: the
  reference's own score, what a perfect generator reaches.

2D fields are compared by L2 over the decoded image, 3D fields by Chamfer distance between
``SURFACE_POINTS`` points sampled on each field's isosurface (HyperDiffusion's protocol). A field with no
surface (nowhere or everywhere inside) stands as one point at the origin, far from every shape, and is
counted as ``empty``.
"""
from __future__ import annotations

import torch

from weightgen.evaluate.generative import (DISTANCES, EmptySurfaceError, coverage, marching_cubes, mmd, one_nna,
                                           sample_mesh)

SURFACE_POINTS = 2048  # points per 3D surface, as HyperDiffusion samples them
SURFACE_LEVEL = 0.5  # occupancy in [0, 1]: inside above one half


def surface_clouds(volumes: torch.Tensor, points: int = SURFACE_POINTS, seed: int = 0) -> tuple[torch.Tensor, int]:
    """``points`` points on the isosurface of each volume ``(B, R, R, R)`` (marching cubes, sampled by area,
    seeded): ``((B, points, 3), number of volumes with no surface)``."""
    gen = torch.Generator().manual_seed(seed)
    clouds, empty = torch.zeros(len(volumes), points, 3), 0
    for i, vol in enumerate(volumes):
        try:
            clouds[i] = sample_mesh(*marching_cubes(vol, SURFACE_LEVEL), points, gen)
        except EmptySurfaceError:
            empty += 1  # stays at the origin
    return clouds, empty


def set_items(values: torch.Tensor, grid: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, int]:
    """What the set metrics compare for decoded fields ``(M, P, 1)`` on ``grid``: the images themselves (2D),
    or surface point clouds (3D), and the number of fields with no surface."""
    fields = values.nan_to_num(0.0).view(len(values), *grid)
    if len(grid) == 3:
        return surface_clouds(fields, seed=seed)
    return fields, 0


def set_metrics(groups: dict[str, torch.Tensor], reference: torch.Tensor, grid: tuple[int, ...],
                seed: int = 0) -> dict[str, dict]:
    """MMD, COV and 1-NNA of each group of decoded fields against the reference ``(R, P, 1)``, under L2
    (2D) or Chamfer distance (3D); each group's entry also has ``n`` and ``empty``. Each field's surface
    points are sampled once, and the reference's own distances are computed once for every group."""
    dist = DISTANCES["chamfer" if len(grid) == 3 else "l2"]
    ref, _ = set_items(reference, grid, seed)
    d_rr = dist(ref)
    out = {}
    for name, values in groups.items():
        items, empty = set_items(values, grid, seed)
        d_gr = dist(items, ref)
        out[name] = {"n": len(values), "empty": empty, "mmd": mmd(d_gr), "cov": coverage(d_gr),
                     **one_nna(dist(items), d_rr, d_gr)}
    return out


def even_picks(total: int, n: int) -> torch.Tensor:
    """``n`` indices spread evenly over ``range(total)``, so a class-ordered set keeps every class."""
    return torch.linspace(0, total - 1, n).round().long() if n < total else torch.arange(total)


def class_averages(train: dict[str, torch.Tensor], labels: torch.Tensor, asked: list[int | None]) -> dict:
    """The ``weight_average`` group's weights: for each field asked for, the average of the training weights
    of its class (of every training field where no class was asked)."""
    means = {}
    for c in set(asked):
        pick = torch.ones_like(labels, dtype=torch.bool) if c is None else labels == c
        if not bool(pick.any()):
            pick = torch.ones_like(labels, dtype=torch.bool)
        means[c] = {k: v[pick].float().mean(0) for k, v in train.items()}
    return {k: torch.stack([means[c][k] for c in asked]) for k in train}


def novelty_at_equal_quality(metrics: dict[str, dict], nearest: dict[str, float]) -> dict:
    """Whether the generated fields lie further from the training fields than noise-added training fields of
    the same quality. Quality is MMD against the reference (lower is better); ``nearest`` holds each group's
    mean distance to its nearest training field. The noise groups' nearest distance is interpolated, linearly
    in MMD, between the two noise levels whose MMD brackets the generated fields'. ``more_novel`` is None where
    no noise level is as good as the generated fields, or where every one is better and still further away
    (equal quality lies beyond the sweep)."""
    gen_mmd, gen_near = metrics["generated"]["mmd"], nearest["generated"]
    noise = sorted((float(k.split("_", 1)[1]), k) for k in metrics if k.startswith("noise_"))
    out = {"generated_nearest": gen_near, "noise": None, "noise_nearest": None, "more_novel": None}
    for (_, lo), (_, hi) in zip(noise, noise[1:]):
        m_lo, m_hi = metrics[lo]["mmd"], metrics[hi]["mmd"]
        if m_lo <= gen_mmd <= m_hi and m_hi > m_lo:
            t = (gen_mmd - m_lo) / (m_hi - m_lo)
            near = nearest[lo] + t * (nearest[hi] - nearest[lo])
            return {**out, "noise": f"{lo}..{hi}", "noise_nearest": near, "more_novel": gen_near > near}
    better = [k for _, k in noise if metrics[k]["mmd"] <= gen_mmd]
    if better:  # every tried level is better: equal quality needs more noise, so at least this much novelty
        k = better[-1]
        out.update(noise=k, noise_nearest=nearest[k], more_novel=False if gen_near <= nearest[k] else None)
    return out
