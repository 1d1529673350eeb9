"""A task: what a network is trained and judged on.

A task holds fixed train, validation and test splits as tensors, and its objective: the training
loss, the metrics that judge a network with the direction in which each is better, the headline
metric a report leads with, a batched scoring of many networks' outputs at once, and the
per-example failures that the novelty test compares. ``Task`` is classification;
``RegressionTask`` (inputs to values: mean squared error and PSNR) is the second kind. A task of
another kind subclasses ``Task`` and overrides the objective; one whose metric cannot come from
outputs on fixed data (a return, say) overrides ``evaluate`` as well.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

SPLITS = ("train", "val", "test")
DIRECTIONS = ("higher", "lower")


@dataclass
class Task:
    """A classification problem with fixed splits, and the interface every kind of task shares.

    ``x_*`` are float tensors shaped ``(N, *input_shape)``; ``y_*`` are int64 class indices.
    ``num_classes`` is the network's output size; left out, it is one more than the largest label.
    ``condition`` is what a conditional generator is told about the task (e.g. the class-subset
    code); it is empty for plain tasks. ``headline`` is the metric a report's best, mean and median
    read, one of ``metrics``.

    The objective is the part a subclass overrides: ``kind``, ``metrics`` (name to "higher" or
    "lower", the direction that is better), ``loss``, ``batch_scores``, ``failures`` and, where
    outputs on fixed data cannot score a network, ``evaluate``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int | None = None
    condition: dict = field(default_factory=dict)
    headline: str = "accuracy"

    kind: ClassVar[str] = "classification"
    # Every metric recorded per split (``<split>_<metric>`` in a zoo), and which way is better.
    # A classification zoo also answers ``<split>_error``, 1 - accuracy (``generators.base.member_metric``).
    metrics: ClassVar[dict[str, str]] = {"loss": "lower", "accuracy": "higher"}
    # A task overrides this with a method ``evaluate(net, stacked, split) -> weightgen.evaluate.Scores``
    # when its metric cannot come from ``batch_scores`` of outputs on fixed data; the evaluator then calls it
    # with a chunk of stacked models (``name -> (B, *shape)``) on the device in use, ``net`` in eval mode.
    evaluate: ClassVar = None

    def __post_init__(self) -> None:
        if self.num_classes is None:
            self.num_classes = self.output_size()
        if self.headline not in self.metrics:
            raise ValueError(f"task '{self.name}': headline metric '{self.headline}' is not one of its metrics "
                             f"({', '.join(self.metrics)})")
        bad = {k: v for k, v in self.metrics.items() if v not in DIRECTIONS}
        if bad:
            k, v = next(iter(bad.items()))
            raise ValueError(f"task '{self.name}': metric '{k}' is better '{v}'; allowed: higher, lower")

    def output_size(self) -> int:
        """The network's output size the labels imply: one more than the largest class index."""
        return int(max(int(y.max()) for y in (self.y_train, self.y_val, self.y_test) if y.numel())) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of split ``name``: train, val or test."""
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}'; allowed: train, val, test")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def higher_is_better(self, metric: str | None = None) -> bool:
        """Whether a larger value of ``metric`` (default: the headline) is the better network."""
        return self.metrics[metric or self.headline] == "higher"

    # -- the objective: classification ----------------------------------------------------------
    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of one model's ``outputs`` ``(N, C)``: cross-entropy."""
        return F.cross_entropy(outputs, y)

    def batch_scores(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every metric of ``B`` models at once: ``outputs`` ``(B, N, C)`` logits, ``y`` ``(N,)``
        -> ``{metric: (B,)}``. Sums run in float32, one model per row."""
        b, n = outputs.shape[:2]
        ce = F.cross_entropy(outputs.flatten(0, 1).float(), y.repeat(b), reduction="none")
        return {"loss": ce.view(b, -1).sum(1) / n, "accuracy": 1.0 - self.failures(outputs, y).float().mean(1)}

    def failures(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` bool: the examples each model gets wrong (the set the novelty test compares)."""
        return outputs.argmax(-1) != y

    def scores(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Loss, accuracy and error of one model's logits ``(N, C)`` against labels ``(N,)``."""
        loss = F.cross_entropy(outputs.float(), y).item()
        acc = (outputs.argmax(-1) == y).float().mean().item()
        return {"loss": loss, "accuracy": acc, "error": 1.0 - acc}

    def summary(self) -> dict:
        """Name, kind, output size, input shape, split sizes, metrics and condition, as JSON-ready values."""
        return {
            "name": self.name,
            "kind": self.kind,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "sizes": {s: int(len(getattr(self, f"y_{s}"))) for s in SPLITS},
            "metrics": dict(self.metrics),
            "headline": self.headline,
            "condition": self.condition,
        }


@dataclass
class RegressionTask(Task):
    """Inputs to values: fitting a function or a field, judged by mean squared error and PSNR.

    ``y_*`` are float tensors ``(N, D)`` (a 1-D ``(N,)`` is read as ``(N, 1)``); ``num_classes`` is
    the output size ``D``, which nets are built with. ``data_range`` is the span PSNR is measured
    against; left out, it is the training targets' max minus min. An example is a failure (the sets
    the novelty test compares) where any output is off by more than ``tolerance``; left out, a tenth
    of ``data_range``.

    The headline is PSNR, ``10 log10(data_range**2 / MSE)``: it ranks networks as the mean squared
    error does, and its log scale keeps a few diverged networks from dominating a group's mean, as
    they would a mean of squared errors. Neural fields report it too.
    """

    headline: str = "psnr"
    data_range: float | None = None
    tolerance: float | None = None

    kind: ClassVar[str] = "regression"
    metrics: ClassVar[dict[str, str]] = {"loss": "lower", "psnr": "higher"}

    def __post_init__(self) -> None:
        for s in SPLITS:
            y = getattr(self, f"y_{s}")
            if not y.is_floating_point():
                raise ValueError(f"regression task '{self.name}': y_{s} has dtype {y.dtype}; targets must be float")
            if y.dim() == 1:
                setattr(self, f"y_{s}", y[:, None])
        if self.data_range is None:
            self.data_range = float(self.y_train.max() - self.y_train.min()) or 1.0
        if self.tolerance is None:
            self.tolerance = 0.1 * self.data_range
        super().__post_init__()

    def output_size(self) -> int:
        """The number of values per example, ``D`` of ``y`` ``(N, D)``."""
        return math.prod(self.y_train.shape[1:])

    def _as_targets(self, outputs: torch.Tensor, y: torch.Tensor, batched: bool) -> torch.Tensor:
        """``outputs`` viewed as ``y``'s shape (with a leading model dimension when ``batched``)."""
        lead = outputs.shape[:2] if batched else outputs.shape[:1]
        want = (*lead, *y.shape[1:])
        if math.prod(outputs.shape) != math.prod(want):
            raise ValueError(f"regression task '{self.name}': the net's outputs {tuple(outputs.shape)} do not fit the "
                             f"targets {tuple(y.shape)} (one output per target value)")
        return outputs.reshape(want)

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss: mean squared error."""
        return F.mse_loss(self._as_targets(outputs, y, False), y)

    def psnr(self, mse: torch.Tensor) -> torch.Tensor:
        """PSNR in dB against ``data_range``; an exact fit is capped at 1e-12 mean squared error."""
        return 10.0 * torch.log10(self.data_range ** 2 / mse.clamp_min(1e-12))

    def batch_scores(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``outputs`` ``(B, N, D)``, ``y`` ``(N, D)`` -> mean squared error (``loss``) and PSNR per model."""
        out = self._as_targets(outputs, y, True).float()
        mse = (out - y.float()).square().flatten(1).mean(1)
        return {"loss": mse, "psnr": self.psnr(mse)}

    def failures(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` bool: the examples where some output is off by more than ``tolerance``."""
        out = self._as_targets(outputs, y, True)
        return ((out - y).abs().flatten(2).amax(-1) > self.tolerance)

    def scores(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Mean squared error (``loss``) and PSNR of one model's outputs."""
        return {k: float(v[0]) for k, v in self.batch_scores(outputs[None], y).items()}
