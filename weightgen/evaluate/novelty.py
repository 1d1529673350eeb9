"""How new a model is: overlap of its mistakes with, and distance of its weights to, the
training checkpoints.

p-diff's measure is the IoU of wrongly predicted test samples, max over the originals:
a model that errs on exactly the samples some checkpoint errs on behaves like a copy of
it. For a task other than classification the sets are its failed examples (``Task.failures``,
e.g. a prediction off by more than the task's tolerance). The nearest L2 distance in weight
space says the same in parameters.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# Rows of candidate neighbours re-measured exactly per query row (see nearest_distance).
_CANDIDATES = 8
# Elements of the [rows, candidates, P] difference tensor held at once (128 MB in float32).
_BLOCK = 2**25


def iou_matrix(wrong_a: Tensor, wrong_b: Tensor) -> Tensor:
    """``[B, M]`` IoU of the wrong-prediction sets; an empty union (both perfect) is 1.0."""
    if wrong_a.shape[-1] != wrong_b.shape[-1]:
        raise ValueError(f"wrong sets cover different samples: {wrong_a.shape[-1]} vs {wrong_b.shape[-1]}")
    a = wrong_a.float()
    b = wrong_b.to(a.device).float()
    # Counts are exact in float32 up to 2**24 samples.
    inter = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def max_iou(wrong_a: Tensor, wrong_ref: Tensor, exclude_diagonal: bool = False) -> Tensor:
    """``[B]`` highest IoU of each model with any reference; ``exclude_diagonal`` when
    ``wrong_a`` is ``wrong_ref`` (a model is not compared with itself). nan when no
    reference is left to compare with."""
    iou = iou_matrix(wrong_a, wrong_ref)
    if exclude_diagonal:
        _check_square(iou)
        iou.fill_diagonal_(-math.inf)
    if iou.shape[1] == 0:
        return torch.full((iou.shape[0],), math.nan, device=iou.device)
    best = iou.max(1).values
    return torch.where(torch.isinf(best), torch.full_like(best, math.nan), best)


def _check_square(m: Tensor) -> None:
    if m.shape[0] != m.shape[1]:
        raise ValueError(f"exclude_diagonal compares a set with itself; got {m.shape[0]} vs {m.shape[1]} models")


def flatten_states(stacked: dict[str, Tensor], names: list[str]) -> Tensor:
    """``[B, P]``: the named tensors of each model, flattened and concatenated in ``names`` order."""
    if not names:
        raise ValueError("flatten_states: no tensor names given")
    missing = [n for n in names if n not in stacked]
    if missing:
        raise ValueError(f"layer '{missing[0]}' is not in the stacked weights (they have {list(stacked)[:4]}...)")
    b = stacked[names[0]].shape[0]
    dtype = torch.promote_types(stacked[names[0]].dtype, torch.float32)
    return torch.cat([stacked[n].reshape(b, -1).to(dtype) for n in names], 1)


def nearest_distance(flat_a: Tensor, flat_ref: Tensor, exclude_diagonal: bool = False) -> Tensor:
    """``[B]`` L2 distance from each row of ``flat_a`` to its nearest row of ``flat_ref``.

    The fast (matrix-multiply) form of ``torch.cdist`` loses precision to cancellation:
    an exact copy can come out 1.0 away instead of 0. So it only ranks: both sides are
    centred on the references' mean (norms shrink to the zoo's spread), the
    ``_CANDIDATES`` nearest by cdist are re-measured from exact differences, and the
    smallest is kept. Query rows are taken in blocks, so nothing of size B x M x P is
    built. Non-finite rows give nan; non-finite reference rows are never the nearest.
    """
    b, m = flat_a.shape[0], flat_ref.shape[0]
    if flat_a.shape[1:] != flat_ref.shape[1:]:
        raise ValueError(f"rows have {flat_a.shape[1]} values, references {flat_ref.shape[1]}")
    if exclude_diagonal and b != m:
        raise ValueError(f"exclude_diagonal compares a set with itself; got {b} vs {m} models")
    device = flat_a.device
    dtype = torch.promote_types(flat_a.dtype, torch.float32)
    ref = flat_ref.to(device, dtype)
    ref_ok = torch.isfinite(ref).all(1)
    mean = ref[ref_ok].double().mean(0).to(dtype) if ref_ok.any() else torch.zeros_like(ref[0])
    ref = ref - mean
    out = torch.full((b,), math.nan, device=device, dtype=dtype)
    k = min(m, _CANDIDATES)
    if k == 0 or b == 0:
        return out
    rows = max(1, min(1024, _BLOCK // (k * max(1, ref.shape[1]))))
    for lo in range(0, b, rows):
        a = flat_a[lo:lo + rows].to(device, dtype) - mean
        idx = torch.arange(len(a), device=device)
        approx = torch.cdist(a, ref, compute_mode="use_mm_for_euclid_dist").nan_to_num(math.inf, math.inf)
        approx[:, ~ref_ok] = math.inf
        if exclude_diagonal:
            approx[idx, lo + idx] = math.inf
        cand = approx.topk(k, dim=1, largest=False).indices  # [rows, k]
        exact = (a[:, None, :] - ref[cand]).norm(dim=-1).nan_to_num(math.inf, math.inf)
        exact[torch.isinf(approx.gather(1, cand))] = math.inf  # excluded or non-finite candidates
        best = exact.min(1).values
        out[lo:lo + rows] = torch.where(torch.isfinite(best) & torch.isfinite(a).all(1), best, math.nan)
    return out
