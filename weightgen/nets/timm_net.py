"""Any timm architecture as ``timm:<name>``; timm is an optional extra (``weightgen[timm]``)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


def timm_net(arch: str, input_shape, num_classes: int, input_size: int | None = None, **kwargs) -> nn.Module:
    """``timm.create_model(arch, in_chans=C, num_classes=K, **kwargs)``, never pretrained.

    ``input_size`` resizes inputs on the way in (digits are 8x8; a resnet wants more).
    It is a forward pre-hook, not a wrapper module, so parameter names stay timm's own
    and patterns like ``layer4.1.bn*`` select what they say.
    """
    try:
        import timm
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            f"net 'timm:{arch}' needs timm: pip install 'weightgen[timm]' (it brings torch 2.14.1 and torchvision)"
        ) from e
    if arch not in timm.list_models():
        from weightgen.registry import RegistryError, did_you_mean

        raise RegistryError(f"unknown timm architecture '{arch}'{did_you_mean(arch, timm.list_models())}")
    if len(input_shape) != 3:
        raise ValueError(f"timm:{arch} expects image inputs (C, H, W); got input shape {tuple(input_shape)}")
    try:
        model = timm.create_model(arch, pretrained=False, in_chans=input_shape[0], num_classes=num_classes, **kwargs)
    except TypeError as e:  # timm passes unknown options on to the model's constructor
        raise ValueError(f"net 'timm:{arch}': bad option among {sorted(kwargs)} ({e})") from None
    if input_size is not None:
        size = (int(input_size), int(input_size))

        def resize(module, args):
            return (F.interpolate(args[0], size=size, mode="bilinear", align_corners=False), *args[1:])

        model.register_forward_pre_hook(resize)
    return model
