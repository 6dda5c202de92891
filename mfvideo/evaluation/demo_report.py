"""The demo's summary (`tools/demo_report.py`): what MaskFeat pretraining learned and what it pays, read from the
files the demo's runs wrote.

A demo run folder (`tools/dev.sh demo [SEED]` → `outputs/demo/seed<SEED>`) holds `pretrain/metrics.jsonl` (the
explained variance of the masked HOG at log steps, the k-NN probe's top-1 at probe steps), `finetune/test/` and
`scratch/test/` (`metrics.json` of the same fine-tuning from the MaskFeat weights and from scratch, tested on the
held-out videos) and `hog.png`. One table row per run folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# Pretraining's explained variance is shown at these fractions of its logged steps (first and last included).
CURVE_POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class DemoRun:
    folder: Path
    explained_variance: list[tuple[int, float]]  # (step, value) at the pretraining's log steps
    knn_top1: list[tuple[int, float]]  # (step, top-1 %) of every k-NN probe
    maskfeat_top1: Optional[float]  # test top-1 % fine-tuned from the MaskFeat weights
    scratch_top1: Optional[float]  # ... from scratch


def _test_top1(folder: Path) -> Optional[float]:
    path = folder / "test" / "metrics.json"
    return json.loads(path.read_text())["top1"] if path.is_file() else None


def read_demo_run(folder: Path) -> DemoRun:
    """The numbers of one demo run folder; parts not run yet are empty or None."""
    explained, knn = {}, {}
    metrics = folder / "pretrain" / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        record = json.loads(line)
        if "explained_variance" in record:
            explained[record["step"]] = record["explained_variance"]
        if "probe_top1" in record:
            knn[record["step"]] = record["probe_top1"]  # a step probed again after a resume keeps its last value
    return DemoRun(
        folder,
        sorted(explained.items()),
        sorted(knn.items()),
        _test_top1(folder / "finetune"),
        _test_top1(folder / "scratch"),
    )


def _curve(points: list[tuple[int, float]], fmt: str) -> str:
    return ", ".join(f"{step}: {value:{fmt}}" for step, value in points) or "—"


def _sampled(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    if not points:
        return []
    picks = sorted({round(fraction * (len(points) - 1)) for fraction in CURVE_POINTS})
    return [points[i] for i in picks]


def _top1(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.1f}"


def markdown_table(runs: list[DemoRun]) -> str:
    """One row per run: explained variance and k-NN top-1 over pretraining (step: value), fine-tuned test top-1
    from MaskFeat and from scratch, and the difference."""
    rows = [
        "| run | explained variance (step: value) | k-NN top-1 % (step: value) | test top-1 % from MaskFeat "
        "| from scratch | MaskFeat − scratch |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        gain = (
            f"{run.maskfeat_top1 - run.scratch_top1:+.1f}"
            if run.maskfeat_top1 is not None and run.scratch_top1 is not None
            else "—"
        )
        rows.append(
            f"| {run.folder.name} | {_curve(_sampled(run.explained_variance), '.3f')} | "
            f"{_curve(run.knn_top1, '.1f')} | {_top1(run.maskfeat_top1)} | {_top1(run.scratch_top1)} | "
            f"{gain} |"
        )
    return "\n".join(rows)
