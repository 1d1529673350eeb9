"""Evaluate many models of one architecture at once.

Weights of B models are "stacked" (``name -> [B, *shape]``, parameters and buffers) and
run through one ``torch.func.functional_call`` under ``torch.func.vmap``, a chunk of
models at a time: one forward pass per chunk instead of a Python loop per model, and
memory bounded by ``chunk`` x split size. The net is put in eval mode, so BatchNorm uses
the (stacked) running statistics of each model. The task turns the outputs into its metrics
and failure sets (``Task.batch_scores``, ``Task.failures``); a task whose metric cannot come
from outputs on fixed data scores each chunk itself (``Task.evaluate``).

A net whose ops vmap cannot batch falls back to a per-model loop (same numbers, slower),
with a logged warning. Models with non-finite weights or outputs are marked, never fatal:
vmap keeps every model's computation separate, so a NaN in one cannot reach the others.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from weightgen.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class Scores:
    """One row per model, all on the CPU (small: B x split size at most).

    ``metrics``: the task's metrics by name, ``[B]`` float each, nan for a non-finite model.
    ``failures``: ``[B, N]`` bool, the examples each model fails (a wrong class for classification),
    all True for a non-finite model. ``finite``: ``[B]`` bool.
    """

    metrics: dict[str, Tensor]
    failures: Tensor
    finite: Tensor

    def __len__(self) -> int:
        return len(self.finite)

    @property
    def accuracy(self) -> Tensor:
        """The ``accuracy`` metric (classification)."""
        return self.metrics["accuracy"]

    @property
    def loss(self) -> Tensor:
        """The ``loss`` metric: the task's training loss on the split."""
        return self.metrics["loss"]

    @property
    def wrong(self) -> Tensor:
        """The failure sets under their classification name: wrongly predicted examples."""
        return self.failures

    @staticmethod
    def cat(parts: list["Scores"]) -> "Scores":
        """The rows of several ``Scores`` in order, as one."""
        parts = list(parts)
        if not parts:
            raise ValueError("Scores.cat: no scores to concatenate (zero models were evaluated)")
        names = list(parts[0].metrics)
        for p in parts[1:]:
            if list(p.metrics) != names:
                raise ValueError(f"Scores.cat: metrics {list(p.metrics)} differ from {names}")
        return Scores({k: torch.cat([p.metrics[k] for p in parts]) for k in names},
                      torch.cat([p.failures for p in parts]), torch.cat([p.finite for p in parts]))


