"""Adapters as peft reads and writes them: checked against a base model, scored, canonicalized, written.

A stored adapter is peft's state dict of the adapter alone (``get_peft_model_state_dict``):
``base_model.model.<module>.lora_A.weight`` ``(r, in)`` and ``...lora_B.weight`` ``(out, r)`` for every
targeted ``nn.Linear``. ``write_peft`` writes one with peft's own ``save_pretrained``
(``adapter_config.json`` and ``adapter_model.safetensors``), so ``PeftModel.from_pretrained(base, dir)``
loads it with no weightgen code. ``load_adapter`` reads such a directory (JSON and safetensors only)
and refuses, in one line naming the module and both shapes, an adapter made for another base.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from .charlm import logits

PREFIX = "base_model.model."
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


@contextlib.contextmanager
def quiet_peft():
    """transformers warns of its own deprecated name each time peft wraps a model: not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


class AdapterError(ValueError):
    """An adapter that does not fit the base model or its config."""


def modules_of(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``module name -> (A, B)`` of an adapter's tensors."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for part in ("lora_A", "lora_B"):
            tail = f".{part}.weight"
            if key.endswith(tail):
                name = key[:-len(tail)]
                out.setdefault(name[len(PREFIX):] if name.startswith(PREFIX) else name, {})[part] = value
                break
        else:
            raise AdapterError(f"adapter tensor '{key}' is not a LoRA factor (<module>.lora_A.weight or .lora_B.weight)")
    for name, parts in out.items():
        if len(parts) != 2:
            raise AdapterError(f"adapter module '{name}' has {', '.join(parts)} only; LoRA needs lora_A and lora_B")
    return {name: (p["lora_A"], p["lora_B"]) for name, p in out.items()}


def check_adapter(base: nn.Module, config: dict, state: dict[str, torch.Tensor], what: str = "adapter") -> None:
    """``state`` must be a LoRA adapter of rank ``config['r']`` for ``base``'s linear layers named by
    ``config['target_modules']``; otherwise one line naming the module and both shapes."""
    r = int(config["r"])
    layers = {n: m for n, m in base.named_modules() if isinstance(m, nn.Linear)}
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    wanted = sorted(n for n in layers if any(n == t or n.endswith("." + t) for t in targets))
    if not wanted:
        raise AdapterError(f"{what}: target_modules {targets} match no linear layer of the base model "
                           f"(its linear layers: {', '.join(sorted(layers))})")
    modules = modules_of(state)
    for name, (a, b) in modules.items():
        layer = layers.get(name)
        if layer is None:
            raise AdapterError(f"{what}: module '{name}' is not a linear layer of the base model "
                               f"(its targeted layers: {', '.join(wanted)})")
        need_a, need_b = (r, layer.in_features), (layer.out_features, r)
        for part, t, need in (("lora_A", a, need_a), ("lora_B", b, need_b)):
            if tuple(t.shape) != need:
                raise AdapterError(f"{what}: module '{name}': {part} has shape {tuple(t.shape)}, the base model's "
                                   f"Linear({layer.in_features}, {layer.out_features}) at rank {r} needs {need}")
    missing = [n for n in wanted if n not in modules]
    if missing:
        raise AdapterError(f"{what}: no tensors for module '{missing[0]}', which target_modules {targets} select in "
                           "the base model")


def merged(base_state: dict[str, torch.Tensor], state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """The base's parameters with the adapter merged in: ``W + (alpha / r) B A`` for every adapted layer."""
    scale = float(config["lora_alpha"]) / float(config["r"])
    out = dict(base_state)
    for name, (a, b) in modules_of(state).items():
        out[f"{name}.weight"] = base_state[f"{name}.weight"] + scale * (b.float() @ a.float())
    return out


@torch.no_grad()
def score_adapters(base: nn.Module, task, adapters, config: dict, split: str = "test") -> torch.Tensor:
    """``(n,)`` headline scores of the task (``None`` in ``adapters``: the base itself) on ``split``."""
    x, y = task.split(split)
    base_state = {k: v.detach() for k, v in base.state_dict().items()}
    scores = []
    for state in adapters:
        params = base_state if state is None else merged(base_state, state, config)
        out = logits(functional_call(base, params, (x,)))
        scores.append(task.batch_scores(out[None], y)[task.headline][0])
    return torch.stack(scores) if scores else torch.empty(0)


def canonicalize(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same adapter in the frame of its product: for each module, ``B A = U S V^T`` (rank r) and
    ``B' = U sqrt(S)``, ``A' = sqrt(S) V^T``, each column of ``U`` signed so its largest entry is positive.
    ``B' A' = B A``, so the function is unchanged, and the frame no longer depends on the start."""
    out = {}
    for name, (a, b) in modules_of(state).items():
        r = a.shape[0]
        u, s, vh = torch.linalg.svd(b.double() @ a.double(), full_matrices=False)
        u, s, vh = u[:, :r], s[:r], vh[:r]
        sign = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True)))[0]
        sign[sign == 0] = 1
        root = s.sqrt()
        out[f"{PREFIX}{name}.lora_A.weight"] = ((root * sign)[:, None] * vh).to(a.dtype).contiguous()
        out[f"{PREFIX}{name}.lora_B.weight"] = (u * (root * sign)).to(b.dtype).contiguous()
    return {k: out[k] for k in state}


def write_peft(state: dict[str, torch.Tensor], base: nn.Module, config: dict, directory: str | Path,
               base_path: str | None = None) -> Path:
    """``state`` written by peft's ``save_pretrained`` into ``directory`` (``adapter_config.json``,
    ``adapter_model.safetensors``), after ``check_adapter`` against ``base`` (only its architecture is used).
    ``base_path``: the base model's directory, recorded as ``base_model_name_or_path``."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    check_adapter(base, config, state, f"adapter for {directory}")
    if base_path is not None:  # get_peft_model records the base's own name_or_path in adapter_config.json
        base.name_or_path = str(base_path)
    with quiet_peft():
        model = get_peft_model(base, LoraConfig(**config))
    set_peft_model_state_dict(model, state)
    directory = Path(directory)
    model.save_pretrained(str(directory))
    readme = directory / "README.md"  # peft's empty model card: nothing a loader needs
    if readme.exists():
        readme.unlink()
    return directory


def read_adapter(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of a peft adapter directory: JSON and safetensors, nothing unpickled."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise AdapterError(f"{directory}: no {name}; a peft adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{directory / CONFIG_FILE}: not JSON ({e.msg}, line {e.lineno})") from None
    if config.get("peft_type", "LORA") != "LORA" or "r" not in config:
        raise AdapterError(f"{directory / CONFIG_FILE}: not a LoRA adapter config (peft_type "
                           f"{config.get('peft_type')!r}, r {config.get('r')!r})")
    return config, load_file(str(directory / WEIGHTS_FILE))


def load_adapter(base: nn.Module, directory: str | Path):
    """``PeftModel.from_pretrained(base, directory)``, after checking the adapter fits ``base``."""
    from peft import PeftModel

    config, state = read_adapter(directory)
    check_adapter(base, config, state, f"adapter {directory}")
    with quiet_peft():
        return PeftModel.from_pretrained(base, str(directory))


def write_generated(gen, directory: str | Path, n: int, condition, seed: int = 0, batch_size: int = 100,
                    sampler: str = "ddpm", steps: int | None = None) -> list[Path]:
    """``n`` adapters sampled from ``gen`` (fitted on an ``adapters`` zoo) for ``condition``, each written
    in peft's format: into ``directory`` itself when ``n`` is 1, else ``directory/adapter_XXXX``."""
    adapter = (gen.net_build or {}).get("adapter")
    if not adapter:
        raise AdapterError(f"this {gen.method} generator was not fitted on an adapters zoo (zoo.mode: adapters); "
                           "peft adapters come only from one")
    if adapter.get("task") == "cipher":  # the family's own form of condition, named when a key is outside it
        from .cipher import parse_key

        condition = parse_key(condition.get("code") if isinstance(condition, dict) else condition)
    directory, written = Path(directory), []
    for batch in gen.sample(n, condition, seed, batch_size, sampler, steps):
        for i in range(next(iter(batch.values())).shape[0]):
            out = directory if n == 1 else directory / f"adapter_{len(written):04d}"
            written.append(write_peft({k: v[i].contiguous() for k, v in batch.items()}, gen.build_net(),
                                      adapter["config"], out, adapter.get("base")))
    return written
