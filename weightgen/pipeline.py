"""The main job, ``weightgen run``: zoo (reused when it exists) -> fit -> sample -> evaluate -> report.

Each stage is also a function of its own, used by the ``train``, ``sample`` and ``eval``
commands, so that the CLI and the full run share one path.
"""
from __future__ import annotations

import itertools
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors.torch import load_file, save_file

from weightgen.config import ExperimentConfig, dump_config
from weightgen.evaluate import judge, stack_states
from weightgen.evaluate.batched import check_stacked
from weightgen.generators import GENERATORS, Generator, GeneratorError, load_generator, set_sampling
from weightgen.tasks import Task, get_task
from weightgen.zoo import Zoo, build_zoo

log = logging.getLogger(__name__)

SAMPLES_JSON = "samples.json"


def zoo_task(zoo: Zoo) -> Task:
    cfg = zoo.config
    return get_task(cfg.task.name, cfg.task.code, **cfg.task.kwargs)


def fit_generator(cfg: ExperimentConfig, zoo: Zoo, show_progress: bool = True, checkpoint_dir: Path | None = None,
                  checkpoint_every: int = 1000, write: bool = True) -> tuple[Generator, dict]:
    """Seed, build and fit ``cfg``'s generator on ``zoo``. With ``checkpoint_dir`` the fit saves its
    state there every ``checkpoint_every`` steps and, run again, resumes from it
    (weightgen/checkpointing.py); ``write``: whether this process writes it (rank 0 of several)."""
    from weightgen.checkpointing import FitCheckpoint, checkpointing, config_sections

    cls = GENERATORS.get(cfg.generator.method)
    seed = cfg.seed if cfg.generator.seed is None else cfg.generator.seed
    torch.manual_seed(seed)  # the generator's initial weights come from the global RNG
    gen = cls.from_zoo(cfg.generator, zoo, cfg.tokenizer, cfg.device)
    if cfg.generator.init_from:
        gen.start_from(load_generator(cfg.generator.init_from, cfg.device), cfg.generator.init_from)
    ck = None
    if checkpoint_dir is not None:
        ck = FitCheckpoint(checkpoint_dir, checkpoint_every, config_sections(cfg), gen.components(), write=write)
    start = time.perf_counter()
    with checkpointing(ck):
        stats = gen.fit(zoo, show_progress=show_progress, seed=seed)
    stats["fit_seconds"] = time.perf_counter() - start
    if ck is not None and ck.saved is not None:
        stats["resumed_from"] = {"phase": ck.saved["phase"], "step": ck.saved["step"]}
    return gen, stats


def timed(batches: Iterable[dict], clock: dict) -> Iterator[dict]:
    """Pass batches through, adding the time spent producing them to ``clock['seconds']``."""
    it = iter(batches)
    clock.setdefault("seconds", 0.0)
    while True:
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        clock["seconds"] += time.perf_counter() - start
        yield batch


def train_stack(zoo: Zoo) -> dict[str, torch.Tensor]:
    """Every training checkpoint of the zoo, stacked ``name -> (M, *shape)``."""
    return stack_states([zoo.load(m) for m in zoo.members("train")])


def sgd_seconds_per_member(zoo: Zoo) -> float | None:
    """Optimizer time of one training run, averaged over the zoo's runs."""
    secs = [r["train_seconds"] for r in zoo.runs() if r["status"] == "done" and r["train_seconds"]]
    return statistics.mean(secs) if secs else None


def checked_first(net: torch.nn.Module, batches: Iterable[dict], what: str) -> Iterator[dict]:
    """The same batches, but the first is checked against ``net`` before anything else runs,
    so a sample of another architecture fails at once, naming the layer and both shapes."""
    it = iter(batches)
    first = next(it, None)
    if first is None:
        return iter(())
    try:
        check_stacked(net, first)
    except ValueError as e:
        raise GeneratorError(f"{what} do not fit the zoo's net: {e}") from None
    return itertools.chain([first], it)


