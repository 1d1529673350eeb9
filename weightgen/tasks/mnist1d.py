"""MNIST-1D, generated procedurally with ``mnist1d.data.make_dataset`` (never downloaded)."""
from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
import torch
from mnist1d.data import get_dataset_args, make_dataset

from .base import Task
from .registry import TASKS


@lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples: int, seed: int) -> tuple[np.ndarray, ...]:
    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    # make_dataset seeds numpy's and Python's global RNGs; keep the caller's untouched.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x, y = d["x"].astype(np.float32), d["y"].astype(np.int64)
    n_val = len(y) // 5
    return x[n_val:], y[n_val:], x[:n_val], y[:n_val], d["x_test"].astype(np.float32), d["y_test"].astype(np.int64)


@TASKS.register("mnist1d")
def mnist1d(num_samples: int = 5000, seed: int = 42) -> Task:
    """MNIST-1D: 40-sample 1D signals, 10 classes; its generated training set split 80/20 into train/val."""
    arrays = [torch.from_numpy(np.ascontiguousarray(a)) for a in _mnist1d_arrays(num_samples, seed)]
    return Task("mnist1d", *arrays, num_classes=10)
