"""tools/demo_report.py: the demo's summary table from the files its runs write."""

from __future__ import annotations

import json
import subprocess
import sys

from launch_helpers import REPO, child_env


def write_run(folder, explained, probes, maskfeat_top1, scratch_top1=None):
    (folder / "pretrain").mkdir(parents=True)
    lines = [{"step": step, "epoch": 0, "loss": 0.1, "explained_variance": value} for step, value in explained]
    lines += [{"step": step, "epoch": 0, "probe_top1": value, "probe_top5": 90.0} for step, value in probes]
    (folder / "pretrain" / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    for start, top1 in (("finetune", maskfeat_top1), ("scratch", scratch_top1)):
        if top1 is not None:
            (folder / start / "test").mkdir(parents=True)
            (folder / start / "test" / "metrics.json").write_text(json.dumps({"top1": top1, "top5": 99.0}))


def test_one_row_per_run_with_both_curves_and_the_gain(tmp_path):
    explained = [(25 * i, i / 100) for i in range(1, 25)]  # 24 log steps: shown at 5 of them
    write_run(tmp_path / "seed0", explained, [(0, 16.7), (300, 20.0), (600, 23.75)], 50.0, 37.083)
    write_run(tmp_path / "seed1", [(25, -0.5)], [(0, 15.0)], 44.0)  # its scratch run has not been tested yet
    proc = subprocess.run(
        [sys.executable, "tools/demo_report.py", str(tmp_path / "seed0"), str(tmp_path / "seed1")],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| seed")]
    assert rows == [
        "| seed0 | 25: 0.010, 175: 0.070, 325: 0.130, 450: 0.180, 600: 0.240 | 0: 16.7, 300: 20.0, 600: 23.8 | 50.0 "
        "| 37.1 | +12.9 |",
        "| seed1 | 25: -0.500 | 0: 15.0 | 44.0 | — | — |",
    ]


def test_a_missing_run_folder_is_named(tmp_path):
    proc = subprocess.run(
        [sys.executable, "tools/demo_report.py", str(tmp_path / "nowhere")],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "nowhere" in proc.stderr