def heldout_stack(zoo: Zoo) -> dict[str, torch.Tensor] | None:
    """The held-out runs' checkpoints, stacked, where they are networks of the training runs'
    distribution (``seeds`` and ``tail`` zoos: the same recipe from new seeds); None otherwise
    (``trajectory`` runs hold their untrained starts, ``tasks`` runs solve other tasks)."""
    if zoo.config.zoo.mode not in ("seeds", "tail"):
        return None
    members = zoo.members("heldout")
    return stack_states([zoo.load(m) for m in members]) if members else None


def evaluate_samples(zoo: Zoo, batches: Iterable[dict], names: list[str], out_dir: Path | None,
                     cfg: ExperimentConfig, title: str, project=None) -> dict:
    """The samples judged against the zoo (``judge``); ``project``: a compressed zoo's (``Tokenizer.project``)."""
    net = zoo.build_net()
    batches = checked_first(net, batches, "the samples")
    return judge(net, generated_stacked=batches, names=names, out_dir=out_dir, title=title, project=project,
                 **judge_inputs(zoo, cfg))


def judge_inputs(zoo: Zoo, cfg: ExperimentConfig) -> dict:
    """What ``judge`` (and ``score_networks``, one block of it per process) takes from the zoo and the config."""
    # Each run's own average is a bar where the runs share a recipe (seeds, tail); trajectory
    # runs would average an initialization into it, tasks runs solve different tasks.
    runs = [m.run for m in zoo.members("train")] if zoo.config.zoo.mode in ("seeds", "tail") else None
    return {"task": zoo_task(zoo), "train_stacked": train_stack(zoo), "sigmas": cfg.evaluate.sigmas,
            "n_noise": cfg.evaluate.n_noise, "seed": cfg.seed, "heldout_stacked": heldout_stack(zoo),
            "recalibrate": cfg.evaluate.recalibrate_bn, "runs": runs}


def evaluate_field_samples(zoo: Zoo, meta: dict, batches: Iterable[dict], out_dir: Path, title: str) -> dict:
    """Sampled field networks (a folder of ``weightgen sample`` on a ``fields`` zoo) judged by the field report,
    each as the class its recorded condition asked for (weightgen/fields/report.py)."""
    from weightgen.fields.report import asked_classes, judge_fields, write_fields_report

    parts = list(checked_first(zoo.build_net(), batches, "the samples"))
    if not parts:
        raise GeneratorError(f"{out_dir}: no samples to judge")
    samples = {k: torch.cat([b[k].float() for b in parts]) for k in parts[0]}
    n = next(iter(samples.values())).shape[0]
    report = judge_fields(zoo, zoo.config, samples, asked_classes(meta.get("condition"), n), title)
    write_fields_report(report, out_dir)
    return report


