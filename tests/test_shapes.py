"""shape-fields-3d (weightgen.fields.shapes): occupancy, surface points, determinism."""
import math

import pytest
import torch

from weightgen.fields.shapes import CLASSES, make_shapes, primitive_sdf, random_rotations


@pytest.fixture(scope="module")
def family():
    return make_shapes(40, seed=0, num_uniform=256, num_near=256, surface=512)


def test_shapes_and_classes(family):
    assert len(family) == 40
    assert family.points.shape == (40, 512, 3) and family.values.shape == (40, 512, 1)
    assert family.surface.shape == (40, 512, 3)
    assert family.labels.tolist() == [i % len(CLASSES) for i in range(40)]
    assert family.coords.shape == (256, 3) and family.shared_values.shape == (40, 256, 1)
    assert torch.equal(family.points[:, :256], family.coords.expand(40, -1, -1))  # shared uniform points
    assert family.points.abs().max() <= 1.0 and family.surface.abs().max() < 1.0
    assert set(family.values.unique().tolist()) == {0.0, 1.0}
    # near-surface points are about half inside; every shape is inside somewhere on the uniform points too
    assert 0.3 < float(family.values[:, 256:].mean()) < 0.7


def test_occupancy_of_known_points(family):
    # a sphere of radius 0.5 at the centre: the centre inside, the far corner outside
    one = make_shapes(1, seed=0)
    one.params[0, 0] = torch.tensor([0.5, 0.0, 0.0])
    one.offsets.zero_()
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.49, 0.0, 0.0], [0.0, 0.51, 0.0]])
    assert one.occupancy(x).tolist() == [[1.0, 0.0, 1.0, 0.0]]
    assert family.occupancy(torch.ones(1, 3)).sum() == 0  # the far corner is outside every shape
    # the stored occupancy is the sign of the signed distance
    assert torch.equal(family.values[..., 0], family.occupancy(family.points))


def test_primitive_distances_by_hand():
    q = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]]).expand(4, -1, -1)
    kind = torch.arange(4)
    params = torch.tensor([[0.5, 0, 0], [0.5, 0.2, 0.3], [0.6, 0.1, 0], [0.4, 0.2, 0]])
    d = primitive_sdf(kind, params, q)
    assert torch.allclose(d[0], torch.tensor([-0.5, 0.5, 0.5]))                 # sphere r 0.5
    assert torch.allclose(d[1], torch.tensor([-0.2, 0.5, 0.7]))                 # box half-extents .5 .2 .3
    assert torch.allclose(d[2], torch.tensor([0.5, 0.3, math.hypot(0.6, 1) - 0.1]))  # torus R .6 r .1
    assert torch.allclose(d[3], torch.tensor([-0.2, 0.8, 0.4]))                 # capsule half-length .4 r .2


def test_surface_points_lie_on_the_surface(family):
    d = family.sdf(family.surface)
    assert d.abs().max() < 1e-5
    for c in range(len(CLASSES)):  # every class, unions included
        assert (family.labels == c).any()


def test_surface_points_are_uniform_on_a_sphere():
    one = make_shapes(1, seed=3, surface=4096)
    p = one.surface[0] - one.offsets[0, 0]
    # on a sphere, uniform by area means z / r is uniform on [-1, 1]: mean 0, variance 1/3
    z = p[:, 2] / p.norm(dim=-1)
    assert abs(float(z.mean())) < 0.05 and abs(float(z.var()) - 1 / 3) < 0.03


def test_rotations_are_rotations():
    r = random_rotations(10, torch.Generator().manual_seed(0))
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(10, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(10), atol=1e-5)


def test_deterministic_by_seed(family):
    again = make_shapes(40, seed=0, num_uniform=256, num_near=256, surface=512)
    for name in ("points", "values", "surface", "params", "rotations", "offsets"):
        assert torch.equal(getattr(again, name), getattr(family, name)), name
    other = make_shapes(40, seed=1, num_uniform=256, num_near=256, surface=512)
    assert not torch.equal(other.params, family.params)


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="count must be positive"):
        make_shapes(0)


def test_field_family_and_task_match_the_shapes():
    from weightgen.fields import get_family
    from weightgen.tasks.registry import TASKS

    fam = get_family("shape-fields-3d", count=10, seed=2, resolution=8)
    assert fam.coords.shape == (512, 3) and fam.values.shape == (10, 512, 1) and fam.grid == (8, 8, 8)
    shapes = make_shapes(10, seed=2, num_uniform=8, num_near=8, surface=8)  # shape i is the family's item i
    assert torch.equal(shapes.occupancy(fam.coords)[..., None], fam.values)
    assert fam.condition(4) == {"class": 4, "code": "00001", "item": 4}
    task = TASKS.get("shape-fields-3d")(item=1, count=10, seed=2, resolution=8)
    assert task.input_shape == (3,) and torch.equal(task.y_train, fam.values[1])
    with pytest.raises(ValueError, match="resolution is 1"):
        get_family("shape-fields-3d", resolution=1)


def test_batched_fitter_fits_occupancy():
    from weightgen.fields.fit import fit_fields

    fam = make_shapes(3, seed=0, num_uniform=512, num_near=512, surface=8)
    _, before = fit_fields("field-mlp", fam.coords, fam.shared_values, seeds=[0, 1, 2], steps=1)
    _, after = fit_fields("field-mlp", fam.coords, fam.shared_values, seeds=[0, 1, 2], steps=60)
    assert (after > before).all()
