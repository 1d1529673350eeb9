"""BatchNorm statistics recomputed for networks that no training run produced (``evaluate.recalibrate_bn``, ours).

A BatchNorm network carries running means and variances of its own activations. A network made
by averaging, by adding noise or by a generator has weights whose activations no stored statistic
describes unless the generator got them right too. The mean of aligned runs (see
``weightgen.zoo.align``) fails for that reason alone (docs/results.md, 'Whole networks'). Recomputing
them is one forward pass over the training inputs, no gradient and no label: what SWA's
``torch.optim.swa_utils.update_bn`` and REPAIR do for averaged networks. It uses data at
generation time, which p-diff, G.pt and RPG do not, so it is off by default, and when on it is
applied to every made network the report judges (weight average, noise-added originals and
samples alike), never to the originals or held-out runs, which SGD gave their own statistics.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from weightgen.nets.fold_bn import BATCHNORMS

from .batched import stack_states


def has_batchnorm(net: nn.Module) -> bool:
    """Whether ``net`` holds any BatchNorm, so whether there is anything to recalibrate."""
    return any(isinstance(m, BATCHNORMS) for m in net.modules())


@torch.no_grad()
def recalibrate_bn(net: nn.Module, x_train: Tensor, stacked: dict[str, Tensor], batch_size: int = 2048) -> dict[str, Tensor]:
    """``stacked`` (``name -> (B, *shape)``) with every BatchNorm's running statistics replaced by
    those of its network on ``x_train`` (batch statistics averaged with each batch weighted by its size);
    all other entries unchanged. ``net`` is used as a scratch module (its state is restored)."""
    if not has_batchnorm(net):
        return stacked
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    momenta = {m: m.momentum for m in net.modules() if isinstance(m, BATCHNORMS)}
    was_training = net.training
    device = next(iter(saved.values())).device
    out = []
    try:
        for b in range(next(iter(stacked.values())).shape[0]):
            net.load_state_dict({k: v[b] for k, v in stacked.items()})
            for m in momenta:
                m.reset_running_stats()
            net.train()
            for i in range(0, len(x_train), batch_size):
                batch = x_train[i:i + batch_size]
                for m in momenta:  # each batch weighted by its size: the running mean is the mean over all inputs
                    m.momentum = len(batch) / (i + len(batch))
                net(batch.to(device))
            out.append({k: v.detach().clone() for k, v in net.state_dict().items()})
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        net.load_state_dict(saved)
        net.train(was_training)
    new = stack_states(out)
    return {k: new[k].to(v.device, v.dtype) for k, v in stacked.items()}