def run_experiment(cfg: ExperimentConfig, zoo_dir: Path | None = None, run_dir: Path | None = None,
                   show_progress: bool = True, fitted: tuple[Generator, dict] | None = None) -> dict:
    """Zoo (built or resumed) -> fit -> sample -> evaluate; the report is written to ``run_dir``.

    ``fitted``: a generator already fitted on this zoo with ``cfg.generator`` and its fit stats;
    it is sampled at ``cfg.generator``'s sampling temperature instead of fitting again, so one fit
    can be judged at several.
    """
    zoo_dir = Path(zoo_dir or Path("zoos") / cfg.name)
    run_dir = Path(run_dir or Path("runs") / cfg.name)
    # A generator that samples only from a prompt (G.pt: a start checkpoint and metrics) has
    # nothing to sample from here: say so before the zoo and the fit cost anything.
    needs_prompt = getattr(GENERATORS.get(cfg.generator.method), "needs_prompt", None)
    if needs_prompt and cfg.zoo.mode != "policies":  # a policies run prompts from held-out starts itself
        method = cfg.generator.method
        raise GeneratorError(f"`weightgen run` cannot sample generator '{method}': {needs_prompt}",
                             cli=f"`weightgen run` cannot sample generator '{method}': it samples from a prompt (a "
                                 "start checkpoint, its metric and the metric wanted), which a run does not give; "
                                 "fit it with `weightgen train CONFIG`, then `weightgen sample GENERATOR --start "
                                 "CKPT.safetensors --start-metric X --target-metric Y`")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    t0 = time.perf_counter()
    build_zoo(cfg, zoo_dir, show_progress=show_progress)
    zoo_seconds = time.perf_counter() - t0
    zoo = Zoo.open(zoo_dir)
    if cfg.zoo.mode in ("tasks", "adapters") and getattr(cfg.generator, "condition", "none") != "task_code":
        # Its networks solve different binary tasks: an unconditional generator would blend
        # them, and no single task could judge its samples.
        raise GeneratorError(f"zoo.mode '{cfg.zoo.mode}' needs a generator conditioned on the task code: set "
                             f"generator.condition: task_code (method rpg), not {cfg.generator.method!r} "
                             f"with condition {getattr(cfg.generator, 'condition', 'none')!r}")
    if fitted is None:
        gen, fit_stats = fit_generator(cfg, zoo, show_progress)
    else:
        gen, fit_stats = fitted
        set_sampling(gen.spec, cfg.generator.diffusion.temperature)
    gen.save(run_dir / "generator")
    s = cfg.sample
    if cfg.zoo.mode == "tasks":
        return _run_tasks(cfg, zoo, gen, fit_stats, zoo_seconds, run_dir)
    if cfg.zoo.mode == "fields":
        return _run_fields(cfg, zoo, gen, fit_stats, zoo_seconds, run_dir)
    if cfg.zoo.mode == "adapters":
        return _run_adapters(cfg, zoo, gen, fit_stats, zoo_seconds, run_dir)
    if cfg.zoo.mode == "policies":
        return _run_control(cfg, zoo, gen, fit_stats, zoo_seconds, run_dir)
    clock: dict = {}
    batches = timed(gen.sample(s.n, None, s.seed, s.batch_size, s.sampler, s.steps), clock)
    report = evaluate_samples(zoo, batches, gen.tokenizer.names, None, cfg, title=f"{cfg.name}: {gen.method}",
                              project=gen.tokenizer.project if gen.tokenizer.compressed else None)
    sgd = sgd_seconds_per_member(zoo)
    report["timing"] = {
        "zoo_build_seconds": zoo_seconds, "fit_seconds": fit_stats["fit_seconds"],
        "sample_seconds": clock.get("seconds"), "num_samples": s.n,
        "sgd_seconds_per_member": sgd,
        # How many models generation makes in the time SGD trains one: the speed claim, measured.
        "models_per_sgd_member": (s.n * sgd / clock["seconds"]) if sgd and clock.get("seconds") else None,
        "device": str(gen.device), "threads": torch.get_num_threads(),
    }
    report["fit"] = fit_stats
    from weightgen.evaluate.report import write_report

    write_report(report, run_dir)
    return report


def _run_tasks(cfg: ExperimentConfig, zoo: Zoo, gen: Generator, fit_stats: dict, zoo_seconds: float,
               run_dir: Path) -> dict:
    """A ``tasks`` zoo is judged per code: ``sample.n`` networks for every held-out code and as
    many seen ones, each on its own binary task (evaluate/per_code.py)."""
    from weightgen.evaluate.per_code import tasks_report, write_tasks_report

    s = cfg.sample
    start = time.perf_counter()
    report = tasks_report(gen, zoo, s.n, s.seed, s.sampler, s.steps, title=f"{cfg.name}: {gen.method} on unseen tasks")
    write_tasks_report(_timed(report, gen, fit_stats, zoo_seconds, start), run_dir)
    return report


def _timed(report: dict, gen: Generator, fit_stats: dict, zoo_seconds: float, start: float) -> dict:
    """``report`` with the fit's statistics and how long each stage took, and where."""
    report["timing"] = {"zoo_build_seconds": zoo_seconds, "fit_seconds": fit_stats["fit_seconds"],
                        "evaluate_seconds": time.perf_counter() - start, "device": str(gen.device),
                        "threads": torch.get_num_threads()}
    report["fit"] = fit_stats
    return report


