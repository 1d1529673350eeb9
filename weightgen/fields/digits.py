"""``digit-fields``: scikit-learn's 1,797 digits as a family of 2D fields (ships with the package: no download).

Each 8 x 8 image is upsampled bilinearly to ``resolution`` x ``resolution`` (32 by default), its
values scaled from 0..16 to [0, 1], on the grid of coordinates (x, y) in [-1, 1]^2 whose corners are
the corner pixels' centres (``align_corners``). Why 32: on the 8 x 8 grid itself a network only has
to hit 64 numbers, and any function through them counts as a fit, however it rings between the
pixels; 32 x 32 asks for a smooth field between them, while 1,024 points per field keep fitting
1,797 networks at once affordable on two cores (64 x 64 would cost four times as much). The class
label is kept: it is the condition a class-conditioned generator is told.

The family registers a task as well: ``digit-fields`` is the ``RegressionTask`` of ONE field (``item``),
coordinates to values, which is what a zoo's net is built for and a single field is judged on; a
``fields`` zoo (``weightgen.fields.zoo``) takes every item's values from the family.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F

from weightgen.evaluate.generative import grid_coords  # the one grid every field is fitted and decoded on
from weightgen.tasks.base import RegressionTask
from weightgen.tasks.registry import TASKS

NUM_CLASSES = 10


@dataclass
class FieldFamily:
    """Many fields on one set of coordinates: ``coords (P, d)``, ``values (M, P, 1)``, ``labels (M,)``.

    ``grid`` is the shape the ``P`` points form (row-major: ``values[i].view(grid)`` is item i's image);
    ``num_classes`` is the number of labels, the length of the one-hot codes the zoo stores."""

    name: str
    coords: torch.Tensor
    values: torch.Tensor
    labels: torch.Tensor
    grid: tuple[int, ...]
    num_classes: int = NUM_CLASSES
    data_range: float = 1.0

    def __len__(self) -> int:
        return len(self.labels)

    def condition(self, item: int) -> dict:
        """What a zoo stores for item ``item``: its class, the class as a one-hot code, and the item."""
        label = int(self.labels[item])
        code = "".join("1" if c == label else "0" for c in range(self.num_classes))
        return {"class": label, "code": code, "item": int(item)}

    def task(self, item: int = 0) -> RegressionTask:
        """The regression task of one field: its grid's coordinates to its values (every split the whole
        grid: a field is fitted to, and judged on, its own points)."""
        if not 0 <= item < len(self):
            raise ValueError(f"task '{self.name}': item {item} is out of range 0..{len(self) - 1}")
        x, y = self.coords, self.values[item]
        return RegressionTask(self.name, x, y, x, y, x, y, num_classes=1, condition=self.condition(item),
                              data_range=self.data_range)


@lru_cache(maxsize=4)
def _digit_family(resolution: int) -> FieldFamily:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images).float()[:, None] / 16.0
    up = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=True).clamp(0.0, 1.0)
    values = up.reshape(len(images), -1, 1).contiguous()
    labels = torch.from_numpy(d.target).long()
    return FieldFamily("digit-fields", grid_coords(resolution), values, labels, (resolution, resolution))


def digit_family(resolution: int = 32) -> FieldFamily:
    """The 1,797 digits as fields on a ``resolution`` x ``resolution`` grid (see the module's docstring)."""
    if int(resolution) < 2:
        raise ValueError(f"digit-fields: resolution is {resolution}; it needs at least 2 points per side")
    return _digit_family(int(resolution))


@TASKS.register("digit-fields")
def digit_fields(item: int = 0, resolution: int = 32) -> RegressionTask:
    """One digit field: item ``item`` of the family on a ``resolution`` x ``resolution`` grid."""
    return digit_family(resolution).task(item)


# Field families by task name: a ``fields`` zoo of task NAME fits one network per item of
# ``FIELD_FAMILIES[NAME](**task kwargs except item)``. Other families add themselves here.
FIELD_FAMILIES: dict[str, Callable[..., FieldFamily]] = {"digit-fields": digit_family}


def get_family(task_name: str, **kwargs) -> FieldFamily:
    """The family of field task ``task_name`` (its kwargs less ``item``); a one-line error names the families."""
    if task_name not in FIELD_FAMILIES:
        raise ValueError(f"task '{task_name}' is not a field family; zoo.mode 'fields' takes one of: "
                         f"{', '.join(FIELD_FAMILIES)}")
    kwargs = {k: v for k, v in kwargs.items() if k != "item"}
    return FIELD_FAMILIES[task_name](**kwargs)
