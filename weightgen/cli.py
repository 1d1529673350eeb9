"""The ``weightgen`` command line (typer)."""
from __future__ import annotations

import logging
import math
import statistics
import tempfile
from importlib import resources
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from weightgen.config import SAMPLERS, ConfigError, ExperimentConfig, load_config
from weightgen.registry import RegistryError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Generate neural network weights with diffusion models.")
zoo_app = typer.Typer(no_args_is_help=True, help="Build and inspect model zoos.")
app.add_typer(zoo_app, name="zoo")
console = Console()

DEFAULT_CONFIG = "demo"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def builtin_config_path(name: str) -> Path:
    return Path(str(resources.files("weightgen") / "configs" / f"{name}.yaml"))


def resolve_config(config: str | None) -> tuple[ExperimentConfig, str]:
    """A YAML path, or the name of a built-in config (``demo``)."""
    config = config or DEFAULT_CONFIG
    path = Path(config)
    if not path.is_file() and builtin_config_path(config).is_file():
        path = builtin_config_path(config)
    return load_config(path), str(path)


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


def _said(e: Exception) -> str:
    """A library error as the command line says it: its ``cli`` wording (flags, not Python
    arguments) where it has one."""
    return getattr(e, "cli", None) or str(e)


def writable_dir(path: Path, what: str) -> Path:
    """``path``, checked before any work as a directory this command can create or write in;
    otherwise one line naming ``what`` (the flag), the path and why."""
    if path.exists() and not path.is_dir():
        fail(f"{what} {path}: is a file, not a directory")
    above = next(p for p in (path, *path.parents) if p.exists())  # the nearest existing directory or file
    if not above.is_dir():
        fail(f"{what} {path}: cannot be made, since {above} is a file")
    try:  # a probe file: it meets permissions and read-only file systems, which os.access misjudges for root
        with tempfile.TemporaryFile(dir=above):
            pass
    except OSError as e:
        fail(f"{what} {path}: cannot write in {above} ({e.strerror or e})")
    return path


