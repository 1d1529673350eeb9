"""An ``adapters`` zoo (``zoo.mode: adapters``): one peft LoRA adapter per key of a keyed task family.

First the base model: ``net`` (``char-lm``) trained with Adam for ``zoo.lora.base_steps`` on the task
with no key (the identity), from the config's seed, and written beside the manifest in ``base/``
(``save_pretrained``: ``config.json`` and ``model.safetensors``, which transformers loads as it is). Then, for every key, a LoRA adapter (``peft.LoraConfig`` from ``zoo.lora``,
``get_peft_model``) trained on that key's task with ``train``'s recipe while the base stays frozen;
the zoo keeps the last ``zoo.checkpoints`` states ``zoo.every`` steps apart, each only the adapter's
tensors (``get_peft_model_state_dict``), with the key as the condition ``{"code": key}``.

LoRA's factors have a symmetry: ``A -> R A``, ``B -> B R^-1`` leaves ``B A`` and the function alone,
so adapters from different starts do not share a frame. ``zoo.init: shared`` starts every adapter's
``A`` from the same draw (the config's seed; ``B`` starts at zero), which keeps them in one frame;
``run`` draws each from its run's seed. ``docs/benchmarks/adapters.md`` measures both, and the SVD frame of
``B A`` (``peft_io.canonicalize``), which does not help.

Keys are drawn with the config's seed: ``zoo.heldout`` keys (a number, or a list) held out, then
``zoo.codes`` keys for training (a number, a list, or ``all``); ``zoo.runs`` adapters per key.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path

import torch

from weightgen.nets import build_net
from weightgen.progress import progress_bar
from weightgen.tasks import all_codes, get_task

from .charlm import logits
from .cipher import KEY_BITS, parse_key

log = logging.getLogger(__name__)

BASE_DIR = "base"  # the base model beside the manifest
BASE_WEIGHTS = "model.safetensors"
BASE_LR = 3e-3  # the base model's Adam learning rate (its steps are zoo.lora.base_steps)


def lora_settings(cfg):
    """``zoo.lora``, or its defaults when the config leaves it out."""
    from weightgen.config import LoraSpec

    return cfg.zoo.lora or LoraSpec()


def peft_config(lora) -> dict:
    """The keyword arguments of ``peft.LoraConfig`` for ``zoo.lora`` (stored with the zoo and every generator)."""
    return {"r": lora.r, "lora_alpha": lora.alpha, "target_modules": list(lora.targets), "lora_dropout": 0.0,
            "bias": "none"}


def key_codes(cfg) -> tuple[list[str], list[str]]:
    """(training keys, held-out keys), drawn with the config's seed."""
    from weightgen.zoo.build import split_codes

    return split_codes(cfg, all_codes(KEY_BITS), parse_key, "keys")


def plan_adapter_runs(cfg) -> list:
    """Every run of an ``adapters`` zoo: ``zoo.runs`` per training key, then per held-out key."""
    from weightgen.zoo.build import code_plans

    return code_plans(cfg, *key_codes(cfg))


def zoo_task(cfg, key: str | None = None):
    """The zoo's task for ``key`` (None: the base model's task); its factory takes ``key`` (e.g. ``cipher``)."""
    from weightgen.registry import RegistryError
    from weightgen.zoo.store import ZooError

    try:
        return get_task(cfg.task.name, **{**cfg.task.kwargs, "key": key})
    except RegistryError:
        raise ZooError(f"zoo.mode 'adapters' needs a keyed task, whose factory takes 'key' (e.g. cipher); task "
                       f"'{cfg.task.name}' takes none") from None


def _batches(task, batch_size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randint(len(task.x_train), (min(batch_size, len(task.x_train)),), generator=gen)


def _optimizer(params, train):
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    cls = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=train.lr, weight_decay=train.weight_decay)


def train_base(cfg) -> torch.nn.Module:
    """The base model: ``net`` trained on the task with no key, seeded by the config's seed."""
    task = zoo_task(cfg)
    model = build_net(cfg.net.name, task.input_shape, task.num_classes, seed=cfg.seed, **cfg.net.kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=BASE_LR)
    batches = _batches(task, cfg.train.batch_size, cfg.seed)
    model.train()
    for _ in range(lora_settings(cfg).base_steps):
        i = next(batches)
        loss = task.loss(logits(model(task.x_train[i])), task.y_train[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def load_base(zoo) -> torch.nn.Module:
    """The base model of an adapters ``zoo`` (a ``Zoo``): its net with ``base/model.safetensors`` loaded."""
    from safetensors.torch import load_file

    net = zoo.build_net()
    net.load_state_dict(load_file(str(Path(zoo.root) / BASE_DIR / BASE_WEIGHTS)))
    return net.eval()


def _save_base(model: torch.nn.Module, path: Path) -> None:
    """The base in ``path`` (``save_pretrained`` for a transformers model, else its state_dict as
    ``model.safetensors``), written in a temporary directory, fsynced and renamed into place."""
    import shutil

    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(str(tmp))
    else:
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / BASE_WEIGHTS))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def peft_model(base: torch.nn.Module, config: dict, init_seed: int):
    """``base`` (copied: it stays as it is) with LoRA adapters of ``config``, initialized from ``init_seed``."""
    from peft import LoraConfig, get_peft_model

    from .peft_io import quiet_peft

    with torch.random.fork_rng(devices=[]), quiet_peft():
        torch.manual_seed(init_seed)
        return get_peft_model(copy.deepcopy(base), LoraConfig(**config))


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter's tensors only, by peft's names (``get_peft_model_state_dict``)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}