def _run_fields(cfg: ExperimentConfig, zoo: Zoo, gen: Generator, fit_stats: dict, zoo_seconds: float,
                run_dir: Path) -> dict:
    """A ``fields`` zoo is judged by the field report (weightgen/fields/report.py): a generated field
    has no target to score it on, so it is compared with the training fields instead."""
    from weightgen.fields.report import fields_report, write_fields_report

    start = time.perf_counter()
    report = fields_report(gen, zoo, cfg, title=f"{cfg.name}: {gen.method} on {cfg.task.name}")
    write_fields_report(_timed(report, gen, fit_stats, zoo_seconds, start), run_dir)
    return report


def _run_adapters(cfg: ExperimentConfig, zoo: Zoo, gen: Generator, fit_stats: dict, zoo_seconds: float,
                  run_dir: Path) -> dict:
    """An ``adapters`` zoo is judged key by key (weightgen/adapters/report.py): ``sample.n`` adapters
    for every held-out key and as many seen ones, against trained, base, and nearest-key adapters."""
    from weightgen.adapters.report import adapters_report, write_adapters_report

    s = cfg.sample
    start = time.perf_counter()
    report = adapters_report(gen, zoo, s.n, s.seed, s.sampler, s.steps,
                             title=f"{cfg.name}: {gen.method} LoRA adapters for unseen keys")
    write_adapters_report(_timed(report, gen, fit_stats, zoo_seconds, start), run_dir)
    return report


def _run_control(cfg: ExperimentConfig, zoo: Zoo, gen: Generator, fit_stats: dict, zoo_seconds: float,
                 run_dir: Path) -> dict:
    """A ``policies`` zoo is judged by prompting returns (weightgen/control/report.py): alignment over the
    zoo's range from held-out starts, the share solved, the usual judgement and a picture of a policy."""
    from weightgen.control.report import control_report

    start = time.perf_counter()
    report = _timed(control_report(gen, zoo, cfg, run_dir, f"{cfg.name}: {gen.method} policies for a prompted return"),
                    gen, fit_stats, zoo_seconds, start)
    (run_dir / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False, default=float))
    return report


# -- sampled networks on disk: one safetensors file per network ---------------------------------
# Networks at least this large are generated one at a time straight into their file.
STREAM_PARAMS = 2_000_000


def _describe(condition):
    """The condition as samples.json can hold it: a G.pt start checkpoint is named, not copied."""
    if isinstance(condition, dict):
        return {k: (f"state_dict of {len(v)} tensors" if isinstance(v, dict) else _describe(v)) for k, v in condition.items()}
    if isinstance(condition, torch.Tensor):
        return condition.tolist()
    return condition


