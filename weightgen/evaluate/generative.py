"""Generative metrics: how a set of generated fields compares with a set of reference (held-out) fields.

The three set-level metrics of PointFlow (Yang et al., 2019) that HyperDiffusion reports, computed from
distance matrices, so that any distance serves: Chamfer distance between surface point clouds for 3D
shapes, L2 between rendered images for 2D fields.

- **MMD** (minimum matching distance): the mean, over the reference items, of the distance to the
  nearest generated item. Lower is better: every reference item has a close generated one.
- **COV** (coverage): the share of reference items that are the nearest reference item of at least
  one generated item. Higher is better: generation does not collapse onto a few modes.
- **1-NNA** (1-nearest-neighbour accuracy): on the union of both sets, each item is classified as
  generated or reference by the set of its nearest other item (leave-one-out); the accuracy is the
  share classified right. 50% is ideal (the sets cannot be told apart); 100% means they are apart.
  A generated set that copies the reference exactly scores 0%: each item's nearest is its own twin
  in the other set. Ties count half: an item whose nearest in its own set and in the other set are
  at the same distance is half right, so the metric does not depend on how a sort breaks ties.

Chamfer distance is PointFlow's ``distChamfer`` as reported by PointFlow and HyperDiffusion: the mean
over the first set of the squared distance to the nearest point of the second, plus the same the other
way (squared distances, summed, not halved), from exact nearest neighbours found by scipy's KD-trees
(``chamfer_matrix``). ``surface_points`` turns a field network into such a
point cloud: the field on a grid, its isosurface by marching cubes (scikit-image, the ``fields``
extra), points sampled on the mesh by area.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch


# -- distances --------------------------------------------------------------------------------------------
def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the points of paired sets: ``(B, N, D)``, ``(B, M, D)`` -> ``(B, N, M)``."""
    aa = (a * a).sum(-1, keepdim=True)
    bb = (b * b).sum(-1)[:, None, :]
    return torch.baddbmm(aa + bb, a, b.transpose(1, 2), alpha=-2.0).clamp_(min=0)


def chamfer_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Chamfer distance between paired point sets ``a`` ``(B, N, D)`` and ``b`` ``(B, M, D)`` (or one
    pair ``(N, D)``, ``(M, D)``): mean squared distance from each point of ``a`` to its nearest in ``b``
    plus the same from ``b`` to ``a``. Symmetric, zero for identical sets. ``(B,)`` (or a scalar)."""
    single = a.dim() == 2
    if single:
        a, b = a[None], b[None]
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"chamfer_distance: point sets must be (B, N, D) and (B, M, D); got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    d = _sq_dists(a.float(), b.float())
    out = d.min(2).values.mean(1) + d.min(1).values.mean(1)
    return out[0] if single else out


def _morton_order(points: np.ndarray) -> np.ndarray:
    """The points of one cloud ``(N, 3)`` sorted along a Morton (Z-order) curve over their bounding box:
    neighbouring queries then walk neighbouring parts of a KD-tree, which keeps its nodes in cache."""
    lo, hi = points.min(0), points.max(0)
    q = ((points - lo) / np.maximum(hi - lo, 1e-12) * 1023).astype(np.int64)
    key = np.zeros(len(points), dtype=np.int64)
    for bit in range(10):
        for d in range(points.shape[1]):
            key |= ((q[:, d] >> bit) & 1) << (points.shape[1] * bit + d)
    return points[np.argsort(key, kind="stable")]


def _one_sided(queries: list[np.ndarray], targets: list[np.ndarray], workers: int) -> np.ndarray:
    """``(A, B)``: the mean squared distance from the points of ``queries[i]`` to their nearest in
    ``targets[j]``, each target's KD-tree built once and queried with every query cloud at once."""
    from scipy.spatial import cKDTree

    sizes = [len(q) for q in queries]
    stacked = np.concatenate(queries)
    ends = np.cumsum(sizes)[:-1]
    out = np.empty((len(queries), len(targets)))
    for j, cloud in enumerate(targets):
        dist, _ = cKDTree(cloud).query(stacked, k=1, workers=workers)
        out[:, j] = [part.mean() for part in np.split(dist * dist, ends)]
    return out


