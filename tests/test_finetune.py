"""Fine-tuning and multi-view testing end to end on real demo shards (H.264 made by tools/make_shards.py): labels
through the loader, validation with the best checkpoint kept, kill -9 + resume, tools/test.py on 1 and 2 processes,
and the recipe errors that must stop a run before any work."""

from __future__ import annotations

import signal
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from launch_helpers import REPO, run_command, signal_after_step
from mfvideo.config import load_recipe
from mfvideo.data.transforms import random_resized_crop_box, resize_box
from mfvideo.engine.monitor import read_metrics
from mfvideo.tasks import train_loader
from stream_helpers import demo_shards
from training_helpers import (
    assert_stops_before_any_work,
    evaluation_outputs,
    make_demo_shards,
    relabelled_copy,
    run_to_success,
    save_fresh_weights,
    shard_labels,
    tools_test_command,
    train_command,
    train_to_end,
)

# --------------------------------------------------------------------------------------------- in-process checks


def _classify_recipe(pattern: str, *overrides: str):
    return load_recipe(
        REPO / "recipes" / "demo_ft.yaml",
        [
            f"data.train={pattern}",
            f"data.val={pattern}",
            "data.num_frames=4",
            "data.num_workers=0",
            "data.shuffle_buffer=8",
            "model.init=null",
            "model.num_classes=4",
            *overrides,
        ],
    )


def test_every_label_in_a_batch_is_its_samples_shard_label():
    pattern = demo_shards()
    recipe = _classify_recipe(pattern, "data.repeated_sampling=2")
    truth = shard_labels(pattern)
    assert len(set(truth.values())) == 4
    seen = 0
    for batch in train_loader(recipe, 4, 0, 1):
        assert batch["label"].tolist() == [truth[key] for key in batch["key"]]
        torch.testing.assert_close(batch["target"].sum(dim=1), torch.ones(len(batch["key"])))
        seen += len(batch["key"])
    assert seen == 2 * 53 // 4 * 4  # every video twice (repeated augmentation), the last partial batch dropped


def _transform_of(recipe_name: str):
    recipe = load_recipe(
        REPO / "recipes" / recipe_name,
        [f"data.train={demo_shards()}", "data.num_workers=0", "data.crop_size=32", "augment.rand_augment=''"],
    )
    return recipe, train_loader(recipe, 2, 0, 1).stream.clip_maker.transform


@pytest.mark.parametrize("recipe_name, flips", [("ssv2_mvit_s_ft.yaml", False), ("k400_mvit_s_ft.yaml", True)])
def test_only_direction_free_recipes_flip(recipe_name, flips):
    """An SSv2 label says "left to right": a flipped clip would carry the wrong label, so its recipe never flips."""
    recipe, transform = _transform_of(recipe_name)
    assert recipe.data.flip is flips
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 48, 64, 3), dtype=np.uint8))
    flipped = 0
    for seed in range(64):
        clip = transform(frames, np.random.default_rng(seed))
        box = random_resized_crop_box(
            48, 64, recipe.data.train_crop_area, recipe.data.train_crop_aspect, np.random.default_rng(seed)
        )
        unflipped = resize_box(frames, box, 32)
        if not torch.equal(clip, unflipped):
            assert torch.equal(clip, unflipped.flip(-1))
            flipped += 1
    assert (flipped > 16) if flips else flipped == 0


# ------------------------------------------------------------------------------------- end to end, real processes


@pytest.fixture(scope="module")
def demo_splits(tmp_path_factory) -> Path:
    """Demo train (48 videos, 3 shards) and val (16 videos, 2 shards) splits, and a MaskFeat checkpoint to start
    from (a freshly built tiny model's weights, in the layout `model.pt` has)."""
    root = tmp_path_factory.mktemp("ft")
    for split, videos, per_shard, seed in (("train", 48, 16, 0), ("val", 16, 8, 1)):
        make_demo_shards(root / split, videos, per_shard, seed=seed)
    pretrain = load_recipe(REPO / "recipes" / "demo_pt.yaml", [f"data.train={root / 'train'}"])
    save_fresh_weights(pretrain.model, 4, 64, root / "pretrained.pt", seed=0)
    recipe = root / "ft.yaml"
    recipe.write_text(
        textwrap.dedent(f"""
        base: {REPO / "recipes" / "demo_ft.yaml"}
        data: {{train: "{root / "train"}", val: "{root / "val"}", num_frames: 4, shuffle_buffer: 16, test_clips: 2}}
        # the Kinetics recipe's augmentation and regularisation, which the demo recipe turns off
        augment: {{rand_augment: rand-m7-n2-mstd0.5-inc1, erase_prob: 0.25, mixup_alpha: 0.8, cutmix_alpha: 1.0}}
        model: {{init: "{root / "pretrained.pt"}", num_classes: 4, drop_path: 0.1, dropout: 0.5}}
        optim: {{epochs: 2, warmup_epochs: 0.5}}
        train: {{global_batch_size: 8, micro_batch_size: 4, checkpoint_every: 2, log_every: 1, keep_last: 1,
                 eval_every: 1}}
    """)
    )
    return root


