"""`make_shards.py demo-ava`: a procedural dataset laid out like AVA v2.2, read back the way a user reads AVA.

The files are parsed with the AVA source and sharded with `make_shards.py ava`; the movies are decoded with PyAV
and compared with the CSV: boxes frame the actors' pixels, and the actions are what the actors visibly do.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import av
import numpy as np
import pytest
import webdataset as wds

from mfvideo.common.ava_files import GROUPS as GROUP_OF_LABEL_TYPE
from mfvideo.common.ava_files import read_label_map
from mfvideo.shards import AvaSource
from mfvideo.shards.cli import main as cli_main

# seed 9: a small set in which every action (and a walker with no one ahead) is checked at least twice
SPEC = {"num_movies": 8, "val_movies": 3, "seconds": 7, "width": 128, "height": 96, "fps": 30, "seed": 9}
KEYFRAMES = list(range(2, SPEC["seconds"] - 1))  # 2 .. seconds - 2
GROUPS = ("PERSON_MOVEMENT", "OBJECT_MANIPULATION", "PERSON_INTERACTION")
# The module promises background channels below 115 and an actor channel of at least 150 everywhere on an actor.
ACTOR_LEVEL = 132
STAND, WALK_LEFT, WALK_RIGHT, TURN_CW, TURN_CCW, GROW, SHRINK, WALK_TOWARD = range(1, 9)
SPLITS = ("train", "val")


def cli_args(out: Path, **changes) -> list[str]:
    args = ["demo-ava", "--out", str(out)]
    for name, value in {**SPEC, **changes}.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo_ava") / "ava"
    assert cli_main(cli_args(root)) == 0
    return root


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def ground_truth(root: Path, split: str) -> dict:
    """(video, second) -> {person: (box in pixels, set of actions)} from the split's CSV."""
    keyframes: dict = defaultdict(dict)
    scale = np.array([SPEC["width"], SPEC["height"]] * 2)
    for video, second, *box, action, person in rows(root / f"ava_{split}_v2.2.csv"):
        entry = keyframes[video, int(second)].setdefault(int(person), (np.array(box, float) * scale, set()))
        entry[1].add(int(action))
    return keyframes


def all_ground_truth(root: Path) -> dict:
    return {key: people for split in SPLITS for key, people in ground_truth(root, split).items()}


