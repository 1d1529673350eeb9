"""A PyTorch Lightning callback that records a zoo while a ``Trainer`` trains (``pip install 'weightgen[lightning]'``).

::

    from weightgen.integrations.lightning import ZooRecorderCallback

    trainer = Trainer(max_epochs=30, callbacks=[ZooRecorderCallback("zoos/mine", net=..., task=..., run=seed)])

It is ``weightgen.zoo.Recorder`` driven by the trainer: a checkpoint every ``every_n_steps`` optimizer
steps, or at the end of each training epoch, with the metrics logged so far (``trainer.callback_metrics``).
Only the global rank 0 writes. This module imports Lightning; nothing else in weightgen does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError:  # the older package name
    try:
        from pytorch_lightning import Callback
    except ImportError:
        raise ImportError("weightgen.integrations.lightning needs Lightning: "
                          "pip install 'weightgen[lightning]'") from None

import torch

from weightgen.zoo.recorder import Recorder


class ZooRecorderCallback(Callback):
    """Records the LightningModule's weights into the zoo at ``path`` as it trains.

    Args:
        path, net, task: as for ``Recorder``; ``net`` is the architecture of the recorded weights.
        run: the run these checkpoints belong to (one ``Trainer.fit`` is one run; use the seed).
        every_n_steps: record after every this many optimizer steps; None records at each epoch's end.
        at_start: also record the weights before the first step (step 0).
        module: the attribute of the LightningModule that holds the net (``"model"``); None takes the
            LightningModule's own state dict, read without a prefix common to all its keys.
        split, condition: as for ``Recorder.record``.
        **recorder: ``evaluate``, ``config``, ``mode``, ``seed``, ``device`` for the ``Recorder``.
    """

    def __init__(self, path: str | Path, net: Any = None, task: Any = None, *, run: int = 0,
                 every_n_steps: int | None = None, at_start: bool = False, module: str | None = None,
                 split: str = "train", condition: dict | None = None, **recorder):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps is a positive number of steps or None, got {every_n_steps}")
        self.path, self.net, self.task, self.recorder_kwargs = path, net, task, recorder
        self.run, self.every_n_steps, self.at_start, self.module = run, every_n_steps, at_start, module
        self.split, self.condition = split, condition
        self.recorder: Recorder | None = None
        self._last_step: int | None = None

    # -- what is recorded ---------------------------------------------------------------------------
    def _record(self, trainer, pl_module) -> None:
        step = int(trainer.global_step)
        if self.recorder is None or step == self._last_step or trainer.sanity_checking:
            return
        model = getattr(pl_module, self.module) if self.module else pl_module
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)}
        self.recorder.record(model, run=self.run, step=step, metrics=metrics, condition=self.condition,
                             split=self.split)
        self._last_step = step

    # -- Lightning hooks ----------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.recorder is None:
            self.recorder = Recorder(self.path, self.net, self.task, **self.recorder_kwargs)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.at_start:
            self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._record(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_steps is None:
            self._record(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.close()

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
