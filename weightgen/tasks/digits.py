"""scikit-learn's 8x8 digits (ships inside the package: no download)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .base import Task
from .registry import TASKS

# Fixed split seed: every zoo member, generator and evaluation sees the same split.
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, ...]:
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    # 60 / 20 / 20, stratified so every class is in every split.
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=SPLIT_SEED)
    x_va, x_te, y_va, y_te = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=SPLIT_SEED)
    return x_tr, y_tr, x_va, y_va, x_te, y_te


@TASKS.register("digits")
def digits(standardize: bool = False) -> Task:
    """``standardize``: pixels shifted and scaled by the training split's one mean and one standard
    deviation (zero mean, unit variance), instead of the raw 0..1. One scalar pair, not one per pixel:
    the corner pixels are 0 in every image, so a per-pixel deviation would divide by zero. Why: a conv
    net without BatchNorm on raw 0..1 inputs stays at its initial loss for many SGD steps, and when it
    leaves depends on the initialization (docs/results.md, 'Prompted metrics')."""
    x_tr, y_tr, x_va, y_va, x_te, y_te = _digits_arrays()
    if standardize:
        mean, std = float(x_tr.mean()), float(x_tr.std())
        x_tr, x_va, x_te = ((x - mean) / std for x in (x_tr, x_va, x_te))
    arrays = [torch.from_numpy(a) for a in (x_tr, y_tr, x_va, y_va, x_te, y_te)]
    return Task("digits", *arrays, num_classes=10)
