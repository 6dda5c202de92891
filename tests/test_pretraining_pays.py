"""MaskFeat pretraining learns a representation on real demo shards: the k-NN probe of the frozen backbone rises
well above its value at initialisation, and the log's explained variance leaves 0 (`recipes/demo_pt.yaml` at a
smaller size: the demo's classes, shape × direction of motion, on 64² videos; 480 unlabelled, 96 labelled and 160
held-out videos; 390 steps, about 1.5 min on 2 cores)."""

from __future__ import annotations

import pytest

from launch_helpers import REPO
from mfvideo.engine.monitor import read_metrics
from training_helpers import make_demo_shards, train_to_end

SHAPES = ["--shapes", "2", "--background", "flat"]


@pytest.mark.slow
def test_pretraining_raises_the_knn_probe_well_above_its_start(tmp_path):
    for split, videos, seed in (("pretrain", 480, 0), ("labelled", 96, 0), ("test", 160, 1)):
        make_demo_shards(tmp_path / split, videos, 96, "--workers", "2", *SHAPES, seed=seed)
    out = train_to_end(
        REPO / "recipes" / "demo_pt.yaml",
        tmp_path / "run",
        f"data.train={tmp_path / 'pretrain'}",
        f"data.probe_train={tmp_path / 'labelled'}",
        f"data.probe_val={tmp_path / 'test'}",
        "optim.epochs=13",
        "train.probe_every=13",
    )
    records = read_metrics(out)
    probes = {step: record["probe_top1"] for step, record in records.items() if "probe_top1" in record}
    explained = [record["explained_variance"] for record in records.values() if "explained_variance" in record]
    assert min(probes) == 0 and len(probes) == 2, probes
    # Measured with train.seed 0 / 1 / 2 (this test runs 0): k-NN top-1 10.0 → 21.3, 13.1 → 17.5, 15.6 → 21.9 (+11.3,
    # +4.4, +6.3; chance 12.5 on 160 videos); final explained variance 0.21, 0.20, 0.23. The margins hold on all three.
    assert probes[max(probes)] >= probes[0] + 4, probes
    assert explained[-1] > 0.1, explained
