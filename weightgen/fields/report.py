"""The field report of ``weightgen run`` on a ``fields`` zoo.

A generated field has no target image, so the general judge (which scores a network on its task's
test split) does not apply. This report decodes every network on the family's grid instead and says:

- ``nearest``: each generated field's root-mean-square distance to its nearest training field (both
  as decoded by their networks, on the grid), and that field's class: how far from a copy it is.
- ``class_fidelity`` (digit fields only): the share of fields that a digits classifier (logistic
  regression trained on the original 8 x 8 images, read off the field at the 8 x 8 pixel centres, which
  the bilinear upsampling keeps exactly) assigns to the class asked for.
- the same two for the baselines: training fields' weights plus Gaussian noise at each of
  ``evaluate.sigmas`` (classified as their source field's class), and held-out fields, the reference
  for how far a new field of the family lies from the training ones.
- ``generative``: MMD, COV and 1-NNA of the generated fields, the two baselines and held-out fields
  against the other held-out fields (``weightgen.fields.judge``), and ``novelty_at_equal_quality``.

The pictures (the grid beside the nearest training fields, the denoising strip) are drawn by
``weightgen.fields.render``.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import torch

from weightgen.evaluate.batched import stack_states

from .digits import grid_coords
from .fit import field_values
from .judge import class_averages, even_picks, novelty_at_equal_quality, set_metrics
from .render import decode_during_sampling, nearest, plot_grid, plot_strip, write_gif
from .zoo import zoo_family

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


@lru_cache(maxsize=1)
def digits_classifier():
    """Logistic regression on scikit-learn's digits (pixels / 16), the training split of the ``digits``
    task; returns (classifier, test accuracy)."""
    from sklearn.linear_model import LogisticRegression

    from weightgen.tasks.digits import _digits_arrays

    x_tr, y_tr, _, _, x_te, y_te = _digits_arrays()
    clf = LogisticRegression(max_iter=2000).fit(x_tr.reshape(len(x_tr), -1), y_tr)
    return clf, float(clf.score(x_te.reshape(len(x_te), -1), y_te))


def classify(net: torch.nn.Module, stacked: dict[str, torch.Tensor]) -> torch.Tensor:
    """The digits classifier's class ``(M,)`` for each field, read at the 8 x 8 pixel centres."""
    clf, _ = digits_classifier()
    pixels = field_values(net, stacked, grid_coords(8)).squeeze(-1).clamp(0.0, 1.0)
    return torch.from_numpy(clf.predict(pixels.numpy())).long()


def _summary(dist: torch.Tensor, asked: torch.Tensor | None, got: torch.Tensor | None) -> dict:
    out = {"n": int(len(dist)), "nearest_rms_mean": float(dist.mean()), "nearest_rms_median": float(dist.median())}
    if asked is not None and got is not None:
        out["class_fidelity"] = float((asked == got).float().mean())
    return out


def fields_report(gen, zoo, cfg, title: str) -> dict:
    """Sample ``cfg.sample.n`` fields (spread over the classes when the generator is conditioned on them),
    judge them against the zoo's fields (``judge_fields``) and add the denoising strip."""
    s = cfg.sample
    family = zoo_family(cfg)
    conditional = getattr(gen.spec, "condition", "none") == "task_code"
    per_class = math.ceil(s.n / family.num_classes) if conditional else s.n
    batches, asked = [], []
    for c in (range(family.num_classes) if conditional else [None]):
        for batch in gen.sample(per_class, class_code(c, family.num_classes), s.seed, s.batch_size, s.sampler,
                                s.steps):
            batches.append({k: v.float() for k, v in batch.items()})
            asked += [c] * next(iter(batch.values())).shape[0]
    samples = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    report = judge_fields(zoo, cfg, samples, asked, title)
    report["_strip"] = _strip(gen, zoo.build_net(), family, cfg, conditional)
    return report


def class_code(c: int | None, num_classes: int) -> str | None:
    """The one-hot code a field zoo stores for class ``c`` (None: no class)."""
    return None if c is None else "".join("1" if i == c else "0" for i in range(num_classes))


