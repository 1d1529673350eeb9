"""What every benchmark shares: the machine it ran on, its JSON results and its page of tables.

A benchmark writes one folder of results and one page: ``benchmarks/results/<benchmark>/<tag>.json``
(``default.json`` without a tag) and a section of ``docs/benchmarks/<benchmark>.md`` per tag. A name
such as ``rpg_whole-gpu`` (``tagged``) is the benchmark ``rpg_whole`` with the tag ``gpu``."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"  # <benchmark>/<tag>.json
WORK = ROOT / "benchmarks" / "work"  # zoos and runs: gitignored
PAGES = ROOT / "docs" / "benchmarks"  # <benchmark>.md: every table a benchmark wrote


def cpuinfo_field(name: str) -> str | None:
    """The first ``name`` line of /proc/cpuinfo (Linux), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str | None:
    """The CPU's model name (Linux), which platform.processor() leaves empty there."""
    return cpuinfo_field("model name") or platform.processor() or None


# The CPU features that decide whether bfloat16 runs in hardware (generator.denoiser_precision); torch's
# cpu_capability stops at AVX512 and does not say.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def bf16_hardware() -> list[str]:
    flags = set((cpuinfo_field("flags") or "").split())
    return [f for f in BF16_FLAGS if f in flags]


def machine() -> dict:
    # The CPU and the vector kernels torch picks for it are recorded because the same seeded zoo trains to
    # slightly different networks on different CPUs (docs/benchmarks/checkpoint_spacing.md).
    return {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16": bf16_hardware(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def command() -> str:
    """The command as run from the repository root, whatever directory it was started in."""
    return "python " + shlex.join([str(Path(sys.argv[0]).resolve().relative_to(ROOT)), *sys.argv[1:]])


def benchmark_and_tag(name: str) -> tuple[str, str]:
    """("rpg_whole", "gpu") for "rpg_whole-gpu", ("pdiff", "") for "pdiff": benchmark names hold no hyphen."""
    benchmark, _, tag = name.partition("-")
    return benchmark, tag


def result_path(name: str) -> Path:
    """The results file of ``name`` (a benchmark, or one ``tagged``): ``benchmarks/results/<benchmark>/<tag>.json``."""
    benchmark, tag = benchmark_and_tag(name)
    return RESULTS / benchmark / f"{tag or 'default'}.json"


def write_json(name: str, payload: dict) -> Path:
    path = result_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    return path


def keep_earlier(name: str, results: list[dict], key, fill: tuple[str, ...] = (), same=lambda earlier: True) -> list[dict]:
    """``results`` plus the rows of ``name``'s earlier results file (``result_path``) that none of them
    replaces (rows are matched by ``key(row)``), so that settings measured by separate invocations share
    one table. An earlier file that ``same(payload)`` rejects (another zoo) is not kept. Rows
    written before a field ``fill`` names existed take it from the earlier payload's top level."""
    old = result_path(name)
    if not old.is_file():
        return results
    earlier = json.loads(old.read_text())
    if not same(earlier):
        return results
    for row in earlier["results"]:
        for field in fill:
            if row.get(field) is None:  # absent, or written as None before the field was filled in per row
                row[field] = earlier.get(field)
    done = {key(r) for r in results}
    return [r for r in earlier["results"] if key(r) not in done] + results


def made_on(record: dict) -> str:
    """"`command` on platform, N CPUs, torch X (date)" for a payload or row holding ``command`` and ``machine``:
    the line every section and merged table gives for what made its numbers."""
    m = record["machine"]
    return f"`{record['command']}` on {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['date']})"


def row_commands(rows: list[dict]) -> str:
    """Markdown list of the commands that made ``rows`` (each row's ``command``, ``machine`` and
    ``name``), one item per invocation, naming its rows: a table merged by ``keep_earlier``."""
    made: dict[tuple, list[str]] = {}
    for r in rows:
        where = made_on(r)
        names = made.setdefault(where, [])
        if r["name"] not in names:  # a setting measured at several weights or levels is named once
            names.append(r["name"])
    return "\n".join(f"- {where}: {', '.join(names)}" for where, names in made.items())


def page_header(benchmark: str) -> str:
    """The opening of a new ``docs/benchmarks/<benchmark>.md``, before its first section."""
    return (f"# {benchmark}\n\nEvery table here was written by `benchmarks/{benchmark}.py`, one section per tag; each "
            f"section names its command and machine. The numbers are in `benchmarks/results/{benchmark}/`. "
            "`docs/results.md` reads them as answers.\n")


def write_section(name: str, markdown: str) -> Path:
    """Replace (or append) the section between ``<!-- name:start -->`` and ``<!-- name:end -->`` of
    ``docs/benchmarks/<benchmark>.md``, the page of ``name``'s benchmark; returns the page."""
    benchmark = benchmark_and_tag(name)[0]
    page = PAGES / f"{benchmark}.md"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    text = page.read_text() if page.exists() else page_header(benchmark)
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
    return page


def fmt(v, spec: str = ".4f") -> str:
    return "–" if v is None else format(v, spec)


def settings_args(doc: str, extra=None):
    """The options every settings benchmark takes: which settings, how many steps, reuse of finished runs;
    ``extra(parser)`` adds a benchmark's own."""
    import argparse

    ap = argparse.ArgumentParser(description=doc)
    if extra is not None:
        extra(ap)
    ap.add_argument("--only", nargs="*", help="setting names to run")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply generator training steps")
    ap.add_argument("--scale-for", nargs="*", default=[], metavar="NAME=SCALE",
                    help="a different --scale for the named settings")
    ap.add_argument("--reuse", action="store_true",
                    help="take a setting's finished run (benchmarks/work/runs/<name>/report.json) instead of redoing it")
    ap.add_argument("--tag", default="",
                    help="suffix for run folders, the JSON and the docs section (e.g. 'gpu': a second table "
                         "beside the 2-core one instead of replacing it)")
    args = ap.parse_args()
    try:
        args.scale_for = {k: float(v) for k, v in (item.rsplit("=", 1) for item in args.scale_for)}
    except ValueError:
        ap.error(f"--scale-for takes NAME=SCALE items, got {args.scale_for}")
    return args


def scale_of(args, name: str) -> float:
    return args.scale_for.get(name, args.scale)


STEP_KEYS = ("steps", "ae_steps", "diffusion_steps")


def scaled_steps(raw: dict, scale: float) -> dict:
    """A deep copy of config dict ``raw`` whose generator trains ``scale`` times as many steps (at least one)."""
    import copy

    raw = copy.deepcopy(raw)
    for k in STEP_KEYS:
        if k in raw["generator"]:
            raw["generator"][k] = max(1, int(raw["generator"][k] * scale))
    return raw


def tagged(name: str, tag: str) -> str:
    """``name-tag`` (``name`` without a tag): a run folder, or a benchmark's results file and page section."""
    return f"{name}-{tag}" if tag else name


def where(rows: list[dict]) -> str:
    """The machine(s) the rows' runs were made on (a reused run keeps the machine it ran on)."""
    seen: dict[str, list[str]] = {}
    for r in rows:
        m = r.get("machine") or {}
        if m:
            text = (f"{m.get('cuda')} GPU + {m.get('cpu_count')} CPUs" if m.get("cuda") else f"{m.get('cpu_count')} CPUs") + \
                f", {m.get('platform')}, torch {m.get('torch')}"
            seen.setdefault(text, []).append(m.get("date", "?"))
    return "; ".join(f"{k} ({min(d)} to {max(d)})" if len(set(d)) > 1 else f"{k} ({d[0]})"
                     for k, d in seen.items()) or "unknown machine"


def same_config(path: Path, cfg, sampling: bool = True) -> bool:
    """Whether the run's stored config is ``cfg``, read with today's defaults: a setting added to
    the library since (at its default) does not make an old run a different experiment. With
    ``sampling=False`` both are compared at default sampling settings: whether they fit the same
    generator."""
    from weightgen.config import ConfigError, dump_config, load_config

    try:
        if not path.is_file():
            return False
        stored = load_config(path, stored=True)
    except ConfigError:
        return False
    if not sampling:
        stored, cfg = at_default_sampling(stored), at_default_sampling(cfg)
    return dump_config(stored) == dump_config(cfg)


def config_differences(path: Path, cfg) -> list[str]:
    """The dotted keys whose values differ between the run's stored config and ``cfg``, both at default
    sampling settings (what decides the fit); [] when they fit the same generator or nothing is stored."""
    import yaml

    from weightgen.config import ConfigError, dump_config, load_config

    try:
        stored = load_config(path, stored=True) if path.is_file() else None
    except ConfigError:
        return ["(unreadable config.yaml)"]
    if stored is None:
        return []
    a, b = (yaml.safe_load(dump_config(at_default_sampling(c))) for c in (stored, cfg))

    def diff(x, y, prefix=""):
        if isinstance(x, dict) and isinstance(y, dict):
            return [d for k in sorted(set(x) | set(y)) for d in diff(x.get(k), y.get(k), f"{prefix}{k}.")]
        return [] if x == y else [f"{prefix.rstrip('.')}: {x!r} stored, {y!r} asked"]
    return diff(a, b)


def refuse_to_overwrite_fit(run_dir: Path, cfg) -> None:
    """With ``--reuse``, a run folder holding a generator fitted with another config is not refitted over:
    a forgotten ``--scale`` would otherwise replace an hour's fit with a short one. Names the keys that differ."""
    if not (run_dir / "generator").is_dir():
        return
    differs = config_differences(run_dir / "config.yaml", cfg)
    if differs:
        raise SystemExit(f"{run_dir} holds a generator fitted with another config ({'; '.join(differs[:4])}); "
                         "--reuse will not refit over it: pass the settings it was fitted with, another --tag, "
                         "or remove the folder")


def at_default_sampling(cfg):
    """``cfg`` with the generator's sampling setting (temperature), the sample section (how many,
    which sampler) and the evaluate section (how samples are judged) at their defaults: what
    decides the fit."""
    from weightgen.generators import set_sampling

    plain = cfg.model_copy(deep=True)
    set_sampling(plain.generator, 1.0)
    plain.sample = type(plain.sample)()
    plain.evaluate = type(plain.evaluate)()
    return plain


def run_or_reuse(cfg, zoo_dir: Path, run_dir: Path, reuse: bool, fitted_in: Sequence[Path] = (),
                 rejudge: bool = False) -> dict:
    """``weightgen run`` of ``cfg``; with ``reuse``, a finished run of exactly this config is read instead.
    ``rejudge``: its generator is sampled and judged again instead (today's evaluator; the fit's
    statistics and machine kept), e.g. after the evaluator gained a baseline.

    ``fitted_in``: runs that may hold a generator fitted with ``cfg`` at other sampling settings; with
    ``reuse`` the first that does is sampled at ``cfg``'s instead of fitting again (its fit time and
    machine kept); so is a generator saved in ``run_dir`` itself by a fit-only run."""
    from weightgen.evaluate.judging import notes
    from weightgen.pipeline import run_experiment

    done, made_on = run_dir / "report.json", run_dir / "machine.json"
    same = same_config(run_dir / "config.yaml", cfg)
    if reuse and done.is_file() and same and not rejudge:
        report = json.loads(done.read_text())
        report["notes"] = notes(report["groups"])  # today's evaluator's reading of the stored numbers
        report["machine"] = json.loads(made_on.read_text()) if made_on.is_file() else None
        return report
    fitted, fit_machine = None, None
    if reuse or rejudge:
        found = (saved_fit(d, cfg) for d in (run_dir, *fitted_in))
        fitted, fit_machine = next((f for f in found if f is not None), (None, None))
        if fitted is None and rejudge:
            raise SystemExit(f"--rejudge: no generator fitted with this config is saved in {run_dir}")
        if fitted is None:
            refuse_to_overwrite_fit(run_dir, cfg)
    report = run_experiment(cfg, zoo_dir, run_dir, show_progress=True, fitted=fitted)
    report["machine"] = fit_machine or machine()  # where the generator was fitted
    made_on.write_text(json.dumps(report["machine"], indent=1))
    return report


def saved_fit(run_dir: Path | None, cfg):
    """((generator, fit stats), machine it was fitted on) of a run folder whose generator was fitted
    with ``cfg`` at default sampling settings, or None: a finished run (its report.json) or one
    made by ``fit_or_reuse`` (its fit.json; e.g. fitted on a lent GPU, judged here)."""
    from weightgen.generators import load_generator

    if run_dir is None or not (run_dir / "generator").is_dir() or \
            not same_config(run_dir / "config.yaml", cfg, sampling=False):
        return None
    if (run_dir / "report.json").is_file():
        stats = json.loads((run_dir / "report.json").read_text())["fit"]
    elif (run_dir / "fit.json").is_file():
        stats = json.loads((run_dir / "fit.json").read_text())
    else:
        return None
    made_on = run_dir / "machine.json"
    fit_machine = json.loads(made_on.read_text()) if made_on.is_file() else stats.get("machine")
    return (load_generator(run_dir / "generator"), stats), fit_machine


def fit_or_reuse(cfg, zoo, run_dir: Path, reuse: bool):
    """(generator, fit stats) for ``cfg`` on ``zoo``, saved in ``run_dir``; with ``reuse``, a
    generator already saved there for this config (sampling settings aside) is loaded instead of refitted."""
    from weightgen.config import dump_config
    from weightgen.pipeline import fit_generator

    saved = saved_fit(run_dir, cfg) if reuse else None
    if saved is not None:
        return saved[0]
    if reuse:
        refuse_to_overwrite_fit(run_dir, cfg)
    gen, stats = fit_generator(cfg, zoo)
    run_dir.mkdir(parents=True, exist_ok=True)
    gen.save(run_dir / "generator")
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    stats = {**stats, "machine": machine()}
    (run_dir / "fit.json").write_text(json.dumps(stats, indent=1))
    return gen, stats


def fitted_generators(generators: dict[str, tuple[str, str]], only: list[str] | None):
    """For a benchmark that reads saved generators (``name -> (run folder, zoo folder)`` under
    benchmarks/work): ``(name, run, zoo folder path, generator)`` of each one ``only`` names (all
    without it), loaded; one not fitted yet is named and skipped."""
    from weightgen.generators import load_generator

    for name, (run, zoo_dir) in generators.items():
        if only and name not in only:
            continue
        path = WORK / "runs" / run / "generator"
        if not path.is_dir():
            print(f"== {name}: {path} not fitted yet, skipped", flush=True)
            continue
        yield name, run, WORK / "zoos" / zoo_dir, load_generator(path)


def gpt_pair_tokens(gen, zoo, firsts: list, lasts: list) -> tuple[torch.Tensor, torch.Tensor]:
    """G.pt's tokens ``(B, T, W)`` of theta (``firsts``) and theta' (``lasts``), as stored, on the generator's device."""
    tok = gen.tokenizer
    return tuple(tok.tokenize_batch(zoo.load(m, tok.names) for m in ms).to(gen.device) for ms in (firsts, lasts))


def teacher_forced_networks(gen, zoo, members, steps: int = 50) -> dict:
    """Stacked state dicts of ``members`` made again by a ``recurrent_input: tokens`` RPG, each
    token's prototype read from that member's true previous tokens (and its own condition), as in
    training (``weightgen.diagnostics.teacher_forced_tokens``); DDIM with ``steps``."""
    from weightgen.diagnostics import teacher_forced_tokens

    tokens = gen.tokenizer.tokenize_batch(zoo.load(m, gen.tokenizer.names) for m in members)
    return gen.to_states(teacher_forced_tokens(gen, tokens, gen.state_index(members), gen.member_conditions(members),
                                               steps=steps))


def teacher_forced_accuracy(run_dir: Path, zoo_dir: Path, k: int = 5) -> float | None:
    """Mean test accuracy of the networks a ``recurrent_input: tokens`` RPG makes when each token's
    prototype reads the true previous tokens of one of ``k`` training checkpoints (spread over the
    zoo), as in training; None for other generators. Beside the sampled accuracy it separates what
    the generator learned from what reading its own tokens costs. Kept in the run folder."""
    from weightgen.config import load_config
    from weightgen.evaluate import evaluate_states
    from weightgen.generators import load_generator
    from weightgen.pipeline import zoo_task
    from weightgen.zoo import Zoo

    if getattr(load_config(run_dir / "config.yaml", stored=True).generator, "recurrent_input", None) != "tokens":
        return None
    cached = run_dir / "teacher_forced.json"
    # the generator as saved: a refit (or a re-save) of the run makes the cached numbers stale
    saved = [f.name + ":" + hashlib.sha256(f.read_bytes()).hexdigest()[:16]
             for f in sorted((run_dir / "generator").iterdir()) if f.suffix == ".safetensors"]
    earlier = json.loads(cached.read_text()) if cached.is_file() else {}
    if earlier.get("generator") == saved:
        return earlier["mean"]
    gen = load_generator(run_dir / "generator")
    with Zoo.open(zoo_dir) as zoo:
        members = zoo.members("train")
        chosen = members[::max(1, len(members) // k)][:k]
        acc = [float(a) for a in evaluate_states(zoo.build_net(), teacher_forced_networks(gen, zoo, chosen),
                                                 zoo_task(zoo)).accuracy]
    cached.write_text(json.dumps({"generator": saved, "members": [{"run": m.run, "step": m.step} for m in chosen],
                                  "accuracy": acc, "mean": sum(acc) / len(acc)}, indent=1))
    return sum(acc) / len(acc)


def more_novel_than_noise(row: dict) -> bool:
    """The evaluator's verdict: lower max IoU than noise-added originals at the generated accuracy."""
    return any(n.startswith("novelty at equal accuracy") and "LOWER max IoU" in n for n in row["notes"])


def summarize(name: str, report: dict) -> dict:
    """The numbers a benchmark table needs from one run's report.json."""
    g = report["groups"]
    orig, gen = g["original"], g["generated"]
    noise = {k.removeprefix("noise_"): {"mean": v["mean"], "max_iou_mean": v["max_iou_mean"],
                                         "nearest_distance_mean": v["nearest_distance_mean"]}
             for k, v in g.items() if k.startswith("noise_")}
    return {
        "name": name, "generated_params": report["num_generated_params"],
        "original": {k: orig[k] for k in ("best", "mean", "median", "max_iou_mean", "nearest_distance_mean")},
        "weight_average": g["weight_average"]["mean"], "noise": noise,
        # each run's own weight average (zoos of several runs, evaluator since 2026-12-02)
        "run_average": ({k: g["run_average"][k] for k in ("n", "best", "mean", "max_iou_mean")}
                        if "run_average" in g else None),
        "generated": {k: gen[k] for k in ("best", "mean", "median", "worst", "n_nonfinite", "max_iou_mean",
                                          "nearest_distance_mean")},
        "targets": {
            "best_ge_original_best": gen["best"] is not None and gen["best"] >= orig["best"],
            "median_ge_original_median_minus_0.5pt": gen["median"] is not None and gen["median"] >= orig["median"] - 0.005,
        },
        "notes": report["notes"], "timing": report["timing"], "fit": report["fit"],
        "machine": report.get("machine"),
    }


def untrained_rpg(state: dict, spec: dict, token: int, net_name: str, device: str = "cpu"):
    """An RPG (spec ``spec``, tokens of ``token`` values, not fitted) for the layout of ``state``, a state dict
    read on the meta device, so no weight of the net is ever allocated: what the scale benchmarks generate
    from, since the time and memory of generation do not depend on the fit."""
    from weightgen.config import RPGSpec
    from weightgen.generators.rpg import RPG
    from weightgen.tokens import Tokenizer

    shapes = {k: tuple(v.shape) for k, v in state.items()}
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()}
    n = len(shapes)
    tok = Tokenizer(Tokenizer.layout(shapes, dtypes, token), token, torch.zeros(n, dtype=torch.float64),
                    torch.ones(n, dtype=torch.float64), "tensor")
    layout = {k: (shapes[k], getattr(torch, dtypes[k])) for k in shapes}
    return RPG(RPGSpec.model_validate(spec), tok, {}, {"name": net_name}, runs=[0], layout=layout, device=device)