@zoo_app.command("build")
def zoo_build(
    config: str = typer.Argument(None, help="YAML config, or a built-in name (default: demo)"),
    out: Path = typer.Option(None, "--out", "-o", help="zoo directory (default: zoos/<name>)"),
    procs: int = typer.Option(1, "--procs", "-p", min=1,
                              help="processes sharing the runs (torchrun on this machine; gloo on CPU)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train the zoo's members (resuming where an earlier build stopped) and store checkpoints."""
    from weightgen.zoo import Zoo, ZooError, build_zoo
    from weightgen.zoo.distributed import build_zoo_processes

    _setup_logging(verbose)
    try:
        cfg, _ = resolve_config(config)
        path = writable_dir(out or Path("zoos") / cfg.name, "--out" if out else "zoo directory")
        if procs == 1:
            summary = build_zoo(cfg, path)
            redone = summary.get("redone")
            again = f" (run(s) {', '.join(map(str, redone))} again: a shard was corrupt)" if redone else ""
            console.print(f"zoo [bold]{path}[/bold]: {summary['trained']} run(s) trained{again}, "
                          f"{summary['skipped']} already done")
            return
        build_zoo_processes(cfg, path, procs)
        with Zoo.open(path) as zoo:
            done = sum(r["status"] == "done" for r in zoo.runs())
        console.print(f"zoo [bold]{path}[/bold]: {done} run(s) done, built by {procs} processes")
    except (ConfigError, RegistryError, ZooError, ValueError) as e:
        fail(str(e))


@zoo_app.command("info")
def zoo_info(path: Path = typer.Argument(..., help="zoo directory"),
             verify: bool = typer.Option(False, "--verify", help="check every shard's sha256")) -> None:
    """Summarize a zoo: members, parameters, metrics."""
    from weightgen.nets.fold_bn import FOLD_META
    from weightgen.zoo import Zoo, ZooError

    try:
        zoo = Zoo.open(path)
        cfg = zoo.config
        members = zoo.members(split=None)
    except (ZooError, ConfigError) as e:
        fail(str(e))
    runs = zoo.runs()
    table = Table(title=f"zoo {path}", show_header=False)
    table.add_row("task / net", f"{cfg.task.name} / {cfg.net.name} {cfg.net.kwargs or ''}")
    table.add_row("mode", cfg.zoo.mode)
    origin = zoo.meta("origin")  # checkpoints made outside a build (weightgen/zoo/external.py)
    if origin:
        table.add_row("origin", f"imported from {origin['source']}" if origin["kind"] == "import"
                      else "recorded by weightgen.zoo.Recorder")
    aligned = zoo.meta("aligned")
    if aligned:
        ref = aligned["reference"]
        table.add_row("aligned", f"{aligned['method']}: {aligned['runs_permuted']} of {aligned['runs']} runs permuted into "
                                 f"run {ref['run']}'s order (step {ref['step']})")
    elif cfg.zoo.align != "none":
        table.add_row("aligned", f"not yet ({cfg.zoo.align} runs once every run is trained)")
    folded = zoo.meta(FOLD_META)
    if folded:
        table.add_row("BatchNorm folded", f"{len(folded['pairs'])} BatchNorm(s) folded into the layers before them "
                                          "(their entries are not generated)")
    elif cfg.zoo.fold_bn:
        table.add_row("BatchNorm folded", "not yet (folding runs once every run is trained)")
    table.add_row("runs", f"{sum(r['status'] == 'done' for r in runs)} done, {sum(r['status'] != 'done' for r in runs)} unfinished")
    for split in ("train", "heldout"):
        ms = [m for m in members if m.split == split]
        if not ms:
            continue
        table.add_row(f"checkpoints ({split})", str(len(ms)))
        for key in sorted({k for m in ms for k in m.metrics if k.startswith("test_")}):  # the task's metrics
            vals = [m.metrics[key] for m in ms if key in m.metrics]
            if vals:
                table.add_row(f"  {key}", f"min {min(vals):.4f}  median {statistics.median(vals):.4f}  max {max(vals):.4f}")
    if members:
        spec = members[0].tensors
        params = set(zoo.parameter_names)
        n_params = sum(math.prod(s[0]) for k, s in spec.items() if k in params)
        table.add_row("parameters", f"{n_params:,} in {sum(k in params for k in spec)} tensors (+{len(spec) - sum(k in params for k in spec)} buffers)")
    console.print(table)
    if verify:
        problems = zoo.verify()
        for p in problems:
            console.print(f"[red]corrupt:[/red] {p}", highlight=False)
        if problems:
            raise typer.Exit(1)
        console.print(f"all {len(members)} shards verified")


@zoo_app.command("import")
def zoo_import(
    source: str = typer.Argument(..., help="a folder of checkpoint files (searched recursively), a quoted glob "
                                           "such as 'ckpts/*/step*.pt', or one file"),
    out: Path = typer.Option(..., "--out", "-o", help="zoo directory (a rerun resumes and skips files already there)"),
    net: str = typer.Option(None, "--net", help="the net, as a config's net section: a name (mlp, "
                                                "my_pkg.nets:make_net, ./nets.py:make_net) or a quoted YAML mapping "
                                                "such as '{name: mlp, hidden: [37, 23]}' (default: --config's)"),
    task: str = typer.Option(None, "--task", help="the task, likewise: digits, or '{name: ./data.py:make_task}' "
                                                  "(default: --config's)"),
    config: str = typer.Option(None, "--config", "-c", help="a YAML config or built-in name whose sections the "
                                                            "zoo records (its net and task unless --net or --task)"),
    metrics: Path = typer.Option(None, "--metrics", "-m", help="CSV or JSON, one row per file: column 'file', then "
                                                               "optional run, step, seed, split (train or heldout), "
                                                               "code, condition.<key>, and metric columns such as "
                                                               "test_loss"),
    evaluate: bool = typer.Option(False, "--evaluate", help="score every checkpoint on the task's metrics and "
                                                             "splits, as a build does"),
    mode: str = typer.Option(None, "--mode", help="zoo mode recorded: seeds, trajectory or tasks (default: seeds "
                                                  "for one checkpoint per run, trajectory for several, tasks where "
                                                  "every file has a code)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Import checkpoints trained anywhere as a zoo that every command reads.

    Files: .safetensors, or .pt, .pth, .bin and .ckpt read with torch.load(weights_only=True), never unpickled.

    Each holds a state dict of the net, or a dict with one under 'state_dict'.

    Without --metrics, run and step come from the path, as in run3_step100.safetensors or seed-3/step-100.pt.

    A run is run<N> or seed<N>; a step is step<N>, iter<N>, epoch<N> or checkpoint<N>, or a file stem that is a number.

    Where no path names a run or a step, each file is a run of its own.
    """
    from weightgen.zoo import ZooError, import_checkpoints
    from weightgen.zoo.external import external_config

    _setup_logging(verbose)
    if mode is not None and mode not in ("seeds", "trajectory", "tasks"):
        fail(f"--mode is seeds, trajectory or tasks, got {mode!r}")
    try:
        base = resolve_config(config)[0] if config else None
        if base is None and (net is None or task is None):
            fail("name the checkpoints' " + " and ".join(f for f, v in (("--net", net), ("--task", task)) if v is None)
                 + " (or a --config with net and task sections)")
        cfg = external_config(net, task, base)
        summary = import_checkpoints(source, out, cfg, metrics, evaluate, mode)
    except (ConfigError, RegistryError, ZooError, ValueError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or out}: {e.strerror or e}")
    skipped = f", {summary['skipped']} already there" if summary["skipped"] else ""
    console.print(f"zoo [bold]{out}[/bold]: {summary['imported']} checkpoint(s) imported from {summary['files']} "
                  f"file(s){skipped}; {summary['runs']} run(s), mode {summary['mode']}")


def _summary_table(report: dict) -> Table:
    metric, better = report.get("metric", "accuracy"), report.get("better", "higher")
    table = Table(title=report["title"], caption=f"best, mean, median: {report['split']} {metric} ({better} is better)")
    for col in ("group", "n", "best", "mean", "median", "max IoU", "nearest dist"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for key, g in report["groups"].items():
        if key.startswith("noise_") and key not in ("noise_0.01", "noise_0.05", "noise_0.15"):
            continue  # the full sweep is in report.md; three sigmas keep the terminal table short
        cells = [g["best"], g["mean"], g["median"], g["max_iou_mean"], g["nearest_distance_mean"]]
        n = f"{g['n']}" + (f" ({g['n_nonfinite']} non-finite)" if g["n_nonfinite"] else "")
        table.add_row(key, n, *["–" if c is None else f"{c:.4f}" for c in cells])
    return table


def _print_report(report: dict, where: Path | None) -> None:
    # judged per code (evaluate/per_code.py), per key (adapters/report.py) or as fields: notes, no table
    if report.get("kind") in ("tasks", "fields", "adapters"):
        for note in report["notes"]:
            console.print(f"- {note}", highlight=False)
        if where:
            console.print(f"report: {where}/report.md, {where}/report.json")
        return
    console.print(_summary_table(report))
    for note in report["notes"]:
        console.print(f"- {note}", highlight=False)
    t = report.get("timing") or {}
    if t.get("models_per_sgd_member"):
        console.print(f"- generation: {t['num_samples']} models in {t['sample_seconds']:.1f} s; SGD needs "
                      f"{t['sgd_seconds_per_member']:.2f} s per zoo member ({t['models_per_sgd_member']:.1f} "
                      "models in the time SGD trains one)", highlight=False)
    if where:
        console.print(f"report: {where}/report.md, {where}/report.json, {where}/novelty.png")


@app.command("run")
def run(config: str = typer.Argument(None, help="YAML config or built-in name (default: demo)"),
        zoo: Path = typer.Option(None, "--zoo", help="zoo directory (default: zoos/<name>)"),
        out: Path = typer.Option(None, "--out", "-o", help="run directory (default: runs/<name>)"),
        verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Zoo (reused if built) -> fit generator -> sample -> evaluate -> report."""
    from weightgen.generators import GeneratorError
    from weightgen.pipeline import run_experiment
    from weightgen.zoo import ZooError

    _setup_logging(verbose)
    try:
        cfg, source = resolve_config(config)
        console.print(f"weightgen run: [bold]{cfg.name}[/bold] ({source}): {cfg.task.name} / {cfg.net.name}, "
                      f"zoo mode {cfg.zoo.mode}, generator {cfg.generator.method}")
        out = writable_dir(out or Path("runs") / cfg.name, "--out" if out else "run directory")
        writable_dir(zoo or Path("zoos") / cfg.name, "--zoo" if zoo else "zoo directory")
        report = run_experiment(cfg, zoo, out)
    except (ConfigError, RegistryError, ZooError, GeneratorError, ValueError) as e:
        fail(_said(e))
    _print_report(report, out)


@app.command("train")
def train(config: str = typer.Argument(None, help="YAML config or built-in name (default: demo)"),
          zoo: Path = typer.Option(None, "--zoo", help="zoo directory (default: zoos/<name>)"),
          out: Path = typer.Option(None, "--out", "-o", help="generator directory (default: runs/<name>/generator)"),
          procs: int = typer.Option(1, "--procs", "-p", min=1,
                                    help="processes on this machine, each taking its share of every batch "
                                         "(DistributedDataParallel; gloo on CPU, nccl on GPUs)"),
          checkpoint_every: int = typer.Option(1000, "--checkpoint-every", min=1,
                                               help="save the fit's state every N steps in the generator directory; "
                                                    "run again after a kill, it resumes from there"),
          verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Fit the config's generator on an existing zoo and save it (resuming an interrupted fit)."""
    from weightgen.checkpointing import CHECKPOINT_FILE
    from weightgen.generators import GeneratorError
    from weightgen.pipeline import fit_generator
    from weightgen.zoo import Zoo, ZooError

    _setup_logging(verbose)
    try:
        cfg, _ = resolve_config(config)
        out = writable_dir(out or Path("runs") / cfg.name / "generator", "--out" if out else "generator directory")
        zoo_path = zoo or Path("zoos") / cfg.name
        zoo_obj = Zoo.open(zoo_path)
        if procs > 1:
            from weightgen.fit_distributed import check_procs, train_processes

            check_procs(cfg, len(zoo_obj.members("train")), procs)
            zoo_obj.close()
            train_processes(cfg, zoo_path, out, procs, checkpoint_every)
            console.print(f"generator {cfg.generator.method} saved to {out}, fitted by {procs} processes")
            return
        gen, stats = fit_generator(cfg, zoo_obj, checkpoint_dir=out, checkpoint_every=checkpoint_every)
        out = gen.save(out)
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)  # the fit is done: the generator is its result
    except (ConfigError, RegistryError, ZooError, GeneratorError, ValueError) as e:
        fail(_said(e))
    resumed = f", resumed at step {stats['resumed_from']['step']}" if "resumed_from" in stats else ""
    console.print(f"generator {gen.method} saved to {out} ({stats['fit_seconds']:.1f} s{resumed})")


@app.command("sample")
def sample(generator: Path = typer.Argument(..., help="saved generator directory"),
           out: Path = typer.Option(None, "--out", "-o", help="directory for sample_XXXX.safetensors"),
           peft_out: Path = typer.Option(None, "--peft-out",
                                         help="generators of an adapters zoo: write peft adapters instead "
                                              "(adapter_config.json + adapter_model.safetensors; DIR/adapter_XXXX "
                                              "when --n > 1)"),
           n: int = typer.Option(10, "--n", "-n", min=1),
           seed: int = typer.Option(0, "--seed"),
           sampler: str = typer.Option("ddpm", "--sampler", help="ddpm, ddim or dpm (DPM-Solver++)"),
           steps: int = typer.Option(None, "--steps", help="denoising steps (default: T for ddpm, 60 for ddim, "
                                                            "25 for dpm)"),
           procs: int = typer.Option(1, "--procs", "-p", min=1,
                                     help="processes on this machine, each writing its block of the networks"),
           batch_size: int = typer.Option(100, "--batch-size", min=1,
                                          help="networks held in memory at once; pdiff's networks are the same at "
                                               "any batch size, rpg's and gpt's change with it (not with --stream)"),
           stream: bool = typer.Option(None, "--stream/--no-stream",
                                       help="write each network piece by piece as it is generated, one at a time "
                                            "(default: for nets of 2M parameters or more)"),
           classes: str = typer.Option(None, "--classes",
                                       help="task-conditioned generators: the positive classes, e.g. 1,4,9"),
           task_code: str = typer.Option(None, "--task-code",
                                         help="task-conditioned generators: the class-subset code, e.g. 0100100001"),
           metric: float = typer.Option(None, "--metric",
                                        help="rpg with condition: metric: the metric value wanted (e.g. a test loss)"),
           start: Path = typer.Option(None, "--start", help="gpt: the checkpoint to start from (.safetensors)"),
           start_metric: float = typer.Option(None, "--start-metric", help="gpt: the start checkpoint's metric"),
           target_metric: float = typer.Option(None, "--target-metric", help="gpt: the metric wanted"),
           temperature: float = typer.Option(None, "--temperature", min=0,
                                             help="scale of the starting noise (below 1: networks nearer the centre "
                                                  "of what the generator learned; use with --sampler ddim; default: "
                                                  "the generator's own, 1)"),
           ) -> None:
    """Generate networks and write each as a safetensors file loadable into the net.

    Any size: with --stream only one chunk of tokens is in memory, and a file appears
    only once it is complete. A generator fitted on a ``tasks`` zoo makes a network for
    the binary task given by --classes or --task-code, seen in training or not.
    """
    from weightgen.generators import GeneratorError, load_generator, set_sampling
    from weightgen.pipeline import write_samples
    from weightgen.tasks import code_from_classes

    if sampler not in SAMPLERS:
        fail(f"--sampler must be ddpm or ddim, or dpm (DPM-Solver++), got {sampler!r}")
    given = [name for name, v in (("--classes", classes), ("--task-code", task_code), ("--metric", metric),
                                  ("--start", start), ("--start-metric", start_metric),
                                  ("--target-metric", target_metric)) if v is not None]
    conditions = [g for g in given if g in ("--classes", "--task-code", "--metric", "--start")]
    if len(conditions) > 1:
        fail(f"give one condition, not {' and '.join(conditions)}")
    for name, v in (("--metric", metric), ("--start-metric", start_metric), ("--target-metric", target_metric)):
        if v is not None and not math.isfinite(v):
            fail(f"{name} takes a finite number, got {v}")
    if (out is None) == (peft_out is None):
        fail("give --out (safetensors networks) or --peft-out (peft adapters), one of them")
    writable_dir(out or peft_out, "--out" if out else "--peft-out")
    try:
        gen = load_generator(generator)
        _check_condition_flags(gen, given)
        set_sampling(gen.spec, temperature)
        condition = task_code if metric is None else metric
        if start is not None or start_metric is not None or target_metric is not None:
            condition = _gpt_prompt(start, start_metric, target_metric)
        if classes is not None:
            try:
                picked = [int(c) for c in classes.replace(" ", "").split(",") if c]
            except ValueError:
                fail(f"--classes takes class numbers separated by commas (e.g. 1,4,9), got {classes!r}")
            condition = code_from_classes(picked, getattr(gen, "code_length", None) or 10)
        if peft_out is not None:
            from weightgen.adapters.peft_io import write_generated

            written = write_generated(gen, peft_out, n, condition, seed, batch_size, sampler, steps)
            console.print(f"{len(written)} peft adapter(s) written to {peft_out}")
            return
        if procs > 1:
            from weightgen.fit_distributed import sample_processes

            if given or temperature is not None:
                fail("--procs samples unconditional generators at their own temperature; drop "
                     f"{', '.join(given + (['--temperature'] if temperature is not None else []))} or --procs")
            meta = sample_processes(generator, out, procs, n, seed, sampler, steps, stream, batch_size)
        else:
            meta = write_samples(gen, out, n, seed, batch_size, sampler, steps, condition=condition, stream=stream)
    except (GeneratorError, ValueError) as e:  # TaskCodeError is a ValueError
        fail(_said(e))
    bad = f", {len(meta['nonfinite'])} with non-finite weights (listed in samples.json)" if meta["nonfinite"] else ""
    console.print(f"{meta['n']} networks written to {out}{bad}")


# The flags of `weightgen sample` that give each kind of condition (Generator.condition_kind).
CONDITION_FLAGS = {"none": (), "task_code": ("--classes", "--task-code"), "metric": ("--metric",),
                   "prompt": ("--start", "--start-metric", "--target-metric")}


def _check_condition_flags(gen, given: list[str]) -> None:
    """One line, in flags, when the condition flags ``given`` do not fit what ``gen`` is conditioned on."""
    kind = gen.condition_kind
    if kind not in CONDITION_FLAGS:
        return  # a kind of condition the command line does not know: the generator's own check answers
    if kind == "none":
        needs = f"{gen.method} is unconditional: sample it without --classes, --task-code, --metric or --start"
    elif kind == "task_code":
        needs = (f"this {gen.method} generator is conditioned on task codes: give --classes (e.g. 1,4,9) "
                 "or --task-code (e.g. 0100100001)")
    elif kind == "metric":
        seen = getattr(gen, "metric_range", None)
        span = f" (its zoo spans {seen[0]:.4g} to {seen[1]:.4g})" if seen else ""
        needs = f"this {gen.method} generator is conditioned on {gen.spec.metric}{span}: give --metric VALUE"
    else:
        needs = (f"this {gen.method} generator samples from a prompt: give --start CKPT.safetensors, "
                 "--start-metric X and --target-metric Y")
    wrong = [g for g in given if g not in CONDITION_FLAGS[kind]]
    if wrong:
        fail(f"{needs}, not {', '.join(wrong[:-1]) + ' or ' if len(wrong) > 1 else ''}{wrong[-1]}")
    if kind != "none" and not given:
        fail(needs)


def _gpt_prompt(start: Path | None, start_metric: float | None, target_metric: float | None) -> dict:
    """G.pt's prompt from the command line; the start checkpoint is read with safetensors (never unpickled)."""
    from safetensors.torch import load_file

    missing = [n for n, v in (("--start", start), ("--start-metric", start_metric), ("--target-metric", target_metric))
               if v is None]
    if missing:
        fail(f"a G.pt prompt needs --start, --start-metric and --target-metric; missing {', '.join(missing)}")
    try:
        state = load_file(str(start))
    except FileNotFoundError:
        fail(f"{start}: no such checkpoint file")
    except Exception as e:  # safetensors raises its own error type for a bad header
        fail(f"{start}: not a readable safetensors checkpoint ({e})")
    return {"start": state, "start_metric": start_metric, "target_metric": target_metric}


@app.command("eval")
def evaluate(samples: Path = typer.Argument(..., help="directory written by `weightgen sample`"),
             zoo: Path = typer.Option(..., "--zoo", help="the zoo the generator was fitted on"),
             out: Path = typer.Option(None, "--out", "-o", help="report directory (default: SAMPLES)"),
             procs: int = typer.Option(1, "--procs", "-p", min=1,
                                       help="processes on this machine, each scoring its block of every group of "
                                            "networks; the first writes the report")) -> None:
    """Judge sampled networks against the zoo's originals and the two baselines."""
    from weightgen.generators import GeneratorError
    from weightgen.pipeline import evaluate_field_samples, evaluate_samples, read_samples
    from weightgen.zoo import Zoo, ZooError

    try:
        zoo_obj = Zoo.open(zoo)
        meta, batches = read_samples(samples)
        writable_dir(out or samples, "--out" if out else "SAMPLES")  # the report goes there
        if procs > 1:
            from weightgen.eval_distributed import check_procs, eval_processes

            check_procs(meta["n"], procs, zoo_obj.config.zoo.mode)
            zoo_obj.close()
            report = eval_processes(samples, zoo, out or samples, procs, f"{samples}: {meta['method']}")
        elif zoo_obj.config.zoo.mode == "fields":  # judged as fields (weightgen/fields/report.py)
            report = evaluate_field_samples(zoo_obj, meta, batches, out or samples, f"{samples}: {meta['method']}")
        else:
            report = evaluate_samples(zoo_obj, batches, meta["generated_names"], out or samples, zoo_obj.config,
                                      title=f"{samples}: {meta['method']}")
    except (ZooError, GeneratorError, ConfigError, ValueError) as e:
        fail(_said(e))
    _print_report(report, out or samples)


@app.command("render")
def render(source: Path = typer.Argument(..., help="a folder written by `weightgen sample`, or a saved generator"),
           out: Path = typer.Option(..., "--out", "-o", help="directory for grid.png (and strip.png, strip.gif)"),
           resolution: int = typer.Option(None, "--resolution",
                                          help="grid points per side (default: 64 in 2D, 32 in 3D)"),
           n: int = typer.Option(16, "--n", "-n", min=1, help="fields shown (sampled, for a generator)"),
           strip: bool = typer.Option(False, "--strip", help="a generator: also the denoising strip (PNG and GIF)"),
           zoo: Path = typer.Option(None, "--zoo", help="show each field's nearest training field from this zoo"),
           classes: str = typer.Option(None, "--classes", help="a class-conditioned generator: the class, e.g. 3"),
           seed: int = typer.Option(0, "--seed"),
           sampler: str = typer.Option("ddpm", "--sampler", help="ddpm, ddim or dpm (DPM-Solver++)"),
           steps: int = typer.Option(None, "--steps", help="denoising steps (default: T for ddpm, 60 for ddim)"),
           frames: int = typer.Option(6, "--frames", min=2, help="frames of the denoising strip"),
           level: float = typer.Option(0.5, "--level", help="3D: the isosurface drawn (an occupancy of one half)"),
           ) -> None:
    """Pictures of neural fields: a grid of fields (beside their nearest training field with --zoo),
    and with --strip the fields emerging from noise; 3D fields are drawn as meshes."""
    from weightgen.fields.render import render_source
    from weightgen.generators import GeneratorError, load_generator
    from weightgen.tasks import code_from_classes
    from weightgen.zoo import ZooError

    if resolution is not None and resolution <= 0:
        fail(f"--resolution must be a positive number of grid points per side, got {resolution}")
    if sampler not in SAMPLERS:
        fail(f"--sampler must be ddpm or ddim, or dpm (DPM-Solver++), got {sampler!r}")
    writable_dir(out, "--out")
    try:
        condition = None
        if classes is not None:
            if not (source / "generator.json").is_file():
                fail("--classes conditions a generator's samples; give a saved generator, not a folder of samples")
            gen = load_generator(source, device="cpu")
            _check_condition_flags(gen, ["--classes"])
            try:
                picked = [int(c) for c in classes.replace(" ", "").split(",") if c]
            except ValueError:
                fail(f"--classes takes class numbers separated by commas (e.g. 1,4,9), got {classes!r}")
            condition = code_from_classes(picked, getattr(gen, "code_length", None) or 10)
        written = render_source(source, out, resolution, n, strip, zoo, condition, seed, sampler, steps, frames, level)
    except (GeneratorError, ZooError, ConfigError, ValueError) as e:  # FieldError, TaskCodeError: ValueErrors
        fail(_said(e))
    names = ", ".join(Path(v).name for k, v in written.items() if k.endswith(("_png", "_gif")))
    console.print(f"{written['n']} {written['dim']}D fields rendered at {written['resolution']} per side: {names} in {out}")


if __name__ == "__main__":  # pragma: no cover
    app()