def chamfer_matrix(x: torch.Tensor, y: torch.Tensor | None = None, workers: int = 1) -> torch.Tensor:
    """Chamfer distance between every point set of ``x`` ``(A, N, D)`` and every one of ``y`` ``(B, M, D)``:
    ``(A, B)``; with ``y`` None (or ``x`` itself) the symmetric ``(A, A)`` of ``x`` with itself, whose
    zero diagonal is not computed and whose pairs are computed once.

    Exact nearest neighbours by KD-trees (scipy's ``cKDTree``, in float64): a tree per cloud, built once,
    queried with the points of every cloud of the other set. A pair costs about ``(N + M) log`` of a
    cloud's size rather than the ``N * M`` of all pairwise distances, so sets of a hundred shapes are
    judged on all 2,048 points. ``workers`` is the KD-tree's threads per query (-1: every core)."""
    same = y is None or y is x
    y = x if y is None else y
    if x.dim() != 3 or y.dim() != 3 or x.shape[-1] != y.shape[-1]:
        raise ValueError(f"chamfer_matrix: point sets must be (A, N, D) and (B, M, D); got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if not (x.shape[1] and y.shape[1]):
        raise ValueError(f"chamfer_matrix: every point set needs a point; got {tuple(x.shape)} and {tuple(y.shape)}")
    xs = [_morton_order(c) for c in x.detach().cpu().double().numpy()]
    if same:
        one = _one_sided(xs, xs, workers)
        d = one + one.T
        np.fill_diagonal(d, 0.0)
        return torch.from_numpy(d).float()
    ys = [_morton_order(c) for c in y.detach().cpu().double().numpy()]
    d = _one_sided(xs, ys, workers) + _one_sided(ys, xs, workers).T
    return torch.from_numpy(d).float()


def l2_matrix(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distance between every item of ``x`` ``(A, ...)`` and every item of ``y`` ``(B, ...)``
    (each flattened, e.g. images): ``(A, B)``; with ``y`` None, ``x`` with itself."""
    y = x if y is None else y
    x, y = x.reshape(len(x), -1).float(), y.reshape(len(y), -1).float()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"l2_matrix: items must have the same size; got {x.shape[1]} and {y.shape[1]} values")
    # the exact difference, not the faster |x|^2 + |y|^2 - 2xy: equal items are at distance 0, not 1e-4
    return torch.cdist(x[None], y[None], compute_mode="donot_use_mm_for_euclid_dist")[0]


# name -> f(x, y=None): the (A, B) matrix of x against y, or the symmetric (A, A) of x against itself
DISTANCES: dict[str, Callable[..., torch.Tensor]] = {
    "chamfer": chamfer_matrix, "l2": l2_matrix}


# -- the three metrics from distance matrices ----------------------------------------------------------
def mmd(d_gen_ref: torch.Tensor) -> float:
    """Minimum matching distance from ``d_gen_ref`` ``(G, R)`` (generated x reference): the mean over the
    reference items of the distance to their nearest generated item."""
    return float(d_gen_ref.min(0).values.mean())


def coverage(d_gen_ref: torch.Tensor) -> float:
    """Coverage from ``d_gen_ref`` ``(G, R)``: the share of reference items that are some generated
    item's nearest reference item."""
    return float(d_gen_ref.argmin(1).unique().numel() / d_gen_ref.shape[1])


def one_nna(d_gen_gen: torch.Tensor, d_ref_ref: torch.Tensor, d_gen_ref: torch.Tensor) -> dict[str, float]:
    """Leave-one-out 1-nearest-neighbour accuracy on the union of both sets: ``{"1nna", "1nna_gen",
    "1nna_ref"}`` (all items; generated items alone; reference items alone). Ties count half."""
    g, r = d_gen_ref.shape
    if d_gen_gen.shape != (g, g) or d_ref_ref.shape != (r, r):
        raise ValueError(f"one_nna: distance matrices must be (G, G), (R, R) and (G, R); got "
                         f"{tuple(d_gen_gen.shape)}, {tuple(d_ref_ref.shape)} and {tuple(d_gen_ref.shape)}")
    if g < 2 or r < 2:
        raise ValueError(f"one_nna: each set needs at least 2 items; got {g} generated and {r} reference")

    def own_nearest(d: torch.Tensor) -> torch.Tensor:
        return (d.float() + torch.diag(torch.full((len(d),), float("inf")))).min(1).values

    def right(same: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return (same < other).float() + 0.5 * (same == other).float()

    gen_right = right(own_nearest(d_gen_gen), d_gen_ref.float().min(1).values)
    ref_right = right(own_nearest(d_ref_ref), d_gen_ref.float().min(0).values)
    return {"1nna": float(torch.cat([gen_right, ref_right]).mean()),
            "1nna_gen": float(gen_right.mean()), "1nna_ref": float(ref_right.mean())}


def generative_metrics(generated: torch.Tensor, reference: torch.Tensor, distance: str = "chamfer",
                       points: int | None = None) -> dict[str, float]:
    """MMD, COV and 1-NNA of a generated set against a reference set, under ``distance``: ``chamfer``
    (point clouds ``(G, N, 3)``, ``(R, M, 3)``) or ``l2`` (any items, e.g. images ``(G, H, W)``).
    ``points`` keeps only the first that many points of each cloud (they are in random order), to
    bound the cost of Chamfer distances."""
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance '{distance}'; allowed: {', '.join(DISTANCES)}")
    if points is not None:
        if distance != "chamfer" or points < 1:
            raise ValueError(f"points={points}: only a positive number of points, with distance 'chamfer'")
        generated, reference = generated[:, :points], reference[:, :points]
    dist = DISTANCES[distance]
    d_gr = dist(generated, reference)
    return {"mmd": mmd(d_gr), "cov": coverage(d_gr), **one_nna(dist(generated), dist(reference), d_gr)}


# -- a field network's surface ----------------------------------------------------------------------------
class EmptySurfaceError(ValueError):
    """A field has no isosurface on the grid: it is nowhere inside (or everywhere)."""


def grid_coords(resolution: int, dims: int = 2) -> torch.Tensor:
    """``(resolution**dims, dims)`` points of the regular grid on [-1, 1]^dims, row-major with the last axis
    fastest, each point (x, y, ...) with x along the last axis: ``values.view(r, r)[row, col]`` is the
    field at ``(x=col, y=row)`` and ``values.view(r, r, r)`` indexes z, y, x. One point per side is the
    centre. Every field in the library is fitted, decoded and meshed on this grid."""
    axis = torch.linspace(-1.0, 1.0, resolution) if resolution > 1 else torch.zeros(1)
    mesh = torch.meshgrid(*([axis] * dims), indexing="ij")
    return torch.stack([m.reshape(-1) for m in reversed(mesh)], dim=1)


@torch.no_grad()
def field_volume(field: Callable[[torch.Tensor], torch.Tensor], resolution: int = 64, chunk: int = 65536) -> torch.Tensor:
    """A 3D field's values on the ``resolution``^3 grid of [-1, 1]^3 (``grid_coords``): ``(r, r, r)``,
    indexed z, y, x. ``field`` maps ``(N, 3)`` to ``(N, 1)`` or ``(N,)``."""
    if resolution < 2:
        raise ValueError(f"grid resolution must be at least 2, got {resolution}")
    pts = grid_coords(resolution, 3)
    vals = [field(pts[s : s + chunk]).reshape(-1).float() for s in range(0, len(pts), chunk)]
    return torch.cat(vals).view(resolution, resolution, resolution)


def marching_cubes(volume: torch.Tensor, level: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The isosurface at ``level`` of a volume on the ``grid_coords`` grid of [-1, 1]^3 (indexed z, y, x),
    by marching cubes (scikit-image): vertices ``(V, 3)`` as (x, y, z) points in [-1, 1]^3 and triangles
    ``(F, 3)``. Raises ``EmptySurfaceError`` (one line) where the values are not finite or never cross
    ``level``."""
    try:
        from skimage.measure import marching_cubes as _mc
    except ImportError as e:
        raise ImportError("marching cubes needs scikit-image: pip install 'weightgen[fields]'") from e
    vol = volume.detach().float().cpu()
    if vol.dim() != 3 or min(vol.shape) < 2:
        raise ValueError(f"marching_cubes: volume must be (Z, Y, X) with every side at least 2; got {tuple(vol.shape)}")
    if not bool(torch.isfinite(vol).all()):
        raise EmptySurfaceError("the field has non-finite values, so no surface")
    lo, hi = float(vol.min()), float(vol.max())
    if not lo < level < hi:
        raise EmptySurfaceError(f"the field has no surface at level {level:g}: its values on the "
                                f"{'x'.join(map(str, vol.shape))} grid span [{lo:.3g}, {hi:.3g}]")
    spacing = tuple(2.0 / (s - 1) for s in vol.shape)
    verts, faces, _, _ = _mc(vol.numpy(), level=level, spacing=spacing)
    return torch.from_numpy(verts[:, ::-1].copy()).float() - 1.0, torch.from_numpy(faces.copy()).long()


def sample_mesh(verts: torch.Tensor, faces: torch.Tensor, n: int = 2048,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points uniform by area on a triangle mesh: ``(n, 3)``."""
    tri = verts[faces]  # (F, 3, 3)
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
    if len(faces) == 0 or float(area.sum()) <= 0:
        raise EmptySurfaceError("the mesh has no area to sample points on")
    pick = torch.multinomial(area, n, replacement=True, generator=generator)
    r = torch.rand(n, 2, generator=generator)
    s = r[:, :1].sqrt()  # uniform on a triangle: (1 - s) a + s (1 - t) b + s t c
    t = tri[pick]
    return (1 - s) * t[:, 0] + s * (1 - r[:, 1:]) * t[:, 1] + s * r[:, 1:] * t[:, 2]


def surface_points(field: Callable[[torch.Tensor], torch.Tensor], n: int = 2048, resolution: int = 64,
                   level: float = 0.5, seed: int = 0, on_empty: str = "raise") -> torch.Tensor | None:
    """``n`` points on a 3D field's isosurface at ``level`` (0.5 for occupancy in [0, 1]): the field on a
    ``resolution``^3 grid, marching cubes, points sampled by area (seeded).

    A field that is nowhere inside has no surface: with ``on_empty="raise"`` that is an
    ``EmptySurfaceError`` of one line; with ``"warn"`` a one-line warning, and None is returned."""
    if on_empty not in ("raise", "warn"):
        raise ValueError(f"on_empty must be 'raise' or 'warn', got '{on_empty}'")
    try:
        verts, faces = marching_cubes(field_volume(field, resolution), level)
        return sample_mesh(verts, faces, n, torch.Generator().manual_seed(seed))
    except EmptySurfaceError as e:
        if on_empty == "raise":
            raise
        warnings.warn(f"{e}; no surface points", stacklevel=2)
        return None