def write_samples(gen: Generator, out: Path, n: int, seed: int, batch_size: int, sampler: str,
                  steps: int | None, condition=None, stream: bool | None = None,
                  shard: tuple[int, int] | None = None) -> dict:
    """Write ``n`` networks as ``sample_XXXX.safetensors`` (loadable with ``net.load_state_dict``).

    ``stream`` (default: for nets of ``STREAM_PARAMS`` or more) writes each network token
    chunk by token chunk as it is generated (``Generator.sample_to_file``, sample ``i`` from
    seed ``seed + i``), so memory does not grow with the network; otherwise networks are
    sampled in batches of ``batch_size`` from one seed.

    ``shard=(rank, world)`` (one of several processes, ``weightgen sample --procs``): this process
    writes its contiguous block of the indices and a part of the manifest; once every rank is done
    ``join_samples`` makes the one ``samples.json`` of them. A streamed network, and a batched one of a
    generator with ``per_sample_noise``, is the same whichever rank makes it.
    """
    out.mkdir(parents=True, exist_ok=True)
    if stream is None:
        stream = gen.tokenizer.num_params >= STREAM_PARAMS
    rank, world = shard or (0, 1)
    lo, hi = rank * n // world, (rank + 1) * n // world
    meta = {"seed": seed, "sampler": sampler, "steps": steps, "method": gen.method, "stream": stream,
            "generated_names": gen.tokenizer.names, "net_build": gen.net_build, "condition": _describe(condition)}
    meta["temperature"] = gen.spec.diffusion.temperature
    nonfinite = []
    if stream:
        for i in range(lo, hi):
            info = gen.sample_to_file(out / f"sample_{i:04d}.safetensors", condition, seed + i, sampler, steps)
            if info["nonfinite"]:
                nonfinite.append(i)
                log.warning("sample %d has %d non-finite weights; flagged in %s", i, info["nonfinite"], SAMPLES_JSON)
    else:
        index = lo
        for batch in gen.sample(hi - lo, condition, seed, batch_size, sampler, steps, first=lo):
            b = next(iter(batch.values())).shape[0]
            for i in range(b):
                state = {k: v[i].contiguous() for k, v in batch.items()}
                if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
                    nonfinite.append(index)
                    log.warning("sample %d has non-finite weights; written anyway and flagged in %s", index, SAMPLES_JSON)
                tmp = out / f".tmp-sample_{index:04d}.safetensors"
                save_file(state, str(tmp))
                tmp.replace(out / f"sample_{index:04d}.safetensors")  # never a half-written sample file
                index += 1
    meta.update(n=n, nonfinite=nonfinite)
    if world > 1:
        (out / f".samples.rank{rank}.json").write_text(json.dumps({**meta, "first": lo, "stop": hi}))
        return meta
    (out / SAMPLES_JSON).write_text(json.dumps(meta, indent=1))
    return meta


def join_samples(out: Path, world: int) -> dict:
    """The one ``samples.json`` of a directory that ``world`` processes wrote with ``write_samples``'s
    ``shard`` (run once every rank is done): their blocks must cover every index once."""
    parts = [out / f".samples.rank{r}.json" for r in range(world)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise GeneratorError(f"{out}: rank part {missing[0]} missing; a process of the sampling failed")
    metas = [json.loads(p.read_text()) for p in parts]
    blocks = sorted((m.pop("first"), m.pop("stop")) for m in metas)
    if blocks[0][0] != 0 or any(a[1] != b[0] for a, b in zip(blocks, blocks[1:])) or blocks[-1][1] != metas[0]["n"]:
        raise GeneratorError(f"{out}: the ranks' blocks {blocks} do not cover samples 0 to {metas[0]['n'] - 1} once")
    meta = {**metas[0], "nonfinite": sorted(i for m in metas for i in m["nonfinite"]), "procs": world}
    (out / SAMPLES_JSON).write_text(json.dumps(meta, indent=1))
    for p in parts:
        p.unlink()
    return meta


def read_samples(directory: Path, batch_size: int = 100,
                 rows: tuple[int, int] | None = None) -> tuple[dict, Iterator[dict]]:
    """(metadata, stacked batches) of a directory written by ``write_samples``; ``rows=(lo, hi)``: only
    samples ``lo`` to ``hi - 1`` (one process's block of them)."""
    meta_file = directory / SAMPLES_JSON
    try:
        meta = json.loads(meta_file.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise GeneratorError(f"{meta_file}: missing; write samples with `weightgen sample`") from None
    except json.JSONDecodeError as e:
        raise GeneratorError(f"{meta_file}: not valid JSON ({e})") from None
    files = [directory / f"sample_{i:04d}.safetensors" for i in range(*(rows or (0, meta["n"])))]

    def batches():
        for start in range(0, len(files), batch_size):
            states = []
            for f in files[start:start + batch_size]:
                try:
                    states.append(load_file(str(f)))
                except FileNotFoundError:
                    raise GeneratorError(f"{f}: sample file missing") from None
                except Exception as e:
                    raise GeneratorError(f"{f}: unreadable sample ({e})") from None
            yield stack_states(states)

    return meta, batches()
