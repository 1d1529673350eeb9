"""The accuracy-vs-novelty scatter p-diff and RPG show: x is a model's max IoU of wrong
test predictions (failed test examples, for a task other than classification) with the training
checkpoints, y its test accuracy or the task's headline metric. A generator worth having puts
points to the left of the noise-added originals and, where higher is better, up.

Drawn with matplotlib's object API on an Agg canvas: no pyplot, no global backend
switch, so it works headless and does not disturb a caller's own plotting.
"""
from __future__ import annotations

import math
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

NOISE_PREFIX = "noise_"


def _points(group: dict, metric: str = "accuracy") -> tuple[list[float], list[float]]:
    """(max IoU, metric) of the group's finite models (null entries dropped)."""
    pairs = [(i, a) for i, a in zip(group["max_iou"], group[metric])
             if i is not None and a is not None and math.isfinite(i) and math.isfinite(a)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def novelty_plot(groups: dict[str, dict], path: str | Path, title: str = "", metric: str = "accuracy",
                 better: str = "higher") -> None:
    """The scatter of every judged group (``judging.judge``'s ``groups``), written to ``path`` as an image;
    y is ``metric``, the report's headline, ``better`` the direction that is better."""
    fig = Figure(figsize=(8, 5.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    noise = [k for k in groups if k.startswith(NOISE_PREFIX)]
    ramp = colormaps["viridis"]
    for i, key in enumerate(noise):
        x, y = _points(groups[key], metric)
        sigma = key[len(NOISE_PREFIX):]
        ax.scatter(x, y, s=14, alpha=0.55, color=ramp(i / max(1, len(noise) - 1)), label=f"noise σ={sigma}")
    if "original" in groups:
        x, y = _points(groups["original"], metric)
        ax.scatter(x, y, s=30, marker="o", facecolor="none", edgecolor="black", linewidth=1.0, label="original")
    if "generated" in groups:
        x, y = _points(groups["generated"], metric)
        ax.scatter(x, y, s=26, marker="^", color="crimson", alpha=0.8, label="generated")
    if "heldout" in groups:
        x, y = _points(groups["heldout"], metric)
        ax.scatter(x, y, s=26, marker="s", color="darkorange", alpha=0.8, label="held-out runs (new seeds)")
    if "run_average" in groups:
        x, y = _points(groups["run_average"], metric)
        ax.scatter(x, y, s=60, marker="D", color="deepskyblue", edgecolor="black", alpha=0.8, zorder=4,
                   label="each run's weight average")
    if "weight_average" in groups:
        x, y = _points(groups["weight_average"], metric)
        ax.scatter(x, y, s=200, marker="*", color="deepskyblue", edgecolor="black", zorder=5, label="weight average")
    failed = "wrong test predictions" if metric == "accuracy" else "failed test examples"
    ax.set_xlabel(f"max IoU of {failed} with any training checkpoint", fontsize=11)
    ax.set_ylabel(f"test {metric} ({better} is better)", fontsize=11)
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=12)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    fig.savefig(path, dpi=130, bbox_inches="tight")
