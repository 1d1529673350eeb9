"""``shape-fields-3d``: solid shapes the code makes, as occupancy fields in [-1, 1]^3 with their surfaces.

Five classes, each drawn with a random size, proportions, rotation and offset from one seed:

=====  ========  ==========================================================
label  class     drawn
=====  ========  ==========================================================
0      sphere    radius
1      box       three half-extents
2      torus     major radius, tube radius (a fraction of the major)
3      capsule   half-length of the segment, radius
4      union     two of the four primitives above, each smaller, apart
=====  ========  ==========================================================

Every primitive has an exact signed distance (negative inside) and an exact surface sampler, uniform by
area: a union's surface is its parts' surfaces outside the other part, thinned so that both parts carry
the same density per unit area. A shape's bounding radius plus its offset stays under 0.95, so every
shape lies inside [-1, 1]^3.

Occupancy (inside = 1) is sampled as occupancy-network papers do: half the points uniform in the cube,
the same points for every shape (``coords``), and half near the surface (surface points plus Gaussian
noise, sigma ``near_sigma``), which differ per shape (``points``). Each shape also has ``surface``:
2,048 points on its surface, the set Chamfer distance, MMD, COV and 1-NNA are computed on
(``weightgen.evaluate.generative``).

Every step is batched over shapes (timed in docs/benchmarks/field_metrics.md).

For fitting, ``shape_field_family`` (the field family of task ``shape-fields-3d``) gives the same
shapes' occupancy on one regular grid that every shape shares, as ``fit_fields`` and a ``fields`` zoo
take it; ``make_shapes`` with the same count and seed gives their surface points to judge fits on.
With ``band`` > 0 the occupancy is soft: ``clamp(0.5 - sdf / band, 0, 1)``, a linear ramp across a
shell of width ``band`` whose 0.5 level is the exact surface. A hard 0/1 step sampled on a coarse grid
tells a network only which grid cell the surface crosses, and it fits any surface through that cell;
the ramp tells it where, so the fitted field's 0.5 level follows the surface between the grid points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from weightgen.tasks.base import RegressionTask
from weightgen.tasks.registry import TASKS

from .digits import FIELD_FAMILIES, FieldFamily, grid_coords

CLASSES = ("sphere", "box", "torus", "capsule", "union")
PRIMITIVES = 4  # sphere, box, torus, capsule: the kinds a part can be
BOUND = 0.95  # every shape lies inside the ball of this radius (so inside [-1, 1]^3)


# -- primitives: signed distance, area and surface samples in the part's own frame ----------------------
def _sphere_sdf(p, q):
    return q.norm(dim=-1) - p[:, 0, None]


def _box_sdf(p, q):
    d = q.abs() - p[:, None, :]
    return d.clamp(min=0).norm(dim=-1) + d.max(dim=-1).values.clamp(max=0)


def _torus_sdf(p, q):
    return torch.stack([q[..., :2].norm(dim=-1) - p[:, 0, None], q[..., 2]], -1).norm(dim=-1) - p[:, 1, None]


def _capsule_sdf(p, q):
    length = p[:, 0, None]
    z = q[..., 2] - torch.maximum(torch.minimum(q[..., 2], length), -length)
    return torch.stack([q[..., 0], q[..., 1], z], -1).norm(dim=-1) - p[:, 1, None]


def _by_kind(kind: torch.Tensor, fns, out: torch.Tensor, *args) -> torch.Tensor:
    """``out`` with the rows of each kind filled by that kind's function of those rows' ``args``."""
    for k, fn in enumerate(fns):
        rows = (kind == k).nonzero()[:, 0]
        if len(rows):
            out[rows] = fn(*(a[rows] for a in args))
    return out


def primitive_sdf(kind: torch.Tensor, params: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Exact signed distance (negative inside) of primitives at local points: ``kind`` ``(B,)``,
    ``params`` ``(B, 3)``, ``q`` ``(B, N, 3)`` -> ``(B, N)``; +inf for a kind outside 0..3."""
    out = torch.full(q.shape[:2], math.inf)
    return _by_kind(kind, (_sphere_sdf, _box_sdf, _torus_sdf, _capsule_sdf), out, params, q)


