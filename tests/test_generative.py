"""Generative metrics (weightgen.evaluate.generative): Chamfer distance, MMD, COV, 1-NNA, and surface
points of a field by marching cubes."""
import pytest
import torch

from weightgen.evaluate.generative import (EmptySurfaceError, chamfer_distance, chamfer_matrix, coverage,
                                           generative_metrics, l2_matrix, mmd, one_nna, surface_points)


def test_chamfer_zero_for_identical_sets_and_symmetric():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 50, 3, generator=g), torch.randn(4, 70, 3, generator=g)
    assert torch.allclose(chamfer_distance(a, a), torch.zeros(4), atol=1e-6)
    assert torch.allclose(chamfer_distance(a, b), chamfer_distance(b, a))
    assert (chamfer_distance(a, b) > 0).all()
    # the same set in another order is the same set
    assert float(chamfer_distance(a[0], a[0][torch.randperm(50)])) == pytest.approx(0.0, abs=1e-6)


def test_chamfer_by_brute_force_and_matrix():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 20, 3, generator=g), torch.rand(2, 30, 3, generator=g)
    d = ((a[0][:, None] - b[1][None]) ** 2).sum(-1)
    want = d.min(1).values.mean() + d.min(0).values.mean()  # PointFlow's sum of both means of squares
    m = chamfer_matrix(a, b)
    assert m.shape == (3, 2)
    assert float(m[0, 1]) == pytest.approx(float(want), rel=1e-5)
    assert float(chamfer_distance(a[0], b[1])) == pytest.approx(float(want), rel=1e-5)


def brute_chamfer_matrix(x, y):
    """Every pair by all pairwise squared distances (the definition), for the KD-tree matrix to match."""
    return torch.stack([chamfer_distance(x[i].expand(len(y), -1, -1).contiguous(), y) for i in range(len(x))])


def test_kd_tree_chamfer_matrix_equals_all_pairwise_distances():
    from weightgen.fields.shapes import make_shapes

    fam = make_shapes(12, seed=2, num_uniform=8, num_near=8, surface=300)  # surfaces of every class
    x, y = fam.surface[:7], fam.surface[7:]
    y = torch.cat([y, y[:1] + 1e-3])  # a near copy: a distance close to 0
    want = brute_chamfer_matrix(x, y)
    got = chamfer_matrix(x, y)
    assert got.shape == (7, 6) and torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    # clouds of different sizes, and a point set's order does not matter
    odd = chamfer_matrix(x[:3, :100], y[:2, :250].flip(1))
    assert torch.allclose(odd, brute_chamfer_matrix(x[:3, :100], y[:2, :250]), rtol=1e-4, atol=1e-6)
    # the symmetric matrix of a set with itself: its pairs once, a zero diagonal, equal to the set against a copy
    sym = chamfer_matrix(x)
    assert torch.equal(sym, sym.T) and torch.equal(sym.diagonal(), torch.zeros(7))
    assert torch.allclose(sym, brute_chamfer_matrix(x, x.clone()), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(A, N, D\) and \(B, M, D\)"):
        chamfer_matrix(x, y[..., :2])


def test_mmd_and_coverage_by_hand():
    # 3 generated x 4 reference: generated 0 and 1 both nearest reference 0, generated 2 nearest reference 3
    d = torch.tensor([[0.1, 0.5, 0.9, 0.8],
                      [0.2, 0.6, 0.7, 0.9],
                      [0.9, 0.4, 0.5, 0.3]])
    assert mmd(d) == pytest.approx((0.1 + 0.4 + 0.5 + 0.3) / 4)
    assert coverage(d) == pytest.approx(2 / 4)


def clusters(n, centre, seed):
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed)) + centre


def test_one_nna_same_distribution_near_half_disjoint_all():
    same = generative_metrics(clusters(200, 0.0, 0), clusters(200, 0.0, 1), distance="l2")
    assert abs(same["1nna"] - 0.5) < 0.1
    apart = generative_metrics(clusters(50, 0.0, 0), clusters(60, 100.0, 1), distance="l2")
    assert apart["1nna"] == 1.0 and apart["1nna_gen"] == 1.0 and apart["1nna_ref"] == 1.0
    # every generated item crowds around one reference item: coverage is low
    collapsed = generative_metrics(clusters(50, 0.0, 0) * 0.001, clusters(50, 0.0, 1), distance="l2")
    assert collapsed["cov"] <= 0.1
    assert same["cov"] > collapsed["cov"]


def test_one_nna_of_an_exact_copy_is_zero_and_ties_count_half():
    x = clusters(30, 0.0, 0)
    copy = generative_metrics(x, x.clone(), distance="l2")
    assert copy["1nna"] == 0.0  # each item's nearest is its twin in the other set
    assert copy["mmd"] == pytest.approx(0.0, abs=1e-5) and copy["cov"] == 1.0
    # four items all at distance 1 from each other: every item's nearest is a tie between the sets
    ones = torch.ones(2, 2) - torch.eye(2)
    assert one_nna(ones, ones, torch.ones(2, 2))["1nna"] == 0.5


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="allowed: chamfer, l2"):
        generative_metrics(torch.zeros(3, 4), torch.zeros(3, 4), distance="cosine")
    with pytest.raises(ValueError, match="same size"):
        l2_matrix(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="at least 2 items"):
        one_nna(torch.zeros(1, 1), torch.zeros(3, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        chamfer_distance(torch.zeros(2, 5, 3), torch.zeros(3, 5, 3))


def test_surface_points_of_a_sphere_field_lie_at_its_radius():
    pytest.importorskip("skimage")
    r = 0.6
    occupancy = lambda x: (x.norm(dim=-1, keepdim=True) < r).float()
    pts = surface_points(occupancy, n=2048, resolution=40)
    assert pts.shape == (2048, 3)
    assert (pts.norm(dim=-1) - r).abs().max() < 2.0 / 39  # within a grid cell
    sdf = surface_points(lambda x: r - x.norm(dim=-1), level=0.0, resolution=32, n=500)
    assert (sdf.norm(dim=-1) - r).abs().max() < 0.01  # a smooth field: far closer than a cell
    assert torch.equal(surface_points(occupancy, n=100, resolution=24, seed=3),
                       surface_points(occupancy, n=100, resolution=24, seed=3))


def test_empty_field_is_one_line_error_or_warning():
    pytest.importorskip("skimage")
    nowhere = lambda x: torch.zeros(len(x), 1)
    with pytest.raises(EmptySurfaceError, match=r"no surface at level 0.5: .* span \[0, 0\]") as e:
        surface_points(nowhere, resolution=8)
    assert "\n" not in str(e.value)
    with pytest.warns(UserWarning, match="no surface"):
        assert surface_points(nowhere, resolution=8, on_empty="warn") is None
