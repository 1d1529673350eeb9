"""Judging generated networks: batched evaluation (torch.func), novelty against the
training checkpoints, the two baselines any generator must beat, the judgement (``judge``) and its report."""
from .baselines import DEFAULT_SIGMAS, noise_added, run_averages, weight_average
from .batched import Evaluator, Scores, evaluate_states, evaluate_stream, stack_states, unstack_states
from .judging import Objective, judge
from .novelty import flatten_states, iou_matrix, max_iou, nearest_distance

__all__ = [
    "Scores", "Evaluator", "stack_states", "unstack_states", "evaluate_states", "evaluate_stream",
    "iou_matrix", "max_iou", "nearest_distance", "flatten_states",
    "DEFAULT_SIGMAS", "noise_added", "weight_average", "run_averages", "judge", "Objective",
]