def asked_classes(condition, n: int) -> list[int | None]:
    """The class each of ``n`` samples was asked for, from the condition ``weightgen sample`` recorded: a
    one-hot code (``--classes 3``) or none."""
    if isinstance(condition, str) and set(condition) <= {"0", "1"} and condition.count("1") == 1:
        return [condition.index("1")] * n
    return [None] * n


def judge_fields(zoo, cfg, samples: dict[str, torch.Tensor], asked: list[int | None], title: str) -> dict:
    """Stacked field networks ``samples`` (each asked for class ``asked[i]``, or None) judged against the
    zoo's fields (see the module's docstring); ``weightgen eval`` calls it on a folder of samples."""
    family = zoo_family(cfg)
    grid = tuple(family.grid)
    net = zoo.build_net()
    train_members = zoo.members("train")
    train = stack_states([zoo.load(m) for m in train_members])
    train_labels = torch.tensor([m.condition["class"] for m in train_members])
    train_values = field_values(net, train, family.coords)
    conditional = any(a is not None for a in asked)
    values = field_values(net, samples, family.coords)
    finite = torch.isfinite(values.flatten(1)).all(1)
    idx, dist = nearest(values.nan_to_num(0.0), train_values)
    digits = family.name == "digit-fields"  # the only family with a classifier of its own
    classes = (lambda st: classify(net, st)) if digits else (lambda st: None)
    asked_t = torch.tensor([-1 if a is None else a for a in asked])
    report: dict = {"title": title, "kind": "fields", "task": cfg.task.name, "conditional": conditional,
                    "grid": list(grid), "train_fields": len(train_members),
                    "train_psnr_mean": sum(m.metrics["train_psnr"] for m in train_members) / len(train_members),
                    "classifier_test_accuracy": digits_classifier()[1] if digits else None}
    report["generated"] = _summary(dist, asked_t if conditional else None,
                                   classes({k: v.nan_to_num(0.0) for k, v in samples.items()}))
    report["generated"]["nonfinite"] = int((~finite).sum())
    report["generated"]["nearest_class_matches_asked"] = (
        float((train_labels[idx] == asked_t).float().mean()) if conditional else None)
    # noise added to training fields' weights, each classified as its source's class
    gen_rng = torch.Generator().manual_seed(cfg.seed)
    n_noise = min(cfg.evaluate.n_noise, len(train_members))
    src = torch.randperm(len(train_members), generator=gen_rng)[:n_noise]
    report["noise"], noise_values = {}, {}
    for sigma in cfg.evaluate.sigmas:
        noisy = {k: v[src] + sigma * torch.randn(v[src].shape, generator=gen_rng) for k, v in train.items()}
        noise_values[sigma] = field_values(net, noisy, family.coords)
        _, d = nearest(noise_values[sigma], train_values)
        report["noise"][str(sigma)] = _summary(d, train_labels[src], classes(noisy))
    held = zoo.members("heldout")
    if held:
        hs = stack_states([zoo.load(m) for m in held])
        held_values = field_values(net, hs, family.coords)
        _, d = nearest(held_values, train_values)
        report["heldout"] = _summary(d, torch.tensor([m.condition["class"] for m in held]), classes(hs))
        if len(held) >= 4:
            report.update(_set_judgement(report, net, family, train, train_labels, train_values, values, asked,
                                         noise_values, held_values, cfg.seed))
    report["notes"] = notes(report)
    # for the picture (not written to JSON): the first PICTURED fields of each class asked for, each with
    # its nearest training field
    order = [i for c in sorted(set(asked), key=lambda c: -1 if c is None else c)
             for i in [j for j, a in enumerate(asked) if a == c][:PICTURED if conditional else 2 * PICTURED]]
    report["_grid"] = (values[order].view(-1, *grid), train_values[idx[order]].view(-1, *grid), dist[order])
    return report


