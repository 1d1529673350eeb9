"""Fields judged as a set (weightgen/fields/judge.py): surface clouds of 3D fields, the weight-average group,
even picks over classes, and novelty at equal quality."""
from __future__ import annotations

import pytest
import torch

from weightgen.evaluate.generative import grid_coords
from weightgen.fields.judge import (class_averages, even_picks, novelty_at_equal_quality, set_metrics,
                                    surface_clouds)


def ball(radius: float, r: int = 16) -> torch.Tensor:
    """The occupancy of a ball at the origin on the r^3 grid, as a decoded field ``(r^3, 1)``."""
    return (grid_coords(r, 3).norm(dim=1, keepdim=True) < radius).float()


def test_surface_clouds_lie_on_the_surface_and_an_empty_field_is_counted():
    pytest.importorskip("skimage")
    vols = torch.stack([ball(0.5).view(16, 16, 16), torch.zeros(16, 16, 16)])
    clouds, empty = surface_clouds(vols, points=256)
    assert clouds.shape == (2, 256, 3) and empty == 1
    assert abs(float(clouds[0].norm(dim=1).mean()) - 0.5) < 0.08
    assert float(clouds[1].abs().max()) == 0.0  # the empty field stands at the origin


def test_set_metrics_tell_small_balls_from_large_ones_in_3d():
    pytest.importorskip("skimage")
    small = torch.stack([ball(0.25 + 0.08 * i) for i in range(4)])
    large = torch.stack([ball(0.75 + 0.05 * i) for i in range(4)])
    out = set_metrics({"same": small.flip(0), "other": large}, small, (16, 16, 16))
    assert out["same"]["n"] == 4 and out["same"]["empty"] == 0
    assert out["same"]["mmd"] < 0.1 * out["other"]["mmd"]  # two samplings of one surface are near, not equal
    assert out["other"]["1nna"] == 1.0 and out["same"]["cov"] == 1.0


def test_set_metrics_use_l2_for_images():
    ref = torch.rand(3, 16, 1)
    out = set_metrics({"copy": ref.clone()}, ref, (4, 4))
    assert out["copy"]["mmd"] == 0.0 and out["copy"]["1nna"] == 0.0  # copies: each one's nearest is its twin


def test_even_picks_keep_every_class_of_a_class_ordered_set():
    picks = even_picks(100, 10)
    assert len(picks) == 10 and picks[0] == 0 and picks[-1] == 99 and len(set((picks // 10).tolist())) == 10
    assert torch.equal(even_picks(5, 10), torch.arange(5))


def test_class_averages_average_each_asked_class():
    train = {"w": torch.tensor([[0.0], [2.0], [10.0], [20.0]])}
    labels = torch.tensor([0, 0, 1, 1])
    out = class_averages(train, labels, [1, 0, 1, None])
    assert out["w"].flatten().tolist() == [15.0, 1.0, 15.0, 8.0]


def test_novelty_is_compared_with_noise_interpolated_to_equal_quality():
    metrics = {"generated": {"mmd": 0.5}, "noise_0.01": {"mmd": 0.1}, "noise_0.1": {"mmd": 0.4},
               "noise_1.0": {"mmd": 2.0}}
    nearest = {"generated": 0.3, "noise_0.01": 0.01, "noise_0.1": 0.2, "noise_1.0": 1.8}
    out = novelty_at_equal_quality(metrics, nearest)  # a sixteenth of the way from 0.1 to 1.0: 0.2 + 1.6 / 16
    assert out["noise"] == "noise_0.1..noise_1.0" and abs(out["noise_nearest"] - 0.3) < 1e-9
    assert out["more_novel"] is False  # 0.3 is not more than 0.3
    assert novelty_at_equal_quality(metrics, {**nearest, "generated": 0.31})["more_novel"] is True
    # no noise level as good: no comparison; every level better and nearer: equal quality lies beyond the sweep
    assert novelty_at_equal_quality({**metrics, "generated": {"mmd": 0.05}}, nearest)["noise"] is None
    beyond = novelty_at_equal_quality({**metrics, "generated": {"mmd": 3.0}}, nearest)
    assert beyond["noise"] == "noise_1.0" and beyond["more_novel"] is False  # nearer than even the noisiest
    assert novelty_at_equal_quality({**metrics, "generated": {"mmd": 3.0}}, {**nearest, "generated": 2.0})[
        "more_novel"] is None
