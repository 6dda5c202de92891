"""The online k-NN probe of MaskFeat pretraining (mfvideo.evaluation.probe, `train.probe_every`): the weighted vote
on constructed features with known answers, the models' pooled features, embedding real demo shards, and
tools/train.py end to end: the probe changes no loss, its history survives a kill -9, and probe settings that
cannot work stop the run with exit code 2 before any work."""

from __future__ import annotations

import json
import math
import signal
import textwrap
from pathlib import Path

import pytest
import torch

from launch_helpers import REPO, signal_after_step
from loader_helpers import build_test_loader
from mfvideo.config import load_recipe
from mfvideo.engine import checkpoint
from mfvideo.evaluation import probe
from mfvideo.evaluation.probe import embed_split, knn_scores, topk_accuracy
from mfvideo.models.classifier import MViTClassifier
from mfvideo.tasks import build_model
from training_helpers import (
    assert_stops_before_any_work,
    linked_shards,
    losses_by_step,
    make_demo_shards,
    relabelled_copy,
    run_to_success,
    shard_labels,
    train_command,
    train_to_end,
)

# ------------------------------------------------------------------------------------------- the weighted k-NN vote


def test_a_hand_computed_vote_gives_its_exact_scores():
    """Cosine similarities of the (unnormalised) queries to [1,0], [0,1], [1,1]: 1, 0, 1/√2 and 0, −1, −1/√2; each
    of the k nearest adds exp(similarity / 0.5) to its class; k = 5 > 3 train videos takes all three."""
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    queries = torch.tensor([[2.0, 0.0], [0.0, -3.0]])
    root2 = math.sqrt(2)
    expected_k2 = torch.tensor([[math.exp(2), math.exp(root2), 0.0], [math.exp(0), math.exp(-root2), 0.0]])
    torch.testing.assert_close(knn_scores(train, labels, queries, 3, k=2, temperature=0.5), expected_k2)
    expected_all = torch.tensor(
        [[math.exp(2), math.exp(root2) + math.exp(0), 0.0], [math.exp(0), math.exp(-root2) + math.exp(-2), 0.0]]
    )
    torch.testing.assert_close(knn_scores(train, labels, queries, 3, k=5, temperature=0.5), expected_all)