@pytest.fixture(scope="module")
def finetuned(demo_splits, tmp_path_factory) -> Path:
    return train_to_end(demo_splits / "ft.yaml", tmp_path_factory.mktemp("finetuned") / "run")


@pytest.mark.slow
def test_finetuning_validates_every_epoch_and_keeps_the_best_checkpoint(finetuned):
    records = read_metrics(finetuned)
    assert list(records) == list(range(1, 13))  # 48 videos / 8 clips per step × 2 epochs
    validated = {step: r for step, r in records.items() if "val_top1" in r}
    assert list(validated) == [6, 12]
    for record in validated.values():
        assert record["val_num_videos"] == 16 and 0 <= record["val_top1"] <= 100
        assert record["val_top5"] == 100.0  # 4 classes: the top 4 always hold the label
    best_step = max(validated, key=lambda s: (validated[s]["val_top1"], -s))
    best = (finetuned / "checkpoints" / "best").read_text()
    assert best == f"step_{best_step:08d}" and (finetuned / "checkpoints" / best).is_dir()
    assert (finetuned / "checkpoints" / "latest").read_text() == "step_00000012"
    assert (finetuned / "model.pt").is_file() and (finetuned / "model_best.pt").is_file()
    events = b"".join(p.read_bytes() for p in (finetuned / "tensorboard").glob("events.out.tfevents.*"))
    assert b"val/top1" in events and b"train/loss" in events


@pytest.mark.slow
def test_finetuning_killed_mid_epoch_resumes_with_identical_losses(demo_splits, finetuned, tmp_path):
    out = tmp_path / "run"
    command = train_command(demo_splits / "ft.yaml", out)
    job = signal_after_step(command, out, 3, signal.SIGKILL)  # past the step-2 checkpoint
    job.communicate()
    assert max(read_metrics(out)) < 6

    resumed = run_to_success(command)
    assert "resumed from" in resumed.stderr
    expected, got = read_metrics(finetuned), read_metrics(out)
    assert {s: r["loss"] for s, r in got.items()} == pytest.approx(
        {s: r["loss"] for s, r in expected.items()}, rel=1e-6, abs=0
    )
    assert {s: r.get("val_top1") for s, r in got.items()} == {s: r.get("val_top1") for s, r in expected.items()}


@pytest.mark.slow
def test_tools_test_gives_the_same_metrics_on_one_and_two_processes(demo_splits, finetuned, tmp_path):
    results = []
    for nproc in (1, 2):
        run_to_success(
            tools_test_command(demo_splits / "ft.yaml", finetuned / "model.pt", tmp_path / f"p{nproc}", nproc)
        )
        results.append(evaluation_outputs(tmp_path / f"p{nproc}" / "test"))
    (one, rows_one), (two, rows_two) = results
    assert one == two
    assert one["num_videos"] == 16 and one["num_views"] == 32 and "top1_views_1" in one
    val_keys = set(shard_labels(str(demo_splits / "val")))
    assert {row["key"] for row in rows_one} == val_keys and len(rows_one) == 16
    assert [[c for c, _, _ in row["top5"]] for row in rows_one] == [[c for c, _, _ in row["top5"]] for row in rows_two]
    correct = sum(row["top5"][0][0] == row["label"] for row in rows_one)
    assert one["top1"] == pytest.approx(100 * correct / 16)


# --------------------------------------------------------------------------------------------------- bad input


def test_values_a_task_cannot_use_stop_before_any_work(demo_splits, tmp_path):
    out, finetune = tmp_path / "never", demo_splits / "ft.yaml"

    def pretrain(*overrides: str) -> list[str]:
        return train_command(
            REPO / "recipes" / "demo_pt.yaml",
            out,
            f"data.train={demo_splits / 'train'}",
            "train.probe_every=0",
            *overrides,
        )

    cases = [
        (pretrain("augment.mixup_alpha=0.8"), ["augment.mixup_alpha=0.8", "pretraining"]),
        (pretrain("mask.mode=none"), ["mask.mode='none'"]),
        (train_command(finetune, out, "mask.mode=cube"), ["mask.mode='cube'", "fine-tuning"]),
        (train_command(finetune, out, "model.num_classes=5"), ["model.num_classes=5", "4 classes", "data.train"]),
        (train_command(finetune, out, "data.val=null"), ["train.eval_every=1", "data.val is not set"]),
        (train_command(finetune, out, f"model.init={tmp_path / 'missing.pt'}"), ["model.init", "missing.pt"]),
    ]
    unlabelled = relabelled_copy(demo_splits / "val", tmp_path / "unlabelled", [])
    cases.append((train_command(finetune, out, f"data.val={unlabelled}"), ["data.val=", "no classes"]))
    for cmd, phrases in cases:
        assert_stops_before_any_work(cmd, phrases, out)


def test_tools_test_refuses_weights_that_do_not_fit(demo_splits, tmp_path):
    proc = run_command(tools_test_command(demo_splits / "ft.yaml", demo_splits / "pretrained.pt", tmp_path / "out"))
    assert proc.returncode == 2
    assert "does not fit the model" in proc.stderr and "head.proj.weight" in proc.stderr
    proc = run_command([sys.executable, "tools/test.py", str(demo_splits / "ft.yaml"), "model.init=null"])
    assert proc.returncode == 2 and "model.init is not set" in proc.stderr