def _set_judgement(report, net, family, train, train_labels, train_values, values, asked, noise_values,
                   held_values, seed) -> dict:
    """``generative`` (MMD, COV and 1-NNA of every group against the first half of the held-out fields,
    ``weightgen.fields.judge``) and ``novelty_at_equal_quality``."""
    half = len(held_values) // 2
    reference, other = held_values[:half], held_values[half:2 * half]
    n = len(reference)
    pick = even_picks(len(values), n)
    groups = {"generated": values[pick]}
    for sigma, v in noise_values.items():
        groups[f"noise_{sigma}"] = v[:n]
    averages = class_averages(train, train_labels, [asked[int(i)] for i in pick])
    groups["weight_average"] = field_values(net, averages, family.coords)
    groups["heldout"] = other
    metrics = set_metrics(groups, reference, tuple(family.grid), seed)
    nearest_mean = {name: float(nearest(v.nan_to_num(0.0), train_values)[1].mean()) for name, v in groups.items()}
    for name in metrics:
        metrics[name]["nearest_rms_mean"] = nearest_mean[name]
    return {"generative": metrics, "reference": {"n": n, "distance": "chamfer" if len(family.grid) == 3 else "l2"},
            "novelty_at_equal_quality": novelty_at_equal_quality(metrics, nearest_mean)}


PICTURED = 2  # generated fields per class in the grid picture
STRIP_CLASSES = (0, 3, 5, 8)  # one sample each in the denoising strip


def _strip(gen, net, family, cfg, conditional: bool):
    """(timesteps, frames ``[(B, *grid)]``) of a denoising strip."""
    s, grid, frames, steps = cfg.sample, tuple(family.grid), None, None
    for c in ([c for c in STRIP_CLASSES if c < family.num_classes] if conditional else [None]):
        code = class_code(c, family.num_classes)
        steps, states = decode_during_sampling(gen, 1 if conditional else len(STRIP_CLASSES), code, s.seed,
                                               frames=6, sampler=s.sampler, steps=s.steps)
        decoded = [field_values(net, {k: v.float() for k, v in st.items()}, family.coords).view(-1, *grid)
                   for st in states]
        frames = decoded if frames is None else [torch.cat([a, b]) for a, b in zip(frames, decoded)]
    return steps, frames


def _fidelity(r: dict) -> str:
    return f", class fidelity {r['class_fidelity']:.3f}" if r.get("class_fidelity") is not None else ""


GROUP_NAMES = {"generated": "generated", "weight_average": "weight average", "heldout": "held out (reference)"}


def group_name(key: str) -> str:
    return GROUP_NAMES.get(key) or f"training + noise {key.split('_', 1)[1]}"


def notes(report: dict) -> list[str]:
    """The report's lines for the terminal."""
    g = report["generated"]
    out = [f"generated: {g['n']} fields, nearest training field {g['nearest_rms_mean']:.4f} RMS on average"
           + _fidelity(g)]
    for sigma, r in report["noise"].items():
        out.append(f"training + noise {sigma}: nearest {r['nearest_rms_mean']:.4f} RMS{_fidelity(r)}")
    if "heldout" in report:
        r = report["heldout"]
        out.append(f"held out: nearest {r['nearest_rms_mean']:.4f} RMS{_fidelity(r)}")
    if "generative" in report:
        ref = report["reference"]
        out.append(f"against {ref['n']} held-out fields ({ref['distance']}): MMD, COV, 1-NNA (50% is ideal)")
        for key, m in report["generative"].items():
            out.append(f"  {group_name(key)}: MMD {m['mmd']:.4g}, COV {100 * m['cov']:.1f}%, "
                       f"1-NNA {100 * m['1nna']:.1f}%" + (f", {m['empty']} empty" if m["empty"] else ""))
        out.append(novelty_line(report["novelty_at_equal_quality"]))
    return out


def novelty_line(nov: dict) -> str:
    """One sentence on novelty at equal quality."""
    if nov["noise"] is None:
        return ("novelty: no noise level tried is as good as the generated fields (MMD), so none compares at "
                "equal quality")
    where = (f"noise interpolated to equal MMD between {group_name(nov['noise'].split('..')[0])} and "
             f"{nov['noise'].split('..')[1].split('_', 1)[1]}" if ".." in nov["noise"]
             else f"{group_name(nov['noise'])}, whose MMD is better")
    verdict = {True: "more than", False: "no more than", None: "undecided against"}[nov["more_novel"]]
    return (f"novelty: generated fields lie {nov['generated_nearest']:.4f} RMS from their nearest training field, "
            f"{verdict} {where} ({nov['noise_nearest']:.4f})")


