"""Multi-view classification testing: aggregation against answers worked out by hand and against a direct
computation, de-duplication of repeated views, and 2 real processes giving exactly the metrics of one."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mfvideo.evaluation.classification import ViewAggregator, spread_temporal_views, write_results

# ----- a hand-built set: 5 videos × 3 temporal views × 1 crop × 7 classes ----------------------------------------
# Per video: label and the logits of views 0, 1, 2. Top-1 with one view uses the middle view (spread_temporal_views).
HAND_CLASSES = 7
HAND_VIDEOS = [
    # label 0, every view right: right everywhere.
    (0, [[5, 0, 0, 0, 0, 0, 0]] * 3),
    # label 1, the middle view alone says 2, the sum says 1: top-1 right, one-view top-1 wrong.
    (1, [[0, 4, 0, 0, 0, 0, 0], [0, 2, 3, 0, 0, 0, 0], [0, 4, 0, 0, 0, 0, 0]]),
    # label 2, the middle view alone right, the sum says 6 with 2 second: top-1 wrong, top-5 and one-view right.
    (2, [[0, 0, 1, 0, 0, 0, 3], [0, 0, 5, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 3]]),
    # label 0, the middle view alone right, the sum says 6 with 0 second: top-1 wrong, top-5 and one-view right.
    (0, [[0, 1, 2, 3, 4, 5, 6], [9, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6]]),
    # label 3, ranked last by every view: wrong everywhere, outside the top 5.
    (3, [[6, 5, 4, 0, 2, 1, 3]] * 3),
]
HAND_METRICS = {
    "num_videos": 5,
    "num_views": 15,
    "top1": 40.0,  # videos 0 and 1
    "top5": 80.0,  # all but video 4
    # per class: 0 → 1 of 2, 1 → 1 of 1, 2 → 0 of 1, 3 → 0 of 1; classes 4-6 have no video and do not count
    "mean_class_accuracy": 37.5,
    "top1_views_1": 60.0,  # videos 0, 2 and 3
    "top1_views_3": 40.0,  # all three views: the same as top1
}
HAND_TOP5 = [[0, 1, 2, 3, 4], [1, 2, 0, 3, 4], [6, 2, 0, 1, 3], [6, 0, 5, 4, 3], [0, 1, 2, 6, 4]]
CLASS_NAMES = [f"class_{c}" for c in range(HAND_CLASSES)]


def hand_records() -> list[tuple[int, int, int, str, list[float]]]:
    """(video_index, view, label, key, logits) per clip; video indices need not start at 0 or be contiguous."""
    return [
        (10 + 3 * number, view, label, f"video_{number}", [float(x) for x in logits[view]])
        for number, (label, logits) in enumerate(HAND_VIDEOS)
        for view in range(3)
    ]


def feed(aggregator: ViewAggregator, records, batch_size: int) -> None:
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        batch = {
            "video_index": torch.tensor([r[0] for r in chunk]),
            "view": torch.tensor([r[1] for r in chunk]),
            "label": torch.tensor([r[2] for r in chunk]),
            "key": [r[3] for r in chunk],
        }
        aggregator.update(batch, {"logits": torch.tensor([r[4] for r in chunk])})


def direct_mean_probabilities(logits_per_view) -> np.ndarray:
    logits = np.asarray(logits_per_view, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).mean(axis=0)


def test_hand_built_set_gives_the_worked_out_metrics_and_predictions():
    aggregator = ViewAggregator(HAND_CLASSES, 3, 1, CLASS_NAMES)
    feed(aggregator, hand_records(), batch_size=4)
    assert aggregator.compute() == pytest.approx(HAND_METRICS, abs=1e-9)
    rows = aggregator.predictions()
    assert [(row["key"], row["label"]) for row in rows] == [
        (f"video_{n}", label) for n, (label, _) in enumerate(HAND_VIDEOS)
    ]
    for row, top5, (_, logits) in zip(rows, HAND_TOP5, HAND_VIDEOS):
        assert [entry[0] for entry in row["top5"]] == top5
        assert [entry[1] for entry in row["top5"]] == [CLASS_NAMES[c] for c in top5]
        mean = direct_mean_probabilities(logits)
        assert [entry[2] for entry in row["top5"]] == pytest.approx([mean[c] for c in top5], rel=1e-6)


def test_results_do_not_depend_on_clip_order_or_batching():
    reference = ViewAggregator(HAND_CLASSES, 3, 1)
    feed(reference, hand_records(), batch_size=15)
    records = hand_records()
    random.Random(0).shuffle(records)
    shuffled = ViewAggregator(HAND_CLASSES, 3, 1)
    feed(shuffled, records, batch_size=2)
    assert shuffled.compute() == reference.compute()
    assert shuffled.predictions() == reference.predictions()


def test_repeated_views_are_counted_once():
    records = hand_records()
    garbage = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 50.0]  # would change every answer if it were counted
    # Repeats of a video still in progress (video 1's view 0 twice before its other views) and of finished videos
    # (all of video 0 again, then video 4's last view), as slots short of data repeat them.
    repeated = (
        records[3:4]
        + [records[3][:4] + (garbage,)]
        + records[:3]
        + records[4:]
        + [r[:4] + (garbage,) for r in records[:3]]
        + [records[-1][:4] + (garbage,)]
    )
    aggregator = ViewAggregator(HAND_CLASSES, 3, 1)
    feed(aggregator, repeated, batch_size=5)
    assert aggregator.compute() == pytest.approx(HAND_METRICS, abs=1e-9)
    assert [[entry[0] for entry in row["top5"]] for row in aggregator.predictions()] == HAND_TOP5


def test_spread_temporal_views_takes_the_view_under_the_centre_of_each_part():
    assert [spread_temporal_views(10, k) for k in (1, 3, 5, 7, 10)] == [
        [5],
        [1, 5, 8],
        [1, 3, 5, 7, 9],
        [0, 2, 3, 5, 6, 7, 9],
        list(range(10)),
    ]
    assert spread_temporal_views(3, 1) == [1]
    assert spread_temporal_views(1, 1) == [0]


def random_records(num_videos: int, num_temporal: int, num_crops: int, num_classes: int, seed: int):
    """Random logits for every view, views numbered temporal view × num_crops + crop as the test loader does."""
    generator = np.random.default_rng(seed)
    labels = generator.integers(num_classes, size=num_videos)
    logits = generator.normal(scale=2.0, size=(num_videos, num_temporal * num_crops, num_classes))
    records = [
        (video, view, int(labels[video]), f"clip{video:03d}", logits[video, view].tolist())
        for video in range(num_videos)
        for view in range(num_temporal * num_crops)
    ]
    return records, labels, logits


def test_view_count_metrics_equal_a_direct_computation_over_the_chosen_views_and_all_their_crops():
    temporal, crops, classes = 10, 3, 11
    records, labels, logits = random_records(40, temporal, crops, classes, seed=1)
    aggregator = ViewAggregator(classes, temporal, crops)
    feed(aggregator, records, batch_size=7)
    metrics = aggregator.compute()

    probabilities = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    expected = {}
    for k in (1, 3, 5, 7, 10):
        views = [t * crops + c for t in spread_temporal_views(temporal, k) for c in range(crops)]
        predicted = probabilities[:, views].sum(axis=1).argmax(axis=1)
        expected[f"top1_views_{k}"] = 100.0 * float(np.mean(predicted == labels))
    total = probabilities.sum(axis=1)
    expected["top1"] = 100.0 * float(np.mean(total.argmax(axis=1) == labels))
    top5 = np.argsort(-total, axis=1)[:, :5]
    expected["top5"] = 100.0 * float(np.mean([label in row for label, row in zip(labels, top5)]))
    present = sorted(set(labels.tolist()))
    expected["mean_class_accuracy"] = 100.0 * float(
        np.mean([np.mean(total[labels == c].argmax(axis=1) == c) for c in present])
    )
    assert {key: metrics[key] for key in expected} == pytest.approx(expected, abs=1e-9)
    assert (metrics["num_videos"], metrics["num_views"]) == (40, 40 * temporal * crops)
    # the view subsets really differ from the full sum on this set, so the comparison above says something
    assert len({metrics[f"top1_views_{k}"] for k in (1, 3, 5, 10)}) > 1


def test_view_counts_above_the_available_temporal_views_are_not_reported():
    records, _, _ = random_records(4, 5, 1, 6, seed=2)
    aggregator = ViewAggregator(6, 5, 1)
    feed(aggregator, records, batch_size=8)
    assert sorted(k for k in aggregator.compute() if k.startswith("top1_views_")) == [
        "top1_views_1",
        "top1_views_3",
        "top1_views_5",
    ]


def test_top5_with_fewer_than_five_classes_uses_every_class():
    records, _, _ = random_records(6, 2, 1, 3, seed=3)
    aggregator = ViewAggregator(3, 2, 1)
    feed(aggregator, records, batch_size=4)
    assert aggregator.compute()["top5"] == 100.0
    assert all(sorted(entry[0] for entry in row["top5"]) == [0, 1, 2] for row in aggregator.predictions())
    # without class names the name column repeats the index
    assert all(entry[0] == entry[1] for row in aggregator.predictions() for entry in row["top5"])


def test_a_video_missing_views_is_an_error_naming_it():
    records = [r for r in hand_records() if (r[3], r[1]) != ("video_2", 1)]
    aggregator = ViewAggregator(HAND_CLASSES, 3, 1)
    feed(aggregator, records, batch_size=4)
    with pytest.raises(ValueError, match=r"'video_2' \(video_index 16, views seen \[0, 2\]\)"):
        aggregator.compute()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("label", 1, r"video_index 10 arrived as 'video_0' \(label 0\) and as 'video_0' \(label 1\)"),
        ("label", HAND_CLASSES, r"'video_0' has label 7, outside 0..6"),
        ("view", 3, r"'video_0' has view 3, outside the 3 temporal × 1 crop views"),
    ],
)
def test_inconsistent_or_out_of_range_clips_are_errors_naming_the_video(field, value, message):
    records = hand_records()
    position = {"label": 2, "view": 1}[field]
    records[1] = records[1][:position] + (value,) + records[1][position + 1 :]
    with pytest.raises(ValueError, match=message):
        feed(ViewAggregator(HAND_CLASSES, 3, 1), records, batch_size=4)


def test_predictions_need_compute():
    aggregator = ViewAggregator(HAND_CLASSES, 3, 1)
    feed(aggregator, hand_records(), batch_size=4)
    with pytest.raises(RuntimeError, match="compute"):
        aggregator.predictions()


def test_write_results_writes_sorted_metrics_and_one_prediction_per_line(tmp_path):
    aggregator = ViewAggregator(HAND_CLASSES, 3, 1, CLASS_NAMES)
    feed(aggregator, hand_records(), batch_size=4)
    metrics = aggregator.compute()
    out = tmp_path / "test" / "results"
    write_results(out, metrics, aggregator.predictions())
    text = (out / "metrics.json").read_text()
    assert json.loads(text) == metrics
    assert text == json.dumps(metrics, sort_keys=True, indent=2) + "\n"
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == aggregator.predictions()
    assert sorted(path.name for path in out.iterdir()) == ["metrics.json", "predictions.jsonl"]


# ----- two real processes ---------------------------------------------------------------------------------------
DIST_SHAPE = dict(num_videos=30, num_temporal=5, num_crops=3, num_classes=9)


def _rank_records(rank: int, records) -> list:
    """This rank's clips: every view of a video on one rank (as the loader deals them), a few whole videos repeated
    as in a short slot, in a rank-specific order."""
    views = DIST_SHAPE["num_temporal"] * DIST_SHAPE["num_crops"]
    mine = [r for r in records if r[0] % 2 == rank]
    first_video = [r for r in mine if r[0] == mine[0][0]]
    assert len(first_video) == views
    ordered = mine + first_video
    random.Random(rank).shuffle(ordered)
    return ordered


def _distributed_worker(rank: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    try:
        records, _, _ = random_records(**DIST_SHAPE, seed=4)
        aggregator = ViewAggregator(DIST_SHAPE["num_classes"], DIST_SHAPE["num_temporal"], DIST_SHAPE["num_crops"])
        feed(aggregator, _rank_records(rank, records), batch_size=4 + rank)
        result = {"metrics": aggregator.compute(), "predictions": aggregator.predictions()}

        # Rank 1 also gets every view of video 0, which rank 0 has too: both ranks raise the same error.
        overlapping = ViewAggregator(DIST_SHAPE["num_classes"], DIST_SHAPE["num_temporal"], DIST_SHAPE["num_crops"])
        extra = [r for r in records if r[0] == 0] if rank == 1 else []
        feed(overlapping, _rank_records(rank, records) + extra, batch_size=6)
        try:
            overlapping.compute()
            result["error"] = None
        except ValueError as err:
            result["error"] = str(err)
        with open(f"{out_dir}/rank{rank}.json", "w") as handle:
            json.dump(result, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_exactly_the_metrics_of_one(tmp_path):
    records, _, _ = random_records(**DIST_SHAPE, seed=4)
    single = ViewAggregator(DIST_SHAPE["num_classes"], DIST_SHAPE["num_temporal"], DIST_SHAPE["num_crops"])
    feed(single, records, batch_size=8)
    expected = {"metrics": single.compute(), "predictions": single.predictions()}
    expected = json.loads(json.dumps(expected))  # the same float → JSON round trip as the workers' results
    assert expected["metrics"]["num_videos"] == DIST_SHAPE["num_videos"]

    mp.spawn(_distributed_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["metrics"] == expected["metrics"]
        assert result["predictions"] == expected["predictions"]
        assert result["error"] is not None and "'clip000' (video_index 0, ranks [0, 1])" in result["error"]