def stack_states(states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """``[{name: tensor}] * B`` -> ``{name: [B, *shape]}``; every state must have the same layers."""
    states = list(states)
    if not states:
        raise ValueError("stack_states: no state_dicts given")
    first = states[0]
    for i, s in enumerate(states[1:], 1):
        if s.keys() != first.keys():
            extra, missing = sorted(s.keys() - first.keys()), sorted(first.keys() - s.keys())
            raise ValueError(f"state {i} differs from state 0 in its layers: extra {extra}, missing {missing}")
        for k, v in s.items():
            if v.shape != first[k].shape:
                raise ValueError(f"layer '{k}': state 0 has shape {tuple(first[k].shape)}, state {i} has {tuple(v.shape)}")
    return {k: torch.stack([s[k].detach() for s in states]) for k in first}


def unstack_states(stacked: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """The inverse of ``stack_states``; each tensor is a view into the stacked one."""
    n = _num_models(stacked)
    return [{k: v[i] for k, v in stacked.items()} for i in range(n)]


def _num_models(stacked: dict[str, Tensor]) -> int:
    if not stacked:
        raise ValueError("stacked state is empty")
    sizes = {k: v.shape[0] if v.dim() else None for k, v in stacked.items()}
    n = next(iter(sizes.values()))
    for k, b in sizes.items():
        if b is None or b != n:
            raise ValueError(f"layer '{k}': leading (model) dimension is {b}, other layers have {n}")
    return n


def check_stacked(net: nn.Module, stacked: dict[str, Tensor]) -> int:
    """Raise a ValueError naming the first layer that does not fit ``net``; return B."""
    reference = net.state_dict()
    for k in stacked:
        if k not in reference:
            raise ValueError(f"layer '{k}' (shape {tuple(stacked[k].shape[1:])}) is not in the net "
                             f"{type(net).__name__}; its layers start with {list(reference)[:4]}")
    for k, ref in reference.items():
        if k not in stacked:
            raise ValueError(f"layer '{k}' of the net (shape {tuple(ref.shape)}) is missing from the stacked weights")
        if tuple(stacked[k].shape[1:]) != tuple(ref.shape):
            raise ValueError(f"layer '{k}': the net has shape {tuple(ref.shape)}, "
                             f"the stacked weights have {tuple(stacked[k].shape[1:])} per model")
    return _num_models(stacked)


@contextlib.contextmanager
def _eval_mode(net: nn.Module, device: torch.device):
    """Eval mode, and attention kernels that vmap can batch.

    nn.MultiheadAttention's fused fast path and the CPU flash-attention kernel of
    scaled_dot_product_attention have no vmap batching rule: vmap would loop over the
    models inside them (correct, slow, with a warning). The plain MHA path and SDPA's math
    kernel compute the same thing and batch; CUDA's fused SDPA kernels batch as they are.
    """
    was_training = net.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    net.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext():
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        net.train(was_training)


def _device_for(net: nn.Module, stacked: dict[str, Tensor]) -> torch.device:
    """Where the models run: where their weights are, unless the net was put on an
    accelerator and the weights are on the CPU (e.g. streamed from disk): then there."""
    weights = next(iter(stacked.values())).device
    net_dev = next((t.device for t in (*net.parameters(), *net.buffers())), weights)
    return net_dev if weights.type == "cpu" and net_dev.type != "cpu" else weights


class Evaluator:
    """Scores stacked models of ``net`` on one split of ``task``, chunk by chunk.

    Holds the split on the device in use and remembers whether vmap works for this net,
    so a stream of batches tries (and warns about) vmap once. At most ``chunk`` models x
    ``batch`` samples are in flight: lower either for a net with large activations. The task
    scores a chunk from its outputs on the whole split, ``chunk`` x split size x outputs values.
    """

    def __init__(self, net: nn.Module, task: Task, split: str = "test", chunk: int = 64, batch: int = 1024):
        if chunk < 1 or batch < 1:
            raise ValueError(f"chunk ({chunk}) and batch ({batch}) must be >= 1")
        self.net, self.task, self.split, self.chunk, self.batch = net, task, split, chunk, batch
        self.x, self.y = task.split(split)
        self.vectorized = True
        self._data: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _on(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The split on ``device``, inputs in the weights' dtype (cached: moved once)."""
        if (device, dtype) not in self._data:
            x = self.x.to(device, dtype) if self.x.is_floating_point() else self.x.to(device)
            self._data[device, dtype] = (x, self.y.to(device))
        return self._data[device, dtype]

    def _logits(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """``[b, n, C]`` logits of the b models in ``params`` on inputs ``x``."""
        def one(p, xb):
            return functional_call(self.net, p, (xb,), strict=True)

        if self.vectorized:
            try:
                return vmap(one, in_dims=(0, None))(params, x)
            except (RuntimeError, NotImplementedError, TypeError) as e:
                self.vectorized = False
                log.warning("vmap cannot evaluate %s (%s: %s); evaluating its models one at a time",
                            type(self.net).__name__, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        b = next(iter(params.values())).shape[0]
        return torch.stack([one({k: v[i] for k, v in params.items()}, x) for i in range(b)])

    @torch.no_grad()
    def __call__(self, stacked: dict[str, Tensor]) -> Scores:
        n_models = check_stacked(self.net, stacked)
        device = _device_for(self.net, stacked)
        dtype = next((v.dtype for v in stacked.values() if v.is_floating_point()), self.x.dtype)
        x, y = self._on(device, dtype)
        parts = []
        with _eval_mode(self.net, device):
            for lo in range(0, n_models, self.chunk):
                params = {k: v[lo:lo + self.chunk].to(device) for k, v in stacked.items()}
                if self.task.evaluate is not None:
                    parts.append(self._own_scores(params))
                else:
                    parts.append(self._score_chunk(params, x, y))
        return Scores.cat(parts)

    @staticmethod
    def _finite_weights(params: dict[str, Tensor]) -> Tensor:
        b = next(iter(params.values())).shape[0]
        finite = torch.ones(b, dtype=torch.bool, device=next(iter(params.values())).device)
        for v in params.values():
            if v.is_floating_point() or v.is_complex():
                finite &= torch.isfinite(v.reshape(b, -1)).all(1)
        return finite

    @staticmethod
    def _masked(metrics: dict[str, Tensor], failures: Tensor, finite: Tensor) -> Scores:
        """Scores on the CPU with a non-finite model's metrics nan and every example a failure."""
        nan = torch.tensor(math.nan, device=finite.device)
        return Scores({k: torch.where(finite, v.to(finite.device).float(), nan).cpu() for k, v in metrics.items()},
                      (failures.to(finite.device) | ~finite[:, None]).cpu(), finite.cpu())

    def _own_scores(self, params: dict[str, Tensor]) -> Scores:
        """A chunk scored by the task's own ``evaluate``, with models of non-finite weights marked."""
        got = self.task.evaluate(self.net, params, self.split)
        finite = self._finite_weights(params) & got.finite.to(next(iter(params.values())).device)
        return self._masked(got.metrics, got.failures, finite)

    def _score_chunk(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Scores:
        finite = self._finite_weights(params)
        # Outputs are gathered per sample batch, so only [b, batch, ...] activations exist at a time,
        # and the task scores the chunk's [b, N, ...] outputs at once.
        outputs = []
        for i in range(0, len(y), self.batch):
            out = self._logits(params, x[i:i + self.batch]).float()
            finite &= torch.isfinite(out).flatten(1).all(1)
            outputs.append(out)
        outputs = torch.cat(outputs, 1) if len(outputs) > 1 else outputs[0]
        return self._masked(self.task.batch_scores(outputs, y), self.task.failures(outputs, y), finite)


def evaluate_states(net: nn.Module, stacked: dict[str, Tensor], task: Task, split: str = "test",
                    chunk: int = 64) -> Scores:
    """The task's metrics and failure sets of every stacked model on ``split``."""
    return Evaluator(net, task, split, chunk)(stacked)


def evaluate_stream(net: nn.Module, batches: Iterable[dict[str, Tensor]], task: Task, split: str = "test",
                    chunk: int = 64) -> Scores:
    """``evaluate_states`` over many stacked batches (e.g. read from disk one at a time);
    only one batch is held at a time."""
    ev = Evaluator(net, task, split, chunk)
    return Scores.cat([ev(b) for b in batches])
