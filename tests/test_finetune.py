"""Fine-tuning and multi-view testing end to end on real demo shards (H.264 made by tools/make_shards.py): labels
through the loader, validation with the best checkpoint kept, kill -9 + resume, tools/test.py on 1 and 2 processes,
and the recipe errors that must stop a run before any work."""

from __future__ import annotations

import json
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
    script_command,
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


# ------------------------------------------------------------------------------------------- using a trained model


def video_files(split: Path, folder: Path) -> dict[str, Path]:
    """Every video of a split's shards as a file of its own, named by its key."""
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for shard in sorted(split.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".mp4"):
                    key = member.name.rsplit("/", 1)[-1].removesuffix(".mp4")
                    files[key] = folder / f"{key}.mp4"
                    files[key].write_bytes(tar.extractfile(member).read())
    return files


def predict_command(checkpoint: Path, *args: str) -> list[str]:
    return [sys.executable, "tools/predict.py", str(checkpoint), *args]


@pytest.mark.slow
def test_predict_on_files_of_a_val_shard_gives_the_probabilities_of_tools_test(demo_splits, finetuned, tmp_path):
    """The same clips, crops and view averaging as tools/test.py, from the checkpoint alone (no recipe): each file's
    top classes and probabilities are its predictions.jsonl row's, to 1e-6. A file in the folder that is not a
    video is skipped and counted."""
    run_to_success(tools_test_command(demo_splits / "ft.yaml", finetuned / "model.pt", tmp_path / "tested"))
    _, rows = evaluation_outputs(tmp_path / "tested" / "test")
    files = video_files(demo_splits / "val", tmp_path / "videos")
    (tmp_path / "videos" / "notes.mp4").write_text("not a video")
    out = tmp_path / "predictions.jsonl"
    proc = run_to_success(predict_command(finetuned / "model.pt", str(tmp_path / "videos"), "--out", str(out)))
    assert "16 file(s) predicted, 1 skipped" in proc.stderr and "notes.mp4" in proc.stderr
    predicted = {Path(row["file"]).stem: row for row in map(json.loads, out.read_text().splitlines())}
    assert set(predicted) == set(files) == {row["key"] for row in rows}
    for row in rows:
        ours = predicted[row["key"]]
        assert ours["num_views"] == 2
        assert [c for c, _, _ in ours["top5"]] == [c for c, _, _ in row["top5"]]
        assert [name for _, name, _ in ours["top5"]] == [name for _, name, _ in row["top5"]]
        np.testing.assert_allclose([p for _, _, p in ours["top5"]], [p for _, _, p in row["top5"]], rtol=0, atol=1e-6)
    first = rows[0]["top5"][0]
    assert f"1. {first[1]}" in proc.stdout  # the table names the classes


def test_model_pt_describes_itself_and_loads_in_two_lines(demo_splits, finetuned):
    import mfvideo

    saved = torch.load(finetuned / "model.pt", map_location="cpu", weights_only=True)
    record = saved["meta"]
    assert (record["task"], record["arch"], record["num_classes"]) == ("classify", "mvit_tiny", 4)
    assert (record["num_frames"], record["sampling_rate"], record["crop_size"]) == (4, 4, 64)
    assert record["class_names"] == json.loads((demo_splits / "train" / "manifest.json").read_text())["classes"]
    assert record["step"] == 12 and len(record["mean"]) == len(record["std"]) == 3
    assert record["mfvideo_version"] and record["commit"] and "model:" in record["recipe"]
    assert torch.load(finetuned / "model_best.pt", weights_only=True)["meta"]["step"] in (6, 12)

    model = mfvideo.load(finetuned / "model.pt")
    video = next(iter(video_files(demo_splits / "val", demo_splits / "videos").values()))
    prediction = model.predict(video)
    assert len(prediction.top) == 4 and {name for _, name, _ in prediction.top} == set(record["class_names"])
    assert sum(p for _, _, p in prediction.top) == pytest.approx(1.0, abs=1e-5)
    width = model.model.backbone.dim_out
    assert model.features(video).shape == (width,) and model.features(video, per_view=True).shape == (2, width)