def primitive_area(kind: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Surface area of each primitive ``(B,)``; 0 for a kind outside 0..3."""
    a, b, c = params.unbind(-1)
    areas = torch.stack([4 * math.pi * a**2, 8 * (a * b + b * c + c * a),
                         4 * math.pi**2 * a * b, 4 * math.pi * b**2 + 4 * math.pi * a * b, torch.zeros_like(a)], 0)
    index = torch.where((kind >= 0) & (kind < PRIMITIVES), kind, PRIMITIVES)
    return areas.gather(0, index[None])[0]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _sphere_surface(p, u, g):
    return _unit(g) * p[:, 0, None, None]


def _box_surface(p, u, g):
    # a face pair chosen by its area, a uniform point on it, the side by a coin
    a, b, c = (p[:, i, None] for i in range(3))
    face = torch.stack([b * c, a * c, a * b], -1)
    cum = face.cumsum(-1) / face.sum(-1, keepdim=True)
    axis = (u[..., :1] > cum[..., :2]).sum(-1, keepdim=True)  # (B, n, 1) in 0..2
    h = p[:, None, :].expand(*u.shape[:2], 3)
    pts = (u[..., 1:4] * 2 - 1) * h
    side = torch.where(u[..., 4:5] < 0.5, -1.0, 1.0)
    return pts.scatter(-1, axis, h.gather(-1, axis) * side)


def _torus_surface(p, u, g):
    # the tube angle theta has density proportional to R + r cos(theta): its CDF is inverted by Newton,
    # which from the uniform guess (off by at most r/R < 0.45) is within 1e-5 after four steps
    big, small = p[:, 0, None], p[:, 1, None]
    target = 2 * math.pi * big * u[..., 0]
    theta = 2 * math.pi * u[..., 0]
    for _ in range(4):
        theta = theta - (big * theta + small * torch.sin(theta) - target) / (big + small * torch.cos(theta))
    phi = 2 * math.pi * u[..., 1]
    rad = big + small * torch.cos(theta)
    return torch.stack([rad * torch.cos(phi), rad * torch.sin(phi), small * torch.sin(theta)], -1)


def _capsule_surface(p, u, g):
    # the cylinder (area 4 pi r L) or the two caps (area 4 pi r^2), chosen by area
    length, r = p[:, 0, None], p[:, 1, None]
    ang = 2 * math.pi * u[..., 1]
    side = torch.stack([r * torch.cos(ang), r * torch.sin(ang), (u[..., 2] * 2 - 1) * length], -1)
    cap = _unit(g) * r[..., None]
    cap[..., 2] += torch.where(cap[..., 2] >= 0, length, -length)
    return torch.where((u[..., 0] < length / (length + r))[..., None], side, cap)


def primitive_surface(kind: torch.Tensor, params: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` points per primitive, uniform by area on its surface, in its own frame: ``(B, n, 3)``."""
    bsz = kind.shape[0]
    u = torch.rand(bsz, n, 5, generator=gen)
    g = torch.randn(bsz, n, 3, generator=gen)
    out = torch.zeros(bsz, n, 3)
    return _by_kind(kind, (_sphere_surface, _box_surface, _torus_surface, _capsule_surface), out, params, u, g)


def random_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` rotation matrices uniform over SO(3) (unit quaternions from a Gaussian): ``(n, 3, 3)``."""
    w, x, y, z = _unit(torch.randn(n, 4, generator=gen)).unbind(-1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _random_params(kind: torch.Tensor, gen: torch.Generator, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Size and proportions of each primitive, and its bounding radius: ``(B, 3)``, ``(B,)``."""
    u = torch.rand(kind.shape[0], 3, generator=gen)
    lo_hi = lambda i, lo, hi: lo + (hi - lo) * u[:, i]
    sphere = torch.stack([lo_hi(0, 0.35, 0.75), torch.zeros_like(u[:, 0]), torch.zeros_like(u[:, 0])], -1)
    box = 0.2 + 0.35 * u
    major = lo_hi(0, 0.35, 0.6)
    torus = torch.stack([major, major * lo_hi(1, 0.2, 0.45), torch.zeros_like(major)], -1)
    capsule = torch.stack([lo_hi(0, 0.15, 0.45), lo_hi(1, 0.15, 0.35), torch.zeros_like(major)], -1)
    params = torch.stack([sphere, box, torus, capsule], 0).gather(
        0, kind[None, :, None].expand(1, -1, 3))[0] * scale[:, None]
    a, b, c = params.unbind(-1)
    bound = torch.stack([a, params.norm(dim=-1), a + b, a + b], 0).gather(0, kind[None])[0]
    return params, bound


# -- the family -------------------------------------------------------------------------------------------
@dataclass
class ShapeFamily:
    """A family of 3D occupancy fields.

    ``points`` ``(M, P, 3)`` and ``values`` ``(M, P, 1)`` (occupancy, inside = 1) differ per shape: the
    first ``num_uniform`` points of every row are the same uniform points for all shapes (``coords``,
    with ``shared_values``), the rest lie near that shape's surface. ``surface`` ``(M, S, 3)`` are points
    on each surface; ``labels`` ``(M,)`` index ``CLASSES``. ``kinds``, ``params``, ``rotations`` and
    ``offsets`` ``(M, 2, ...)`` describe each shape's one or two parts (``kinds`` is -1 for an absent
    second part), so that ``sdf`` answers at any point.
    """

    points: torch.Tensor
    values: torch.Tensor
    surface: torch.Tensor
    labels: torch.Tensor
    kinds: torch.Tensor
    params: torch.Tensor
    rotations: torch.Tensor
    offsets: torch.Tensor
    num_uniform: int
    seed: int

    classes = CLASSES

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def coords(self) -> torch.Tensor:
        """The uniform points every shape shares: ``(num_uniform, 3)``."""
        return self.points[0, : self.num_uniform]

    @property
    def shared_values(self) -> torch.Tensor:
        """Occupancy of every shape at ``coords``: ``(M, num_uniform, 1)``."""
        return self.values[:, : self.num_uniform]

    def sdf(self, x: torch.Tensor, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Signed distance (negative inside) of shapes ``index`` (default all) at points ``x``: ``(N, 3)``
        for the same points everywhere or ``(B, N, 3)`` -> ``(B, N)``. For a union it is the minimum of
        its parts' distances: exact outside, a bound inside."""
        sel = slice(None) if index is None else index
        return shapes_sdf(self.kinds[sel], self.params[sel], self.rotations[sel], self.offsets[sel], x)

    def occupancy(self, x: torch.Tensor, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """1.0 inside, 0.0 outside, at points ``x`` as in ``sdf``: ``(B, N)``."""
        return (self.sdf(x, index) <= 0).float()

    def subset(self, index: torch.Tensor | slice) -> ShapeFamily:
        """The shapes ``index``, as a family of their own."""
        pick = lambda t: t[index]
        return ShapeFamily(pick(self.points), pick(self.values), pick(self.surface), pick(self.labels),
                           pick(self.kinds), pick(self.params), pick(self.rotations), pick(self.offsets),
                           self.num_uniform, self.seed)


def shapes_sdf(kinds: torch.Tensor, params: torch.Tensor, rotations: torch.Tensor, offsets: torch.Tensor,
               x: torch.Tensor) -> torch.Tensor:
    """Signed distance of shapes of one or two parts (``kinds`` ``(B, 2)``, -1 absent) at world points
    ``x`` ``(N, 3)`` or ``(B, N, 3)`` -> ``(B, N)``."""
    bsz = kinds.shape[0]
    if x.dim() == 2:
        x = x.expand(bsz, *x.shape)
    out = None
    for j in range(kinds.shape[1]):
        if (kinds[:, j] < 0).all():
            continue
        local = (x - offsets[:, j, None, :]) @ rotations[:, j]  # R^T (x - t), row vectors
        d = primitive_sdf(kinds[:, j], params[:, j], local)  # +inf where the part is absent
        out = d if out is None else torch.minimum(out, d)
    return torch.full(x.shape[:2], math.inf) if out is None else out


def _surface(kinds, params, rotations, offsets, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` points uniform by area on each shape's surface: ``(B, n, 3)``. Each part offers ``3n``
    candidates; those inside the other part are dropped and the rest thinned by area, so both parts
    carry the same density; a shape left with fewer than ``n`` (parts almost inside each other) draws
    its ``n`` from the candidates it kept, with repeats."""
    if (kinds[:, 1:] < 0).all():  # single primitives: no candidates to drop
        kinds, params, rotations, offsets = kinds[:, :1], params[:, :1], rotations[:, :1], offsets[:, :1]
    bsz, parts = kinds.shape
    k = 3 * n if parts > 1 else n
    cands, keep = [], []
    area = torch.stack([torch.where(kinds[:, j] >= 0, primitive_area(kinds[:, j], params[:, j]),
                                    torch.zeros(bsz)) for j in range(parts)], -1)
    top = area.max(-1, keepdim=True).values.clamp(min=1e-12)
    for j in range(parts):
        local = primitive_surface(kinds[:, j], params[:, j], k, gen)
        world = local @ rotations[:, j].transpose(1, 2) + offsets[:, j, None, :]
        ok = (kinds[:, j, None] >= 0) & (torch.rand(bsz, k, generator=gen) < (area[:, j] / top[:, 0])[:, None])
        for i in range(parts):
            if i != j:
                other = (world - offsets[:, i, None, :]) @ rotations[:, i]
                ok &= (kinds[:, i, None] < 0) | (primitive_sdf(kinds[:, i], params[:, i], other) >= 0)
        cands.append(world)
        keep.append(ok)
    cands, keep = torch.cat(cands, 1), torch.cat(keep, 1)
    if parts == 1:
        return cands
    key = torch.rand(keep.shape, generator=gen) + keep.float()  # kept candidates first, in random order
    idx = key.topk(n, dim=1).indices
    short = keep.sum(1) < n
    if short.any():
        w = keep[short].float()
        w[w.sum(1) == 0] = 1.0
        idx[short] = torch.multinomial(w, n, replacement=True, generator=gen)
    return cands.gather(1, idx[..., None].expand(-1, -1, 3))


def _draw(count: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Labels, part kinds, sizes, rotations and offsets of ``count`` shapes: the classes in turn."""
    labels = torch.arange(count) % len(CLASSES)
    # two parts per shape; a single primitive's second part is absent (-1)
    union = labels == len(CLASSES) - 1
    first = torch.where(union, torch.randint(0, PRIMITIVES, (count,), generator=gen), labels)
    second = torch.where(union, torch.randint(0, PRIMITIVES, (count,), generator=gen), torch.full_like(labels, -1))
    kinds = torch.stack([first, second], 1)
    scale = torch.where(union, 0.6, 1.0)
    params, bounds = zip(*(_random_params(kinds[:, j].clamp(min=0), gen, scale) for j in range(2)))
    params, bounds = torch.stack(params, 1), torch.stack(bounds, 1)
    rotations = torch.stack([random_rotations(count, gen) for _ in range(2)], 1)
    # an offset of random direction and length: a single shape near the centre, a union's parts apart
    shrink = (BOUND / bounds.clamp(min=1e-6)).clamp(max=1.0)  # a box's corners can reach past BOUND
    params = params * shrink[..., None]
    bounds = bounds * shrink
    room = (BOUND - bounds).clamp(min=0)
    length = torch.rand(count, 2, generator=gen) * torch.where(union[:, None], room, room.clamp(max=0.1))
    length[union] = torch.maximum(length[union], 0.5 * room[union])
    offsets = _unit(torch.randn(count, 2, 3, generator=gen)) * length[..., None]
    offsets[~union, 1] = 0.0
    return labels, kinds, params, rotations, offsets


def make_shapes(count: int = 3000, seed: int = 0, num_uniform: int = 2048, num_near: int = 2048,
                surface: int = 2048, near_sigma: float = 0.05, chunk: int = 256) -> ShapeFamily:
    """``count`` shapes, the classes in turn (``labels = arange(count) % 5``), drawn from ``seed``.

    Args:
        count: the number of shapes.
        seed: everything (sizes, rotations, offsets, sample points) follows from it.
        num_uniform: occupancy points uniform in [-1, 1]^3, the same for every shape.
        num_near: occupancy points near each shape's surface (surface points plus N(0, near_sigma^2)
            noise, clamped to the cube).
        surface: points on each surface (2,048 as HyperDiffusion and PointFlow judge on).
        chunk: shapes sampled at once (memory only; results depend on it through the random stream).
    """
    for name, v in (("count", count), ("num_uniform", num_uniform), ("surface", surface), ("chunk", chunk)):
        if v <= 0:
            raise ValueError(f"make_shapes: {name} must be positive, got {v}")
    if num_near < 0 or near_sigma < 0:
        raise ValueError(f"make_shapes: num_near and near_sigma must be >= 0, got {num_near} and {near_sigma}")
    gen = torch.Generator().manual_seed(seed)
    labels, kinds, params, rotations, offsets = _draw(count, gen)
    union = kinds[:, 1] >= 0
    coords = torch.rand(num_uniform, 3, generator=gen) * 2 - 1
    points = torch.empty(count, num_uniform + num_near, 3)
    values = torch.empty(count, num_uniform + num_near, 1)
    surf = torch.empty(count, surface, 3)
    # single primitives first, unions after, so that no chunk mixes them (only unions need spare candidates)
    order = torch.cat([(~union).nonzero()[:, 0], union.nonzero()[:, 0]])
    starts = [s for group in (order[: int((~union).sum())], order[int((~union).sum()):])
              for s in group.split(chunk) if len(s)]
    for sel in starts:
        parts = (kinds[sel], params[sel], rotations[sel], offsets[sel])
        on = _surface(*parts, surface + num_near, gen)
        near = (on[:, surface:] + near_sigma * torch.randn(on[:, surface:].shape, generator=gen)).clamp(-1, 1)
        pts = torch.cat([coords.expand(on.shape[0], -1, -1), near], 1)
        points[sel] = pts
        values[sel] = (shapes_sdf(*parts, pts) <= 0).float()[..., None]
        surf[sel] = on[:, :surface]
    return ShapeFamily(points, values, surf, labels, kinds, params, rotations, offsets, num_uniform, seed)


# -- the field family and task a ``fields`` zoo fits -------------------------------------------------------
@lru_cache(maxsize=4)
def _shape_field_family(count: int, seed: int, resolution: int, band: float) -> FieldFamily:
    labels, kinds, params, rotations, offsets = _draw(count, torch.Generator().manual_seed(seed))
    coords = grid_coords(resolution, 3)
    sdf = torch.cat([shapes_sdf(kinds[s:s + 64], params[s:s + 64], rotations[s:s + 64], offsets[s:s + 64], coords)
                     for s in range(0, count, 64)])
    values = (0.5 - sdf / band).clamp(0.0, 1.0) if band > 0 else (sdf <= 0).float()
    return FieldFamily("shape-fields-3d", coords, values[..., None], labels, (resolution,) * 3,
                       num_classes=len(CLASSES))


def shape_field_family(count: int = 1000, seed: int = 0, resolution: int = 24, band: float = 0.0) -> FieldFamily:
    """``count`` shapes as occupancy fields on the ``resolution``^3 grid of [-1, 1]^3 that every shape
    shares (``grid_coords``: ``values[i].view(r, r, r)`` indexes z, y, x), for fitting many at once:
    hard (inside = 1) with ``band`` 0, else the soft ramp of the module's docstring, whose 0.5 level
    is the surface. Shape i is shape i of ``make_shapes(count, seed)``, whose ``surface`` points judge
    the fits."""
    for name, v in (("count", count), ("resolution", resolution)):
        if int(v) < (2 if name == "resolution" else 1):
            raise ValueError(f"shape-fields-3d: {name} is {v}; it must be at least {2 if name == 'resolution' else 1}")
    if not float(band) >= 0:
        raise ValueError(f"shape-fields-3d: band is {band}; it must be 0 (hard occupancy) or a positive width")
    return _shape_field_family(int(count), int(seed), int(resolution), float(band))


@TASKS.register("shape-fields-3d")
def shape_fields_3d(item: int = 0, count: int = 1000, seed: int = 0, resolution: int = 24,
                    band: float = 0.0) -> RegressionTask:
    """One 3D occupancy field: shape ``item`` of ``shape_field_family(count, seed, resolution, band)``."""
    return shape_field_family(count, seed, resolution, band).task(item)


FIELD_FAMILIES["shape-fields-3d"] = shape_field_family


def fit_iou(net: torch.nn.Module, stacked: dict[str, torch.Tensor], items, count: int, seed: int = 0,
            points: int = 20000, level: float = 0.5, point_seed: int = 0) -> torch.Tensor:
    """Each fitted field's IoU ``(M,)`` against its exact shape: network i (``stacked``: ``name ->
    (M, ...)``) as shape ``items[i]`` of ``shape_field_family(count, seed)``, inside where its value
    exceeds ``level``, at ``points`` points uniform in [-1, 1]^3 (off the fitting grid, so it measures
    the field between grid points too)."""
    from .fit import field_values

    labels, kinds, params, rotations, offsets = _draw(count, torch.Generator().manual_seed(seed))
    x = torch.rand(points, 3, generator=torch.Generator().manual_seed(point_seed)) * 2 - 1
    idx = torch.as_tensor(items, dtype=torch.long)
    truth = torch.cat([shapes_sdf(kinds[s], params[s], rotations[s], offsets[s], x) <= 0 for s in idx.split(64)])
    pred = field_values(net, stacked, x)[..., 0] > level
    return (pred & truth).sum(1) / (pred | truth).sum(1).clamp(min=1)