def _clusters(centres: torch.Tensor, per_class: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(len(centres)).repeat_interleave(per_class)
    generator = torch.Generator().manual_seed(seed)
    return centres[labels] + noise * torch.randn(len(labels), centres.shape[1], generator=generator), labels


def test_well_separated_clusters_are_all_found():
    """Six classes along orthogonal directions (cosine 0 between classes, ≈ 1 within one), at any scale."""
    centres = 5.0 * torch.eye(16)[:6]
    train, train_labels = _clusters(centres, 10, 0.3, seed=0)
    queries, query_labels = _clusters(centres, 7, 0.3, seed=1)
    scores = knn_scores(train, train_labels, 0.01 * queries, 6)
    assert scores.shape == (42, 6)
    assert topk_accuracy(scores, query_labels) == {"top1": 100.0, "top5": 100.0}


def test_queries_placed_on_another_class_are_the_known_share_of_misses():
    """Three classes, 4 train videos exactly on each of three orthogonal directions, k = 4: a query on direction c
    gets 4·exp(1/T) for class c and nothing else. 7 queries sit on their own class, 3 on another: top-1 is 70 %.
    Top-2 also counts the best of the two classes at 0 (the lower index): queries labelled 0 always hit it, the one
    labelled 1 on direction 2 misses (order 2, 0, 1): 90 %."""
    directions = torch.eye(3)
    train = directions.repeat_interleave(4, dim=0)
    train_labels = torch.arange(3).repeat_interleave(4)
    on = [0, 1, 2, 0, 1, 2, 2, 1, 2, 2]  # the direction each query sits on
    labels = [0, 1, 2, 0, 1, 2, 2, 0, 0, 1]  # the last three are labelled with another class
    scores = knn_scores(train, train_labels, directions[on], 3, k=4, temperature=0.1)
    assert topk_accuracy(scores, torch.tensor(labels), ks=(1, 2, 5)) == pytest.approx(
        {"top1": 70.0, "top2": 90.0, "top5": 100.0}
    )


def test_standardised_features_find_clusters_that_the_raw_cosine_misses():
    """Pooled features of a small pretrained MaskFeat backbone: a large constant vector, channels that vary a lot
    between clips for no class reason, and the class in channels of small scale. The raw cosine ranks neighbours by
    the loud channels; standardised with the train split's statistics, every channel counts alike."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(40)
    signal = 0.01 * torch.randn(4, 4, generator=generator)[labels] + 0.002 * torch.randn(160, 4, generator=generator)
    loud = torch.randn(160, 2, generator=generator)
    features = 100 + torch.cat([signal, loud], dim=1)
    train, query, train_labels, query_labels = features[:120], features[120:], labels[:120], labels[120:]
    raw = topk_accuracy(knn_scores(train, train_labels, query, 4), query_labels)["top1"]
    train_std, query_std = probe.standardised(train, query)
    standardised = topk_accuracy(knn_scores(train_std, train_labels, query_std, 4), query_labels)["top1"]
    assert standardised >= 90.0 and raw <= 50.0, (standardised, raw)
    torch.testing.assert_close(train_std.mean(dim=0), torch.zeros(6), atol=1e-2, rtol=0)  # float32 at 100
    torch.testing.assert_close(train_std.std(dim=0), torch.ones(6), atol=1e-3, rtol=0)


def test_queries_scored_in_chunks_get_the_scores_of_one_pass(monkeypatch):
    train, train_labels = _clusters(torch.randn(5, 8, generator=torch.Generator().manual_seed(2)), 6, 1.0, seed=3)
    queries, _ = _clusters(torch.randn(5, 8, generator=torch.Generator().manual_seed(4)), 3, 1.0, seed=5)
    whole = knn_scores(train, train_labels, queries, 5, k=7)
    monkeypatch.setattr(probe, "QUERY_CHUNK_ELEMENTS", 2 * len(train))  # 2 queries a chunk, the last one alone
    torch.testing.assert_close(knn_scores(train, train_labels, queries, 5, k=7), whole)


def test_topk_accuracy_counts_every_class_for_a_k_above_them_and_ranks_ties_by_class_index():
    scores = torch.tensor([[0.5, 0.5], [0.2, 0.1], [0.0, 1.0]])
    assert topk_accuracy(scores, torch.tensor([1, 1, 0])) == {"top1": 0.0, "top5": 100.0}
    assert topk_accuracy(scores, torch.tensor([0, 0, 1]))["top1"] == 100.0


# ------------------------------------------------------------------------------------------------- model features


def test_features_are_the_mean_token_the_fine_tuning_head_reads():
    """MaskFeat's features are the pooled input of the classifier built on the same backbone: the fine-tuning
    head applied to them gives the classifier's logits."""
    recipe = load_recipe(REPO / "recipes" / "demo_pt.yaml", ["data.num_frames=4", "model.drop_path=0.5"])
    torch.manual_seed(0)
    maskfeat = build_model(recipe.model, 4, 32).eval()
    classifier = MViTClassifier(maskfeat.backbone.cfg, (4, 32, 32), num_classes=4).eval()
    classifier.backbone.load_state_dict(maskfeat.backbone.state_dict())
    video = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = maskfeat.features(video)
        tokens, _ = maskfeat.backbone(video)
        logits = classifier({"video": video})["logits"]
        head = classifier.head
        torch.testing.assert_close(head.proj(head.norm(features)), logits)
        torch.testing.assert_close(classifier.features(video), features)
    assert features.shape == (2, maskfeat.backbone.dim_out)
    torch.testing.assert_close(features, tokens[:, 1:].mean(dim=1))


# ------------------------------------------------------------------------------------------- real demo shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Labelled demo splits made by tools/make_shards.py: train (24 videos, 4 classes, 3 shards), val (16 videos,
    2 shards) and `three` (8 videos of 3 classes: another class list)."""
    root = tmp_path_factory.mktemp("probe_shards")
    for split, videos, classes, seed in (("train", 24, 4, 0), ("val", 16, 4, 1), ("three", 8, 3, 2)):
        make_demo_shards(root / split, videos, 8, "--motions", str(classes), seed=seed)
    return root


def test_embed_split_averages_each_videos_views_once_in_eval_mode(shards):
    """Every video once, in pattern order, with its key and label from the shards and the mean of its two views'
    features. Rank 1 of 2 holds 1 of the 3 shards of 8 and repeats its videos to match rank 0's 16: the repeats
    count once. Drop path 0.5 would make the features random in training mode."""
    recipe = load_recipe(
        REPO / "recipes" / "demo_pt.yaml",
        [
            f"data.train={shards / 'train'}",
            "data.num_frames=4",
            "data.crop_size=32",
            "data.test_short_side=32",
            "data.num_workers=1",
            "model.drop_path=0.5",
        ],
    )
    torch.manual_seed(0)
    model = build_model(recipe.model, 4, 32)

    def loader(rank: int, world_size: int):
        return build_test_loader(
            recipe.data, 3, rank, world_size, str(shards / "train"), num_clips=2, num_crops=1, fields=("label", "view")
        )

    split = embed_split(model, loader(0, 1))
    assert model.training
    truth = list(shard_labels(str(shards / "train")).items())
    assert list(zip(split.keys, split.labels.tolist())) == truth
    assert split.features.dtype == torch.float32 and split.features.shape == (24, model.backbone.dim_out)

    model.eval()
    views: dict[tuple[int, int], torch.Tensor] = {}
    with torch.no_grad():
        for batch in loader(0, 1):
            for index, view, feature in zip(
                batch["video_index"].tolist(), batch["view"].tolist(), model.features(batch["video"])
            ):
                views[index, view] = feature
    torch.testing.assert_close(split.features, torch.stack([(views[i, 0] + views[i, 1]) / 2 for i in range(24)]))

    model.train()
    arrivals = sum(len(batch["key"]) for batch in loader(1, 2))
    part = embed_split(model, loader(1, 2))
    assert arrivals == 2 * 16 and len(part.keys) == 8  # 8 videos × 2 views, then 8 repeated
    rows = [split.keys.index(key) for key in part.keys]
    assert rows == sorted(rows) and part.labels.tolist() == split.labels[rows].tolist()
    torch.testing.assert_close(part.features, split.features[rows])


# ------------------------------------------------------------------------------ tools/train.py, real processes


@pytest.fixture(scope="module")
def probe_recipe(shards) -> Path:
    """Pretraining of 3 epochs × 3 steps on the train split, probed every epoch (train → val); drop path 0.1 makes
    the losses depend on the torch random stream, and on the training mode, which the probe must both leave."""
    recipe = shards / "pt.yaml"
    recipe.write_text(
        textwrap.dedent(f"""
        base: {REPO / "recipes" / "demo_pt.yaml"}
        data: {{train: "{shards / "train"}", probe_train: "{shards / "train"}", probe_val: "{shards / "val"}",
                num_frames: 4, crop_size: 64, test_short_side: 64, num_workers: 1, shuffle_buffer: 16}}
        model: {{drop_path: 0.1}}
        optim: {{epochs: 3, warmup_epochs: 0.5}}
        train: {{global_batch_size: 8, micro_batch_size: 4, checkpoint_every: 1000, log_every: 1, keep_last: 1,
                 probe_every: 1}}
    """)
    )
    return recipe


def _probe_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "probe_top1" in line]


def _saved_progress(out: Path) -> dict:
    tag = checkpoint.latest_tag(out / "checkpoints")
    return torch.load(out / "checkpoints" / tag / "mp_rank_00_model_states.pt", weights_only=False)["progress"]


@pytest.fixture(scope="module")
def probed(probe_recipe, tmp_path_factory) -> Path:
    return train_to_end(probe_recipe, tmp_path_factory.mktemp("probed") / "run")


@pytest.mark.slow
def test_the_probe_runs_at_start_every_epoch_and_changes_no_loss(probe_recipe, probed, tmp_path):
    unprobed = train_to_end(probe_recipe, tmp_path / "run", "train.probe_every=0")
    assert not _probe_lines(unprobed)
    losses = losses_by_step(probed)
    assert list(losses) == list(range(1, 10))
    assert losses == losses_by_step(unprobed)  # bit for bit

    lines = _probe_lines(probed)
    assert [(line["step"], line["epoch"]) for line in lines] == [(0, 0), (3, 1), (6, 2), (9, 3)]
    for line in lines:
        assert 0 <= line["probe_top1"] <= 100 and line["probe_top5"] == 100.0  # 4 classes
        assert (line["probe_num_train"], line["probe_num_val"]) == (24, 16)
    history = _saved_progress(probed)["probe_history"]
    assert history == [{key.removeprefix("probe_"): value for key, value in line.items()} for line in lines]
    events = b"".join(p.read_bytes() for p in (probed / "tensorboard").glob("events.out.tfevents.*"))
    assert b"probe/top1" in events


@pytest.mark.slow
def test_a_probed_run_killed_then_resumed_keeps_its_probe_history(probe_recipe, probed, tmp_path):
    out = tmp_path / "run"
    job = signal_after_step(train_command(probe_recipe, out), out, 4, signal.SIGKILL)  # past the step-3 checkpoint
    job.communicate()
    killed_at = max(losses_by_step(out))
    assert 4 <= killed_at < 9
    before = _probe_lines(out)
    saved = _saved_progress(out)
    assert [entry["step"] for entry in saved["probe_history"]][:2] == [0, 3]

    resumed = run_to_success(train_command(probe_recipe, out))
    assert f"resumed from {out / 'checkpoints' / checkpoint.tag_for(saved['step'])}" in resumed.stderr
    assert "k-NN probe at step 0," not in resumed.stderr and "k-NN probe at step 3," not in resumed.stderr
    assert _saved_progress(out)["probe_history"] == _saved_progress(probed)["probe_history"]
    lines = _probe_lines(out)
    assert lines[: len(before)] == before and [line["step"] for line in lines].count(0) == 1
    assert {line["step"] for line in lines} == {0, 3, 6, 9}
    assert losses_by_step(out) == pytest.approx(losses_by_step(probed), rel=1e-6, abs=0)


# ----------------------------------------------------------------------------------------------------- bad input


def test_probe_settings_that_cannot_work_exit_2_naming_key_and_file(shards, tmp_path, capsys):
    from mfvideo.app.run import run_training

    no_manifest = linked_shards(shards / "val", tmp_path / "no_manifest")
    unlabelled = relabelled_copy(shards / "val", tmp_path / "unlabelled", [])
    leaf = tmp_path / "leaf.yaml"
    leaf.write_text(
        f"base: {REPO / 'recipes' / 'demo_pt.yaml'}\n"
        f"data: {{train: '{shards / 'train'}', probe_train: null, probe_val: null}}\n"
    )
    out = tmp_path / "out"
    train, val = f"data.probe_train={shards / 'train'}", f"data.probe_val={shards / 'val'}"
    cases = [
        (["train.probe_every=1", train], ["train.probe_every=1 but data.probe_val is not set"]),
        (["train.probe_every=2"], ["data.probe_train is not set", "data.probe_val is not set"]),
        (
            ["train.probe_every=1", train, f"data.probe_val={no_manifest}"],
            [f"data.probe_val='{no_manifest}'", f"cannot read shard manifest '{no_manifest / 'manifest.json'}'"],
        ),
        (
            ["train.probe_every=1", f"data.probe_train={unlabelled}", val],
            [f"data.probe_train='{unlabelled}': its manifest lists no classes"],
        ),
        (
            ["train.probe_every=1", train, f"data.probe_val={shards / 'three'}"],
            [
                f"data.probe_train='{shards / 'train'}' lists 4 classes",
                f"data.probe_val='{shards / 'three'}' lists 3",
                "same class list",
            ],
        ),
        (["train.probe_every=-1"], ["'train.probe_every'"]),
        (["train.probe_k=0"], ["'train.probe_k'"]),
        (["train.probe_temperature=0"], ["'train.probe_temperature'"]),
    ]
    for overrides, phrases in cases:
        with pytest.raises(SystemExit) as stop:
            run_training(str(leaf), [*overrides, f"train.output_dir={out}"])
        message = capsys.readouterr().err
        assert stop.value.code == 2, (overrides, message)
        for phrase in [*phrases, str(leaf)]:
            assert phrase in message, (phrase, message)
        assert not out.exists()

    cmd = train_command(leaf, out, "train.probe_every=1", train, f"data.probe_val={shards / 'three'}")
    assert_stops_before_any_work(cmd, ["lists 3 classes", str(leaf)], out)


def test_fine_tuning_refuses_the_pretraining_probe(shards, tmp_path, capsys):
    from mfvideo.app.run import run_training

    with pytest.raises(SystemExit) as stop:
        run_training(
            str(REPO / "recipes" / "demo_ft.yaml"),
            [
                f"data.train={shards / 'train'}",
                "model.init=null",
                "model.num_classes=4",
                "train.probe_every=1",
                f"data.probe_train={shards / 'train'}",
                f"data.probe_val={shards / 'val'}",
                f"train.output_dir={tmp_path / 'out'}",
            ],
        )
    assert stop.value.code == 2
    assert "train.probe_every=1: the k-NN probe monitors pretraining" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
