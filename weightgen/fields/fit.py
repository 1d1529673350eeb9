"""Fit many field networks at once.

The parameters of M networks of one architecture are stacked ``(M, ...)`` and the forward pass is
``torch.func.functional_call`` under ``torch.func.vmap``: one batched matrix product per layer
instead of M small ones. The loss is the sum of the M networks' own mean squared errors, so each
network's gradient is exactly the one it would get alone, and one Adam over the stacked tensors
equals M independent Adams (Adam is elementwise). With ``batch_coords`` every step uses the same
random subset of the coordinates for all M networks, drawn from ``seed`` alone, so a field's fit does
not depend on which other fields share its chunk.
"""
from __future__ import annotations


import torch
from torch.func import functional_call, stack_module_state, vmap

from weightgen.nets import build_net


def field_nets(net_name: str, dims: int, seeds: list[int], **net_kwargs) -> list[torch.nn.Module]:
    """One field network per seed (``build_net(net_name, (dims,), 1, seed)``)."""
    return [build_net(net_name, (dims,), 1, seed=s, **net_kwargs) for s in seeds]


def fit_fields(net_name: str, coords: torch.Tensor, values: torch.Tensor, seeds: list[int], steps: int,
               lr: float = 1e-2, batch_coords: int | None = None, seed: int = 0, data_range: float = 1.0,
               device: str | torch.device = "cpu", **net_kwargs) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Fit network i (initialized from ``seeds[i]``) to ``values[i]`` on ``coords``, all at once.

    ``coords (P, d)``, ``values (M, P, 1)``; ``steps`` Adam steps at ``lr``, each on ``batch_coords``
    random coordinates (all of them when None or >= P). Returns the stacked state dicts
    ``name -> (M, *shape)`` (on the CPU) and each field's PSNR ``(M,)`` on all of its coordinates,
    against ``data_range``.
    """
    if values.dim() != 3 or values.shape[1] != coords.shape[0]:
        raise ValueError(f"fit_fields: values {tuple(values.shape)} do not match coords {tuple(coords.shape)}; "
                         "values must be (M, P, 1) for coords (P, d)")
    if len(seeds) != values.shape[0]:
        raise ValueError(f"fit_fields: {len(seeds)} seeds for {values.shape[0]} fields")
    device = torch.device(device)
    nets = field_nets(net_name, coords.shape[1], seeds, **net_kwargs)
    base = nets[0].to(device)
    params, buffers = stack_module_state(nets)
    params = {k: v.detach().to(device).requires_grad_(True) for k, v in params.items()}
    buffers = {k: v.to(device) for k, v in buffers.items()}
    coords, values = coords.to(device), values.to(device)

    def one(p, b, x):
        return functional_call(base, (p, b), (x,))

    forward = vmap(one, in_dims=(0, 0, None))
    opt = torch.optim.Adam(params.values(), lr=lr)
    n_points = coords.shape[0]
    batch = n_points if not batch_coords or batch_coords >= n_points else batch_coords
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        if batch < n_points:
            idx = torch.randperm(n_points, generator=gen)[:batch].to(device)
            x, y = coords[idx], values[:, idx]
        else:
            x, y = coords, values
        out = forward(params, buffers, x)
        loss = (out - y).square().mean(dim=(1, 2)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = (forward(params, buffers, coords) - values).square().mean(dim=(1, 2))
        psnr = 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-12))
    # state_dict order and names (the non-persistent buffers, shared by every net, are left out)
    order = list(base.state_dict())
    stacked = {k: (params[k] if k in params else buffers[k]).detach().cpu() for k in order}
    return stacked, psnr.cpu()


# Values evaluated at once (networks x points) while decoding fields: bounds the activations.
CHUNK_VALUES = 1 << 20


def field_values(net: torch.nn.Module, stacked: dict[str, torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
    """The values ``(M, P, 1)`` of M networks (``stacked``: ``name -> (M, ...)``, the architecture of
    ``net``, whose own buffers stand in for any that ``stacked`` lacks) on ``coords (P, d)``, float32 on
    the CPU, about ``CHUNK_VALUES`` network-point pairs at a time."""
    m = next(iter(stacked.values())).shape[0]
    coords = coords.to(next(iter(stacked.values())).device)
    forward = vmap(lambda p, x: functional_call(net, p, (x,)), in_dims=(0, None))
    points = max(1, min(len(coords), CHUNK_VALUES))
    models = max(1, CHUNK_VALUES // points)
    out = torch.empty(m, len(coords), 1)
    with torch.no_grad():
        for m0 in range(0, m, models):
            part = {k: v[m0:m0 + models].float() for k, v in stacked.items()}
            for p0 in range(0, len(coords), points):
                out[m0:m0 + models, p0:p0 + points] = forward(part, coords[p0:p0 + points]).float().cpu()
    return out


def psnr(mse: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of mean squared errors against ``data_range``."""
    return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-12))


__all__ = ["fit_fields", "field_nets", "field_values", "psnr"]
