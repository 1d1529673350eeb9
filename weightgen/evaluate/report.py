"""Writing a judged report (``judging.py``): report.json, report.md and novelty.png in one folder."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .plots import novelty_plot


def _clean(obj):
    """JSON-safe copy: nan/inf become None, numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _fmt(v, spec: str = ".4f") -> str:
    """``v`` formatted by ``spec``; a dash for None (a statistic with no finite network)."""
    return "–" if v is None else format(v, spec)


def markdown(report: dict) -> str:
    """report.md: one table row per group, then the notes, the timing and the novelty plot."""
    metric, better = report.get("metric", "accuracy"), report.get("better", "higher")
    lines = [f"# {report['title']}", "",
             f"Task `{report['task']}`, {report['split']} split ({report['num_test']} samples); "
             f"{len(report['generated_names'])} generated tensors, {report['num_generated_params']} values. "
             f"Best, mean and median are the {report['split']} {metric} ({better} is better). "
             "Max IoU and nearest L2 distance are measured against all training checkpoints." +
             (" BatchNorm statistics of every made network (weight average, noise-added, generated) recomputed on the "
              "training inputs (`evaluate.recalibrate_bn`)." if report.get("recalibrate_bn") else ""), "",
             "| group | n (non-finite) | best | mean | median | max IoU | nearest distance |",
             "|---|---|---|---|---|---|---|"]
    for key, g in report["groups"].items():
        n = f"{g['n']} ({g['n_nonfinite']})" if g["n_nonfinite"] else str(g["n"])
        lines.append(f"| {key} | {n} | {_fmt(g['best'])} | {_fmt(g['mean'])} | {_fmt(g['median'])} "
                     f"| {_fmt(g['max_iou_mean'], '.3f')} | {_fmt(g['nearest_distance_mean'], '.4g')} |")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    if report.get("timing"):
        lines += ["", "## Timing", ""] + [f"- {k}: {_fmt(v, '.4g') if isinstance(v, float) else v}"
                                          for k, v in report["timing"].items()]
    lines += ["", "![novelty](novelty.png)", ""]
    return "\n".join(lines)


def write_report(report: dict, out_dir: Path) -> None:
    """report.json, report.md and novelty.png in ``out_dir`` (made if missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    (out_dir / "report.md").write_text(markdown(report))
    novelty_plot(report["groups"], out_dir / "novelty.png", report["title"], report.get("metric", "accuracy"),
                 report.get("better", "higher"))


def write_split_report(report: dict, out_dir, unit: str, header: list[str], cells) -> None:
    """report.json and a report.md of one table per split (``report["rows"]``: split -> rows) for reports
    judged per task (codes, keys): the notes, then ``header``'s columns, ``cells(row)`` giving each row's."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    lines = [f"# {report['title']}", "", *[f"- {n}" for n in report["notes"]], ""]
    for split, rows in report["rows"].items():
        lines += [f"## {split} {unit}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))