def write_fields_report(report: dict, run_dir: Path) -> None:
    """``report.json``, ``report.md`` and the pictures in ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in report.items() if not k.startswith("_")}
    (run_dir / REPORT_JSON).write_text(json.dumps(data, indent=1))
    acc = report.get("classifier_test_accuracy")
    fidelity = ("" if acc is None else
                f" Class fidelity: the share a digits classifier (test accuracy {acc:.3f} on the original images) "
                "assigns to the class asked for (generated), or to the source field's class (noise, held out).")
    lines = [f"# {report['title']}", "",
             f"{report['train_fields']} training fields (mean PSNR {report['train_psnr_mean']:.1f} dB) on a "
             f"{' x '.join(map(str, report['grid']))} grid. Distances are root-mean-square over the grid, to the "
             f"nearest training field (values in [0, 1]).{fidelity}", "",
             "| fields | n | nearest RMS (mean) | nearest RMS (median) | class fidelity |", "|---|---|---|---|---|"]

    def row(name, r):
        fid = r.get("class_fidelity")
        return (f"| {name} | {r['n']} | {r['nearest_rms_mean']:.4f} | {r['nearest_rms_median']:.4f} | "
                f"{'-' if fid is None else f'{fid:.3f}'} |")

    lines.append(row("generated", report["generated"]))
    for sigma, r in report["noise"].items():
        lines.append(row(f"training + noise {sigma}", r))
    if "heldout" in report:
        lines.append(row("held out", report["heldout"]))
    g = report["generated"]
    if g.get("nonfinite"):
        lines += ["", f"{g['nonfinite']} generated fields have non-finite values."]
    if report.get("conditional"):
        lines += ["", f"The nearest training field has the class asked for in "
                      f"{100 * g['nearest_class_matches_asked']:.1f}% of generated fields."]
    if "generative" in report:
        ref = report["reference"]
        what = ("Chamfer distance between 2,048 points on each surface" if ref["distance"] == "chamfer"
                else "L2 distance between decoded images")
        lines += ["", f"Each group against {ref['n']} held-out fields, by {what}. MMD: lower is better. COV: higher "
                      "is better. 1-NNA: 50% is ideal; 100% means the sets are told apart; under 50% means copies. "
                      "The held-out row is what real unseen fields score.", "",
                  "| fields | n | MMD | COV | 1-NNA | nearest training RMS | no surface |", "|---|---|---|---|---|---|---|"]
        for key, m in report["generative"].items():
            lines.append(f"| {group_name(key)} | {m['n']} | {m['mmd']:.4g} | {100 * m['cov']:.1f}% | "
                         f"{100 * m['1nna']:.1f}% | {m['nearest_rms_mean']:.4f} | {m['empty']} |")
        lines += ["", novelty_line(report["novelty_at_equal_quality"]).capitalize() + "."]
    lines += _pictures(report, run_dir)
    (run_dir / REPORT_MD).write_text("\n".join(lines) + "\n")


def _pictures(report: dict, run_dir: Path) -> list[str]:
    """``grid.png``, ``strip.png`` and ``strip.gif`` in ``run_dir``, and the report's lines that show them."""
    out = []
    if report.get("_grid") is not None:
        generated, nearest_fields, dist = report["_grid"]
        plot_grid(generated, run_dir / "grid.png", nearest_fields, dist, columns=2 * PICTURED * 5 // 2,
                  title="generated (above) and the nearest training field (below)")
        out += ["", "Generated fields, each above its nearest training field:", "", "![grid](grid.png)"]
    if report.get("_strip") is not None:
        steps, frames = report["_strip"]
        plot_strip(frames, steps, run_dir / "strip.png", title="from noise to field")
        write_gif(frames, steps, run_dir / "strip.gif")
        out += ["", "Denoising strip (the sampler's clean-field prediction at several steps; also strip.gif):",
                "", "![strip](strip.png)"]
    return out