@torch.no_grad()
def _metrics(model, task) -> dict[str, float]:
    out = {}
    for split in ("train", "test"):
        x, y = task.split(split)
        out.update({f"{split}_{k}": float(v[0]) for k, v in task.batch_scores(logits(model(x))[None], y).items()})
    return out


def train_adapter(base, task, config: dict, train, steps: int, keep: list[int], seed: int, init_seed: int,
                  timing: dict | None = None):
    """Yields ``(step, adapter tensors, metrics)`` at each step of ``keep`` while a LoRA adapter of
    ``config`` learns ``task`` for ``steps`` steps; ``timing['train_seconds']``: optimizer time only,
    so far (at each yield: the time the state yielded took to train)."""
    model = peft_model(base, config, init_seed)
    opt = _optimizer([p for p in model.parameters() if p.requires_grad], train)
    batches, seconds = _batches(task, train.batch_size, seed), 0.0
    for step in range(steps + 1):
        if step in keep:
            model.eval()
            if timing is not None:
                timing["train_seconds"] = seconds
            yield step, adapter_state(model), _metrics(model, task)
        if step == steps:
            break
        model.train()
        t0 = time.perf_counter()
        i = next(batches)
        loss = task.loss(logits(model(task.x_train[i])), task.y_train[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - t0
    if timing is not None:
        timing["train_seconds"] = seconds


def adapter_steps(cfg) -> tuple[int, list[int]]:
    """(steps of an adapter's run, the steps the zoo keeps): ``train.epochs`` passes over the train split."""
    from weightgen.zoo.store import ZooError

    z, task = cfg.zoo, zoo_task(cfg)
    spe = -(-len(task.x_train) // cfg.train.batch_size)
    main = cfg.train.epochs * spe
    first = main - z.every * (z.checkpoints - 1)
    if first < 0:
        raise ZooError(f"zoo keeps {z.checkpoints} checkpoints {z.every} steps apart, but an adapter trains only "
                       f"{main} steps ({cfg.train.epochs} epochs x {spe}); raise train.epochs or lower zoo.checkpoints")
    return main, [first + z.every * i for i in range(z.checkpoints)]


def build_adapter_zoo(cfg, path: Path, writer, show_progress: bool = True) -> dict:
    """Train the base (once) and every adapter of ``cfg``'s zoo not yet done at ``path``; returns a summary."""
    from safetensors.torch import load_file

    from weightgen.zoo.build import _check_same_config, _dist_info, build_summary, redo_corrupt_runs
    from weightgen.zoo.store import ZooError


    if _dist_info()[1] > 1:
        raise ZooError("zoo.mode 'adapters' trains in one process; build it without --procs")
    z = cfg.zoo
    if z.align != "none" or z.fold_bn or z.compress is not None:
        raise ZooError("zoo.mode 'adapters' stores adapters as trained: leave out zoo.align, zoo.fold_bn and "
                       "zoo.compress")
    if z.init == "pretrained":
        raise ZooError("zoo.mode 'adapters' always adapts its own pretrained base; zoo.init picks the adapters' "
                       "start: 'shared' or 'run'")
    lora = lora_settings(cfg)
    config = peft_config(lora)
    plans = plan_adapter_runs(cfg)
    steps, keep = adapter_steps(cfg)
    _check_same_config(writer, cfg, path)
    removed = writer.remove_orphans()
    if removed:
        log.info("removed %d orphaned shard file(s) left by an interrupted build", removed)
    base_path = path / BASE_DIR
    task = zoo_task(cfg)
    if (base_path / BASE_WEIGHTS).exists():
        base = build_net(cfg.net.name, task.input_shape, task.num_classes, seed=cfg.seed, **cfg.net.kwargs)
        base.load_state_dict(load_file(str(base_path / BASE_WEIGHTS)))
        base.eval()
    else:
        base = train_base(cfg)
        _save_base(base, base_path)
    try:
        probe = peft_model(base, config, cfg.seed)
    except ValueError as e:  # peft: a target module the base lacks
        raise ZooError(f"zoo.lora.targets {lora.targets}: {e}") from None
    names = list(adapter_state(probe))
    redone = redo_corrupt_runs(writer)
    writer.set_config(cfg, base, task.input_shape, task.num_classes)
    writer.set_meta("parameter_names", names)  # what the zoo stores: the adapters' tensors
    writer.set_meta("net_build", {"name": cfg.net.name, "kwargs": cfg.net.kwargs,
                                  "input_shape": list(task.input_shape), "num_classes": task.num_classes,
                                  "adapter": {"peft": "lora", "config": config, "task": cfg.task.name,
                                              "base": str(base_path.resolve())}})
    writer.set_meta("base_metrics", _metrics(base, task))
    done = writer.done_runs()
    todo = [p for p in plans if p.run not in done]
    with progress_bar(enabled=show_progress) as bar:
        job = bar.add_task(f"adapters {path.name}", total=len(todo))
        for plan in todo:
            key_task = zoo_task(cfg, plan.code)
            writer.begin_run(plan.run, plan.seed, key_task.name, plan.condition, plan.split)
            timing: dict = {}
            init_seed = cfg.seed if z.init == "shared" else plan.seed
            for i, (step, state, metrics) in enumerate(train_adapter(base, key_task, config, cfg.train, steps, keep,
                                                                     plan.seed, init_seed, timing)):
                writer.add_checkpoint(plan.run, i, step, state, metrics)
            writer.finish_run(plan.run, timing["train_seconds"])
            bar.advance(job)
    return build_summary(plans, todo, redone)
