"""tools/probe.py, the frozen-backbone probe, on real demo shards (H.264 made by tools/make_shards.py): the same
metrics on 1 and 2 processes, every val video predicted once, and the weights and splits that must stop it before
any work; and the linear probe (mfvideo.evaluation.linear_probe) on synthetic features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from launch_helpers import REPO
from mfvideo.app.probe import probe_model
from mfvideo.config import load_recipe
from mfvideo.evaluation.linear_probe import fit_linear_probe
from training_helpers import (
    assert_stops_before_any_work,
    evaluation_outputs,
    make_demo_shards,
    relabelled_copy,
    run_to_success,
    save_fresh_weights,
    script_command,
    shard_labels,
)

# Small clips keep a probe of the tiny MViT at a few seconds on 2 cores.
CLIP = ["data.num_frames=4", "data.crop_size=32", "data.test_short_side=32"]


# ----------------------------------------------------------------------------------------------- the linear probe


def _clusters(num_per_class: int, seed: int, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centres)).repeat(num_per_class)
    return centres[labels] + 0.3 * torch.randn(len(labels), centres.shape[1], generator=generator), labels


def _centres(num_classes: int, dim: int) -> torch.Tensor:
    """Class centres 3 apart or more, differing only in the first 2 channels; the other channels are noise."""
    angles = torch.arange(num_classes) * 2 * torch.pi / num_classes
    centres = torch.zeros(num_classes, dim)
    centres[:, 0], centres[:, 1] = 3 * angles.cos(), 3 * angles.sin()
    return centres


def test_linear_probe_separates_separable_clusters_whatever_the_channel_scales():
    """The class lies in two channels a thousand times smaller than the noise channels, as one channel of a
    backbone can be: without standardisation the L2 penalty would keep the probe from reading them."""
    centres = _centres(5, 12)
    train, train_labels = _clusters(20, 0, centres)
    val, val_labels = _clusters(10, 1, centres)
    scale = torch.ones(12)
    scale[:2], scale[2:] = 1e-3, 10.0
    probe = fit_linear_probe(train * scale, train_labels, 5)
    for features, labels in ((train, train_labels), (val, val_labels)):
        scores = probe.scores(features * scale)
        assert scores.shape == (len(labels), 5)
        torch.testing.assert_close(scores.sum(dim=1), torch.ones(len(labels), dtype=torch.float64))
        assert torch.equal(scores.argmax(dim=1), labels)


def test_linear_probe_does_not_depend_on_the_order_of_the_train_videos():
    """Ranks gather the train split in their own order; the probe must not care (a convex problem, zero start)."""
    centres = _centres(3, 8)
    train, labels = _clusters(10, 2, centres)
    train += 2.0 * torch.randn(train.shape, generator=torch.Generator().manual_seed(3))  # overlapping classes
    query, _ = _clusters(5, 4, centres)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(5))
    first = fit_linear_probe(train, labels, 3)
    shuffled = fit_linear_probe(train[order], labels[order], 3)
    assert 0 < first.iterations <= 300
    torch.testing.assert_close(first.scores(query), shuffled.scores(query), rtol=0, atol=1e-6)


def test_linear_probe_refuses_labels_outside_the_classes():
    with pytest.raises(ValueError, match="outside 0..2"):
        fit_linear_probe(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), 3)


# ------------------------------------------------------------------------------------------ demo shards, weights


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory) -> Path:
    """Labelled demo splits (train: 24 videos in 3 shards, val: 8 in 2) and an untrained MaskFeat `model.pt` of the
    demo pretraining recipe (the tiny MViT)."""
    root = tmp_path_factory.mktemp("probe")
    for split, videos, per_shard, seed in (("train", 24, 8, 0), ("val", 8, 4, 1)):
        make_demo_shards(root / split, videos, per_shard, seed=seed)
    save_fresh_weights(_pretrain_recipe(root).model, 4, 32, root / "model.pt", seed=0)
    return root


def _pretrain_recipe(root: Path, *overrides: str):
    return load_recipe(REPO / "recipes" / "demo_pt.yaml", [f"data.train={root / 'train'}", *CLIP, *overrides])


def probe_cmd(root: Path, out: Path, *overrides: str, nproc: int = 1) -> list[str]:
    return script_command(
        "tools/probe.py",
        str(REPO / "recipes" / "demo_pt.yaml"),
        f"model.init={root / 'model.pt'}",
        f"data.train={root / 'train'}",
        f"data.val={root / 'val'}",
        "data.probe_train=null",
        "data.probe_val=null",
        *CLIP,
        "data.test_clips=2",
        f"train.output_dir={out}",
        *overrides,
        nproc=nproc,
    )


def test_probe_model_takes_a_bare_backbone_and_names_missing_backbone_tensors(probe_data, tmp_path):
    state = torch.load(probe_data / "model.pt", weights_only=True)["model"]
    backbone = {key: value for key, value in state.items() if key.startswith("backbone.")}
    torch.save(backbone, tmp_path / "backbone.pt")
    model, report = probe_model(_pretrain_recipe(probe_data, f"model.init={tmp_path / 'backbone.pt'}"))
    assert sorted(report.missing) == [
        "mask_token",
        "pred_head.norm.bias",
        "pred_head.norm.weight",
        "pred_head.proj.bias",
        "pred_head.proj.weight",
    ]
    torch.testing.assert_close(
        model.state_dict()["backbone.blocks.1.attn.qkv.weight"],
        state["backbone.blocks.1.attn.qkv.weight"],
        rtol=0,
        atol=0,
    )
    del backbone["backbone.blocks.1.attn.qkv.weight"]
    torch.save(backbone, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"backbone\.blocks\.1\.attn\.qkv\.weight"):
        probe_model(_pretrain_recipe(probe_data, f"model.init={tmp_path / 'partial.pt'}"))


# ------------------------------------------------------------------------------------- end to end, real processes


@pytest.mark.slow
def test_probe_gives_the_same_metrics_on_one_and_two_processes(probe_data, tmp_path):
    # data.train names nothing: with data.probe_train and data.probe_val set, the probe never reads it
    splits = [
        f"data.train={tmp_path / 'no_such_split'}",
        f"data.probe_train={probe_data / 'train'}",
        f"data.probe_val={probe_data / 'val'}",
        "data.val=null",
    ]
    results = []
    for nproc in (1, 2):
        out = tmp_path / f"p{nproc}"
        run_to_success(probe_cmd(probe_data, out, *splits, nproc=nproc))
        results.append(evaluation_outputs(out / "probe"))
        assert (out / "probe" / "recipe.yaml").is_file()
    (one, rows_one), (two, rows_two) = results
    assert one == two
    assert {
        key: one[key]
        for key in (
            "num_train_videos",
            "num_val_videos",
            "num_val_views",
            "num_classes",
            "k",
            "temperature",
            "checkpoint",
        )
    } == {
        "num_train_videos": 24,
        "num_val_videos": 8,
        "num_val_views": 2,
        "num_classes": 4,
        "k": 20,
        "temperature": 0.07,
        "checkpoint": str(probe_data / "model.pt"),
    }
    assert one["feature_dim"] > 0 and one["linear_train_top1"] == 100.0  # 24 videos in more dimensions than that
    val_truth = shard_labels(str(probe_data / "val"))
    assert len(rows_one) == 8 and {row["key"]: row["label"] for row in rows_one} == val_truth
    classes = json.loads((probe_data / "train" / "manifest.json").read_text())["classes"]
    for scorer in ("linear", "knn"):
        assert [[c for c, _, _ in row[f"{scorer}_top5"]] for row in rows_one] == [
            [c for c, _, _ in row[f"{scorer}_top5"]] for row in rows_two
        ]
        for row in rows_one:
            top = row[f"{scorer}_top5"]
            assert sorted(c for c, _, _ in top) == [0, 1, 2, 3] and [name for _, name, _ in top] == [
                classes[c] for c, _, _ in top
            ]
            assert sum(score for _, _, score in top) == pytest.approx(1.0)
        correct = sum(row[f"{scorer}_top5"][0][0] == row["label"] for row in rows_one)
        assert one[f"{scorer}_top1"] == pytest.approx(100 * correct / 8)
        assert one[f"{scorer}_top5"] == 100.0  # 4 classes: the top 4 always hold the label


# --------------------------------------------------------------------------------------------------- bad input


def test_weights_and_splits_that_cannot_be_probed_stop_before_any_work(probe_data, tmp_path):
    out = tmp_path / "never"
    state = torch.load(probe_data / "model.pt", weights_only=True)["model"]
    torch.save(
        {"model": {k: v for k, v in state.items() if not k.startswith("backbone.blocks.1.")}}, tmp_path / "partial.pt"
    )
    classes = json.loads((probe_data / "train" / "manifest.json").read_text())["classes"]
    unlabelled = relabelled_copy(probe_data / "val", tmp_path / "unlabelled", [])
    reordered = relabelled_copy(probe_data / "val", tmp_path / "reordered", classes[::-1])
    cases = [
        ([f"model.init={tmp_path / 'partial.pt'}"], ["model.init", "partial.pt", "backbone.blocks.1.attn.qkv.weight"]),
        ([f"data.val={unlabelled}"], ["data.val=", str(unlabelled / "manifest.json"), "no classes"]),
        (
            [f"data.probe_val={reordered}"],
            [
                "data.probe_val=",
                str(reordered / "manifest.json"),
                str(probe_data / "train" / "manifest.json"),
                repr(classes[-1]),
            ],
        ),
        # problems of the recipe alone are reported together
        (
            [f"data.probe_train={tmp_path / 'absent'}", "data.val=null", "model.init=null"],
            [
                f"data.probe_train={str(tmp_path / 'absent')!r}",
                "data.probe_val (or data.val) is not set",
                "model.init is not set",
            ],
        ),
    ]
    for overrides, phrases in cases:
        assert_stops_before_any_work(probe_cmd(probe_data, out, *overrides), phrases, out)