def decode(path: Path | bytes) -> np.ndarray:
    with av.open(str(path) if isinstance(path, Path) else io.BytesIO(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def assert_boxes_frame_the_actors(frame: np.ndarray, boxes: list[np.ndarray], where: str) -> None:
    """Most of each box is actor, the actor reaches every side of its box, and nothing outside the boxes is."""
    actor = frame.max(axis=2) > ACTOR_LEVEL
    covered = np.zeros_like(actor)
    for box in boxes:
        x1, y1, x2, y2 = np.round(box).astype(int)
        inside = actor[y1:y2, x1:x2]
        assert inside.mean() > 0.4, (where, box, inside.mean())
        assert inside[:, :2].any() and inside[:, -2:].any() and inside[:2].any() and inside[-2:].any(), (where, box)
        covered[max(0, y1 - 2) : y2 + 2, max(0, x1 - 2) : x2 + 2] = True
    assert actor[~covered].mean() < 0.002, (where, actor[~covered].sum())


def test_files_are_laid_out_like_ava_v2_2(dataset):
    movies = sorted(p.stem for p in (dataset / "movies").iterdir())
    assert sorted(p.name for p in dataset.iterdir()) == sorted(
        [
            "movies",
            "ava_action_list_v2.2.pbtxt",
            "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
            "ava_included_timestamps_v2.2.txt",
        ]
        + [
            f"ava_{s}_{kind}"
            for s in SPLITS
            for kind in ("v2.2.csv", "excluded_timestamps_v2.2.csv", "predicted_boxes.csv")
        ]
    )
    # the full list as AVA writes it: label { name, label_id, label_type }, ids grouped pose < object < interaction
    full_text = (dataset / "ava_action_list_v2.2.pbtxt").read_text()
    blocks = re.findall(r'label \{\n  name: "([^"]+)"\n  label_id: (\d+)\n  label_type: (\w+)\n\}\n', full_text)
    assert len(blocks) == full_text.count("{") == 8  # every block has the three fields
    full = read_label_map(str(dataset / "ava_action_list_v2.2.pbtxt")).names
    assert full == {int(i): n for n, i, _ in blocks} and sorted(full) == list(range(1, 9))
    group_of = {int(i): t for _, i, t in blocks}
    assert [group_of[i] for i in sorted(full)] == sorted(group_of.values(), key=GROUPS.index)
    assert set(group_of.values()) == set(GROUPS)
    # the evaluated subset as the ActivityNet file's item { name, id } blocks, fewer actions, every group kept, each
    # action's group stated (the demo's ids do not follow AVA's group ranges)
    subset_text = (dataset / "ava_action_list_v2.2_for_activitynet_2019.pbtxt").read_text()
    assert subset_text.startswith('item {\n  name: "')
    subset_map = read_label_map(str(dataset / "ava_action_list_v2.2_for_activitynet_2019.pbtxt"))
    subset = subset_map.names
    assert subset.items() < full.items() and {group_of[i] for i in subset} == set(GROUPS)
    assert {i: GROUP_OF_LABEL_TYPE[group_of[i]] for i in subset} == subset_map.groups
    assert (dataset / "ava_included_timestamps_v2.2.txt").read_text().split() == [f"{k:04d}" for k in KEYFRAMES]

    videos = {}
    for split in SPLITS:
        table = rows(dataset / f"ava_{split}_v2.2.csv")
        assert all(len(row) == 8 and re.fullmatch(r"\d{4}", row[1]) and int(row[1]) in KEYFRAMES for row in table)
        assert all(re.fullmatch(r"[01]\.\d{3}", value) for row in table for value in row[2:6])
        videos[split] = {row[0] for row in table}
        used = {int(row[6]) for row in table}
        assert used - set(subset), "the subset must leave out actions that occur (80 -> 60 style)"
        assert used <= set(full)
        for (video, second), people in ground_truth(dataset, split).items():
            for person, (_, actions) in people.items():
                assert len(actions & {STAND, WALK_LEFT, WALK_RIGHT}) == 1, (video, second, person)
    assert videos["train"].isdisjoint(videos["val"]) and sorted(videos["train"] | videos["val"]) == movies
    assert (len(videos["train"]), len(videos["val"])) == (5, 3)
    with av.open(str(dataset / "movies" / f"{movies[0]}.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height, stream.average_rate) == ("h264", 128, 96, 30)
    assert len(decode(dataset / "movies" / f"{movies[0]}.mp4")) == SPEC["seconds"] * SPEC["fps"]


def test_the_ava_source_lists_every_annotated_keyframe(dataset):
    for split in SPLITS:
        source = AvaSource(
            action_list=str(dataset / "ava_action_list_v2.2.pbtxt"),
            movies=str(dataset / "movies"),
            annotations=str(dataset / f"ava_{split}_v2.2.csv"),
            excluded=str(dataset / f"ava_{split}_excluded_timestamps_v2.2.csv"),
            detections=str(dataset / f"ava_{split}_predicted_boxes.csv"),
        )
        listing = source.list_items()
        truth = ground_truth(dataset, split)
        assert [(i.extra["video_id"], i.extra["timestamp"]) for i in listing.items] == sorted(truth)
        assert listing.classes[WALK_TOWARD - 1] == "walk toward (another actor)"
        evaluated = AvaSource(
            action_list=str(dataset / "ava_action_list_v2.2_for_activitynet_2019.pbtxt"),
            movies=str(dataset / "movies"),
            annotations=str(dataset / f"ava_{split}_v2.2.csv"),
        )
        kept = {a for item in evaluated.list_items().items for labels in item.extra["labels"] for a in labels}
        assert kept and not kept & {TURN_CCW, SHRINK}


def test_make_shards_ava_writes_samples_carrying_the_boxes(dataset, tmp_path):
    for split in SPLITS:
        out = tmp_path / split
        assert (
            cli_main(
                [
                    "ava",
                    "--action-list",
                    str(dataset / "ava_action_list_v2.2.pbtxt"),
                    "--movies",
                    str(dataset / "movies"),
                    "--annotations",
                    str(dataset / f"ava_{split}_v2.2.csv"),
                    "--excluded",
                    str(dataset / f"ava_{split}_excluded_timestamps_v2.2.csv"),
                    "--detections",
                    str(dataset / f"ava_{split}_predicted_boxes.csv"),
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
            == 0
        )
        assert (out / "rejects.jsonl").read_text() == ""
        manifest = json.loads((out / "manifest.json").read_text())
        truth = ground_truth(dataset, split)
        assert manifest["num_samples"] == len(truth)
        detections = defaultdict(list)
        for video, second, *box, _, score in rows(dataset / f"ava_{split}_predicted_boxes.csv"):
            detections[video, int(second)].append(float(score))
        urls = [str(out / shard["file"]) for shard in manifest["shards"]]
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            meta = json.loads(sample["json"])
            people = truth[meta["video_id"], meta["timestamp"]]
            assert meta["person_ids"] == sorted(people)
            assert [sorted(people[p][1]) for p in meta["person_ids"]] == meta["labels"]
            pixels = [np.array(box) * ([meta["width"], meta["height"]] * 2) for box in meta["boxes"]]
            assert np.allclose(pixels, [people[p][0] for p in meta["person_ids"]])
            assert meta["det_scores"] == detections[meta["video_id"], meta["timestamp"]]
            clip = decode(sample["mp4"])
            keyframe = round(meta["keyframe_sec"] * meta["fps"])
            assert len(clip) == 3 * SPEC["fps"] and keyframe == 45
            assert_boxes_frame_the_actors(clip[keyframe], pixels, meta["id"])


def test_boxes_frame_the_actors_pixels_in_the_decoded_movies(dataset):
    truth = all_ground_truth(dataset)
    for video in sorted({video for video, _ in truth}):
        frames = decode(dataset / "movies" / f"{video}.mp4")
        for second in KEYFRAMES:
            if (video, second) in truth:
                boxes = [box for box, _ in truth[video, second].values()]
                assert_boxes_frame_the_actors(frames[second * SPEC["fps"]], boxes, f"{video} {second}")


def stripe_angle(frame: np.ndarray, box: np.ndarray) -> float:
    """Dominant gradient direction (mod pi) of the actor's pixels 2 px or more inside its outline: there the edges
    are the stripes', which turn with the actor."""
    x1, y1, x2, y2 = np.round(box).astype(int)
    level = frame[y1:y2, x1:x2].max(axis=2).astype(float)
    interior = level > ACTOR_LEVEL
    for _ in range(2):
        interior &= (
            np.roll(interior, 1, 0) & np.roll(interior, -1, 0) & np.roll(interior, 1, 1) & np.roll(interior, -1, 1)
        )
    gy, gx = np.gradient(level)
    gx, gy = gx[interior], gy[interior]
    return 0.5 * np.arctan2(2 * (gx * gy).sum(), (gx * gx).sum() - (gy * gy).sum())


def test_actions_follow_the_motion(dataset):
    """Each action is checked against what the actor does on screen across keyframes and frames."""
    truth = all_ground_truth(dataset)
    tracks: dict = defaultdict(list)  # (video, person) -> [(second, box, actions)]
    for (video, second), people in sorted(truth.items()):
        for person, (box, actions) in people.items():
            tracks[video, person].append((second, box, actions))
    checked = Counter()
    for (video, person), track in tracks.items():
        actions = track[0][2]
        assert all(step[2] == actions for step in track), "an actor's actions hold for the whole movie"
        centre_x = np.array([(box[0] + box[2]) / 2 for _, box, _ in track])
        size = np.array([(box[2] - box[0]) * (box[3] - box[1]) for _, box, _ in track])
        steps = np.diff(centre_x) / np.diff([second for second, _, _ in track])
        if WALK_RIGHT in actions:
            assert (steps > 1).all(), (video, person, centre_x)
        elif WALK_LEFT in actions:
            assert (steps < -1).all(), (video, person, centre_x)
        else:
            assert STAND in actions and np.ptp(centre_x) <= 1.5, (video, person, centre_x)
        checked[(actions & {STAND, WALK_LEFT, WALK_RIGHT}).pop()] += 1
        if not actions & {TURN_CW, TURN_CCW}:  # a turning square's box changes size as it turns
            if GROW in actions:
                assert size[-1] > 1.2 * size[0], (video, person, size)
            elif SHRINK in actions:
                assert size[-1] < size[0] / 1.2, (video, person, size)
            else:
                assert np.ptp(size) <= 0.15 * size.mean(), (video, person, size)
            checked["grow" if GROW in actions else "shrink" if SHRINK in actions else "same size"] += 1

    frames = {video: decode(dataset / "movies" / f"{video}.mp4") for video in {video for video, _ in tracks}}
    for (video, second), people in truth.items():
        for person, (box, actions) in people.items():
            if actions & {TURN_CW, TURN_CCW}:  # the stripes' angle grows (clockwise on screen) over 1/3 s
                frame = second * SPEC["fps"]
                turn = stripe_angle(frames[video][frame + 10], box) - stripe_angle(frames[video][frame], box)
                turn = (turn + np.pi / 2) % np.pi - np.pi / 2
                assert (turn > 0) == (TURN_CW in actions), (video, second, person, np.degrees(turn))
                checked[(actions & {TURN_CW, TURN_CCW}).pop()] += 1
            if actions & {WALK_LEFT, WALK_RIGHT}:  # walk toward: another actor's centre lies ahead
                heading = 1 if WALK_RIGHT in actions else -1
                ahead = [
                    other
                    for other, (other_box, _) in people.items()
                    if other != person and np.sign((other_box[0] + other_box[2]) - (box[0] + box[2])) == heading
                ]
                assert (WALK_TOWARD in actions) == bool(ahead), (video, second, person)
                checked[WALK_TOWARD if ahead else "walking, no one ahead"] += 1
    assert len(checked) == 10 and min(checked.values()) >= 2, checked


def iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_excluded_keyframes_and_scored_detections(dataset):
    detected_while_excluded, boxes_found, num_boxes = 0, 0, 0
    missed, false_confident, false_weak = 0, 0, 0
    for split in SPLITS:
        excluded = {
            (video, int(second)) for video, second in rows(dataset / f"ava_{split}_excluded_timestamps_v2.2.csv")
        }
        truth = ground_truth(dataset, split)
        detections = defaultdict(list)
        for row in rows(dataset / f"ava_{split}_predicted_boxes.csv"):
            assert len(row) == 8 and row[6] == "" and re.fullmatch(r"0\.\d{3}", row[7]), row
            detections[row[0], int(row[1])].append((np.array(row[2:6], float), float(row[7])))
        assert excluded and excluded.isdisjoint(truth)
        videos = {video for video, _ in truth}
        assert all(video in videos and second in KEYFRAMES for video, second in excluded)
        # the detector ran on every keyframe, the excluded ones too; they show actors but have no ground truth
        assert set(detections) <= set(truth) | excluded
        detected_while_excluded += len(excluded & set(detections))
        for video, second in excluded:
            frame = decode(dataset / "movies" / f"{video}.mp4")[second * SPEC["fps"]]
            assert (frame.max(axis=2) > ACTOR_LEVEL).sum() > 50

        scale = np.array([SPEC["width"], SPEC["height"]] * 2)
        for key, people in truth.items():
            boxes = [box / scale for box, _ in people.values()]
            num_boxes += len(boxes)
            for box in boxes:
                best = max((score for det, score in detections[key] if iou(det, box) >= 0.5), default=None)
                boxes_found += best is not None and best >= 0.8
                missed += best is None
            for det, score in detections[key]:
                if all(iou(det, box) < 0.5 for box in boxes):
                    false_confident += score >= 0.8
                    false_weak += score < 0.8
    assert detected_while_excluded and boxes_found >= 0.7 * num_boxes, (boxes_found, num_boxes)
    assert missed and false_weak and false_confident, (missed, false_weak, false_confident)


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_arguments_give_the_same_bytes(dataset, tmp_path):
    assert cli_main(cli_args(tmp_path / "again")) == 0
    assert digests(tmp_path / "again") == digests(dataset)
    assert cli_main(cli_args(dataset)) == 0  # writing over an earlier run of the same arguments
    assert digests(tmp_path / "again") == digests(dataset)
    assert cli_main(cli_args(tmp_path / "other", seed=10, num_movies=2, val_movies=1)) == 0
    ours = [digest for name, digest in digests(dataset).items() if name.endswith((".csv", ".mp4"))]
    assert set(digests(tmp_path / "other").values()).isdisjoint(ours)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"seconds": 4}, "demo-ava --seconds must be in 5..900"),
        ({"num_movies": 1}, "demo-ava --num-movies must be in 2..10000"),
        ({"val_movies": 8}, "demo-ava --val-movies must be in 1..7, got 8"),
        ({"val_movies": 0}, "demo-ava --val-movies must be in 1..7, got 0"),
        ({"width": 127}, "demo-ava --width must be even and in 48..1024, got 127"),
        ({"height": 32}, "demo-ava --height must be even and in 48..1024, got 32"),
        ({"fps": 5}, "demo-ava --fps must be in 10..60, got 5"),
        ({"seed": -1}, "demo-ava --seed must be >= 0, got -1"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(tmp_path, capsys, changes, message):
    assert cli_main(cli_args(tmp_path / "ava", **changes)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ava").exists()


def test_a_folder_with_other_movies_is_refused(tmp_path, capsys):
    (tmp_path / "ava" / "movies").mkdir(parents=True)
    (tmp_path / "ava" / "movies" / "someone_else.mp4").write_bytes(b"not ours")
    assert cli_main(cli_args(tmp_path / "ava")) == 2
    assert "holds movies this dataset does not make (someone_else.mp4, 1 in all)" in capsys.readouterr().err