def test_checkpoints_without_a_record_load_with_a_notice_or_stop_naming_the_file(demo_splits, finetuned, tmp_path):
    """A model.pt written before records existed (weights and the recipe only) still loads and predicts the same;
    weights with neither record nor recipe exit 2, as do a file that is not a video and --render on a classifier,
    with nothing written."""
    saved = torch.load(finetuned / "model.pt", weights_only=True)
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": saved["model"], "recipe": saved["meta"]["recipe"]}, legacy)
    video = next(iter(video_files(demo_splits / "val", tmp_path / "videos").values()))
    new, old = (run_to_success(predict_command(path, str(video))) for path in (finetuned / "model.pt", legacy))
    assert "has no metadata record" in old.stderr and "has no metadata record" not in new.stderr
    assert old.stdout == new.stdout

    out = tmp_path / "out.jsonl"
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 1000)
    for command, phrases in [
        (predict_command(demo_splits / "pretrained.pt", str(video)), ["pretrained.pt", "no metadata record"]),
        (predict_command(finetuned / "model.pt", str(tmp_path / "clip.mp4")), ["clip.mp4", "not a video"]),
        (
            predict_command(finetuned / "model.pt", str(video), "--render", str(tmp_path / "r.mp4")),
            ["--render needs a detection model"],
        ),
    ]:
        proc = run_command([*command, "--out", str(out)])
        assert proc.returncode == 2, proc.stderr
        assert all(phrase in proc.stderr for phrase in phrases), proc.stderr
        assert "Traceback" not in proc.stderr and not out.exists() and not (tmp_path / "r.mp4").exists()


def test_a_maskfeat_checkpoint_gives_features_and_says_it_cannot_predict(demo_splits, tmp_path):
    import mfvideo

    model = mfvideo.load(
        demo_splits / "pretrained.pt",
        recipe=REPO / "recipes" / "demo_pt.yaml",
        overrides=[f"data.train={demo_splits / 'train'}", "data.num_frames=4"],
    )
    assert model.record["imported"] and model.record["task"] == "pretrain"
    video = next(iter(video_files(demo_splits / "val", tmp_path / "videos").values()))
    assert model.features(video).shape == (model.model.backbone.dim_out,)
    with pytest.raises(ValueError, match="pretraining checkpoint: it predicts HOG, not classes"):
        model.predict(video)


@pytest.mark.slow
def test_extract_writes_the_same_features_on_one_and_two_processes(demo_splits, finetuned, tmp_path):
    outputs = []
    for nproc, extra in ((1, []), (2, []), (1, ["--per-view"])):
        out = tmp_path / f"p{nproc}{''.join(extra)}"
        command = script_command(
            "tools/extract.py",
            str(finetuned / "model.pt"),
            str(demo_splits / "val"),
            "--out",
            str(out),
            *extra,
            nproc=nproc,
        )
        run_to_success(command)
        assert sorted(p.name for p in out.iterdir()) == ["features.npy", "index.jsonl"]
        outputs.append((np.load(out / "features.npy"), (out / "index.jsonl").read_text()))
    (one, index_one), (two, index_two), (per_view, index_views) = outputs
    assert one.shape[0] == 16 and per_view.shape == (16, 2, one.shape[1]) and one.dtype == np.float32
    np.testing.assert_allclose(one, two, rtol=0, atol=1e-5)  # batches differ: float order may, slightly
    np.testing.assert_allclose(per_view.mean(axis=1), one, rtol=0, atol=1e-6)
    assert index_one == index_two == index_views
    rows = [json.loads(line) for line in index_one.splitlines()]
    labels = shard_labels(str(demo_splits / "val"))
    assert len(rows) == 16 and {row["key"] for row in rows} == set(labels)
    assert all(row["label"] == labels[row["key"]] and row["shard"].endswith(".tar") for row in rows)


def test_extract_refuses_a_decoder_that_cannot_run_here_before_any_work(demo_splits, finetuned, tmp_path):
    from mfvideo.app.extract import extract_features

    with pytest.raises(ValueError, match="data.decode_device='cuda' needs data.decoder='torchcodec'"):
        extract_features(
            finetuned / "model.pt",
            str(demo_splits / "val"),
            tmp_path / "out",
            overrides=["data.decoder=pyav", "data.decode_device=cuda"],
        )
    assert not (tmp_path / "out").exists()


def test_a_video_shorter_than_a_clip_is_sampled_as_the_test_samples_it_and_said(finetuned, tmp_path):
    from mfvideo.shards.encode import encode_rgb_frames

    data, _ = encode_rgb_frames([np.full((64, 64, 3), 40 * i, np.uint8) for i in range(3)], 30)
    (tmp_path / "short.mp4").write_bytes(data)
    proc = run_to_success(predict_command(finetuned / "model.pt", str(tmp_path / "short.mp4")))
    assert "3 frames, fewer than a clip's 16: sampled as tools/test.py samples short videos" in proc.stdout
    assert proc.stdout.count("%") == 4  # the top 4 classes of the 4, with their probabilities
