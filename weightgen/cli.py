"""The ``weightgen`` command line (typer)."""
from __future__ import annotations

import logging
import statistics
from importlib import resources
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from weightgen.config import ConfigError, ExperimentConfig, load_config
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
    if not path.exists() and builtin_config_path(config).exists():
        path = builtin_config_path(config)
    return load_config(path), str(path)


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


@zoo_app.command("build")
def zoo_build(
    config: str = typer.Argument(None, help="YAML config, or a built-in name (default: demo)"),
    out: Path = typer.Option(None, "--out", "-o", help="zoo directory (default: zoos/<name>)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train the zoo's members (resuming where an earlier build stopped) and store checkpoints."""
    from weightgen.zoo import ZooError, build_zoo

    _setup_logging(verbose)
    try:
        cfg, _ = resolve_config(config)
        path = out or Path("zoos") / cfg.name
        summary = build_zoo(cfg, path)
    except (ConfigError, RegistryError, ZooError, ValueError) as e:
        fail(str(e))
    console.print(f"zoo [bold]{path}[/bold]: {summary['trained']} run(s) trained, {summary['skipped']} already done")


@zoo_app.command("info")
def zoo_info(path: Path = typer.Argument(..., help="zoo directory"),
             verify: bool = typer.Option(False, "--verify", help="check every shard's sha256")) -> None:
    """Summarize a zoo: members, parameters, metrics."""
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
    table.add_row("runs", f"{sum(r['status'] == 'done' for r in runs)} done, {sum(r['status'] != 'done' for r in runs)} unfinished")
    for split in ("train", "heldout"):
        ms = [m for m in members if m.split == split]
        if not ms:
            continue
        table.add_row(f"checkpoints ({split})", str(len(ms)))
        for key in ("test_accuracy", "test_loss"):
            vals = [m.metrics[key] for m in ms if key in m.metrics]
            if vals:
                table.add_row(f"  {key}", f"min {min(vals):.4f}  median {statistics.median(vals):.4f}  max {max(vals):.4f}")
    if members:
        spec = members[0].tensors
        params = set(zoo.parameter_names)
        n_params = sum(_numel(s) for k, s in spec.items() if k in params)
        table.add_row("parameters", f"{n_params:,} in {sum(k in params for k in spec)} tensors (+{len(spec) - sum(k in params for k in spec)} buffers)")
    console.print(table)
    if verify:
        problems = zoo.verify()
        for p in problems:
            console.print(f"[red]corrupt:[/red] {p}", highlight=False)
        if problems:
            raise typer.Exit(1)
        console.print(f"all {len(members)} shards verified")


def _numel(spec) -> int:
    n = 1
    for d in spec[0]:
        n *= d
    return n


if __name__ == "__main__":  # pragma: no cover
    app()
