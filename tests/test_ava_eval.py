"""AVA frame-mAP@0.5: hand-made cases with APs worked out by hand, the rules of the official ActivityNet evaluation
(excluded keyframes, 80 → 60 actions, duplicates, the 50-per-keyframe cap), the label map's groups, tools/ava_eval.py
(last line, JSON, exit 2 naming file and line), and AvaEvaluator over contract batches on 1 and 2 processes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from launch_helpers import REPO, child_env
from mfvideo.common.ava_files import AvaFormatError, read_label_map
from mfvideo.evaluation.ava import (
    AvaEvaluator,
    KeyframeDetections,
    KeyframeTruth,
    evaluate_files,
    main,
    score_detections,
)
from shards_helpers import AVA_60_IDS


# ----- helpers ----------------------------------------------------------------------------------------------------
def pbtxt(ids, label_types=None) -> str:
    """An action list in the 60-action file's layout (item/id), or the full list's (label/label_id/label_type)."""
    if label_types is None:
        return "".join(f'item {{\n  name: "action {i}"\n  id: {i}\n}}\n' for i in ids)
    return "".join(
        f'label {{\n  name: "action {i}"\n  label_id: {i}\n  label_type: {t}\n}}\n' for i, t in zip(ids, label_types)
    )


def write_label_map(path: Path, ids, label_types=None):
    path.write_text(pbtxt(ids, label_types))
    return read_label_map(str(path))


def truth_of(rows) -> dict:
    """(video, second, x1, y1, x2, y2, action) rows -> {keyframe: KeyframeTruth}."""
    grouped: dict = {}
    for video, second, *box, action in rows:
        grouped.setdefault((video, second), []).append((box, action))
    return {
        k: KeyframeTruth(np.array([b for b, _ in v], dtype=float).reshape(-1, 4), np.array([a for _, a in v]))
        for k, v in grouped.items()
    }


def detections_of(rows) -> dict:
    """(video, second, x1, y1, x2, y2, action, score) rows -> {keyframe: KeyframeDetections}, rows in order."""
    grouped: dict = {}
    for video, second, *box, action, score in rows:
        grouped.setdefault((video, second), []).append((box, action, score))
    return {
        k: KeyframeDetections(
            np.array([b for b, _, _ in v], dtype=float).reshape(-1, 4),
            np.array([a for _, a, _ in v]),
            np.array([s for _, _, s in v], dtype=float),
        )
        for k, v in grouped.items()
    }


def write_rows(path: Path, rows) -> Path:
    path.write_text(
        "".join(",".join(f"{v:04d}" if i == 1 else str(v) for i, v in enumerate(row)) + "\n" for row in rows)
    )
    return path


def ap(result, action):
    return result.per_action[action].average_precision


# ----- a case worked out by hand ------------------------------------------------------------------------------------
A, B = [0.1, 0.1, 0.4, 0.4], [0.6, 0.6, 0.9, 0.9]  # people on keyframe (m, 902)
C, D = [0.1, 0.1, 0.4, 0.4], [0.5, 0.1, 0.9, 0.5]  # people on keyframe (m, 903)
HAND_TRUTH = [("m", 902, *A, 12), ("m", 902, *B, 12), ("m", 903, *C, 12), ("m", 903, *D, 12)]
HAND_DETECTIONS = [
    ("m", 902, *A, 12, 0.9),  # TP: A
    ("m", 902, 0.11, 0.1, 0.41, 0.4, 12, 0.8),  # FP: its best box A is taken (a duplicate)
    ("m", 903, 0.5, 0.5, 0.6, 0.6, 12, 0.7),  # FP: touches D along an edge only, IoU 0
    ("m", 903, *C, 12, 0.6),  # TP: C
    ("m", 902, *B, 12, 0.5),  # TP: B; D is never found
]
# Ranks 1-5: TP FP FP TP TP, precision 1, 1/2, 1/3, 2/4, 3/5, recall 1/4, 1/4, 1/4, 2/4, 3/4. The envelope (the best
# precision at this recall or beyond) at the recall steps 1/4, 2/4, 3/4 is 1, 3/5, 3/5, and 0 from 3/4 to 1:
# AP = (1 + 3/5 + 3/5) / 4 = 11/20 = 55 % (without the envelope it would be (1 + 2/4 + 3/5) / 4 = 52.5 %).
HAND_AP = 55.0


def test_hand_computed_average_precision(tmp_path):
    labels = write_label_map(tmp_path / "map.pbtxt", [12])
    result = score_detections(truth_of(HAND_TRUTH), detections_of(HAND_DETECTIONS), labels)
    assert ap(result, 12) == pytest.approx(HAND_AP, abs=1e-9)
    assert result.metrics() == pytest.approx(
        {"mAP": HAND_AP, "mAP_pose": HAND_AP, "num_actions": 1, "num_keyframes": 2, "num_detected_keyframes": 2}
    )
    assert result.per_action[12].num_truth == 4 and result.per_action[12].num_detections == 5


def test_perfect_detector_scores_100(tmp_path):
    ids = [1, 12, 17, 64, 80]
    labels = write_label_map(tmp_path / "map.pbtxt", ids)
    rng = random.Random(0)
    truth, detections = [], []
    for second in range(902, 912):
        for _ in range(rng.randint(1, 3)):
            x, y = rng.uniform(0, 0.5), rng.uniform(0, 0.5)
            box = (round(x, 3), round(y, 3), round(x + 0.4, 3), round(y + 0.4, 3))
            actions = rng.sample(ids, rng.randint(1, 3))
            truth += [("movie", second, *box, a) for a in actions]
            # Every action of the list scored; the true ones above every false one.
            detections += [
                ("movie", second, *box, a, rng.uniform(0.6, 1.0) if a in actions else rng.uniform(0, 0.5)) for a in ids
            ]
    result = score_detections(truth_of(truth), detections_of(detections), labels)
    metrics = result.metrics()
    assert metrics["num_actions"] == len(ids) and metrics["num_keyframes"] == 10
    assert [metrics[name] for name in ("mAP", "mAP_pose", "mAP_object", "mAP_interaction")] == pytest.approx([100] * 4)


def test_duplicate_detection_is_a_false_positive(tmp_path):
    labels = write_label_map(tmp_path / "map.pbtxt", [12])
    truth = truth_of([("m", 902, *A, 12), ("m", 903, *C, 12)])
    found = [("m", 902, *A, 12, 0.9), ("m", 903, *C, 12, 0.7)]
    assert ap(score_detections(truth, detections_of(found), labels), 12) == 100.0
    # The same box again between the two: TP FP TP, precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 → (1 + 2/3) / 2.
    duplicated = found[:1] + [("m", 902, *A, 12, 0.8)] + found[1:]
    assert ap(score_detections(truth, detections_of(duplicated), labels), 12) == pytest.approx(100 * 5 / 6)


def test_a_detection_whose_best_box_is_taken_is_false_even_if_another_box_fits(tmp_path):
    """PASCAL VOC as the official code: a detection is matched to its best box only; no second choice."""
    labels = write_label_map(tmp_path / "map.pbtxt", [12])
    first, second = [0.1, 0.1, 0.5, 0.5], [0.2, 0.1, 0.6, 0.5]  # IoU 0.6 with each other
    truth = truth_of([("m", 902, *first, 12), ("m", 902, *second, 12)])
    # The second detection overlaps `first` by 0.905 (taken) and `second` by 0.667: a false positive, AP 1/2.
    found = detections_of([("m", 902, *first, 12, 0.9), ("m", 902, 0.12, 0.1, 0.52, 0.5, 12, 0.8)])
    assert ap(score_detections(truth, found, labels), 12) == pytest.approx(50.0)


def test_iou_of_one_half_decides(tmp_path):
    labels = write_label_map(tmp_path / "map.pbtxt", [12])
    box = [0.0, 0.0, 0.4, 0.4]
    truth = truth_of([("m", 902, *box, 12), ("m", 903, *box, 12)])
    # Shifted right by 0.13: IoU 0.108 / 0.212 = 0.509, a hit; by 0.14: 0.104 / 0.216 = 0.481, a miss.
    found = detections_of([("m", 903, 0.14, 0.0, 0.54, 0.4, 12, 0.9), ("m", 902, 0.13, 0.0, 0.53, 0.4, 12, 0.8)])
    assert ap(score_detections(truth, found, labels), 12) == pytest.approx(25.0)  # FP, TP: 1/2 at recall 1/2


def test_action_without_ground_truth_is_left_out_of_the_means(tmp_path):
    labels = write_label_map(tmp_path / "map.pbtxt", [1, 12, 64])
    truth = truth_of(HAND_TRUTH + [("m", 902, *A, 1)])
    found = detections_of(HAND_DETECTIONS + [("m", 902, *A, 1, 0.95), ("m", 902, *B, 64, 0.99)])
    result = score_detections(truth, found, labels)
    assert ap(result, 1) == 100.0 and ap(result, 12) == pytest.approx(HAND_AP) and ap(result, 64) is None
    metrics = result.metrics()
    assert metrics["mAP"] == pytest.approx((100.0 + HAND_AP) / 2) and metrics["num_actions"] == 2
    assert "mAP_interaction" not in metrics
    assert result.per_action_json()["64"] == {
        "name": "action 64",
        "group": "interaction",
        "ap": None,
        "num_ground_truth": 0,
        "num_detections": 1,
    }


def test_excluded_keyframes_count_for_nothing(tmp_path):
    labels = write_label_map(tmp_path / "map.pbtxt", [12])
    # On an excluded keyframe: a box never found and a confident false detection.
    truth = truth_of(HAND_TRUTH + [("m", 950, *A, 12)])
    found = detections_of(HAND_DETECTIONS + [("m", 950, *B, 12, 0.99)])
    assert ap(score_detections(truth, found, labels, excluded={("m", 950)}), 12) == pytest.approx(HAND_AP)
    assert ap(score_detections(truth, found, labels), 12) < HAND_AP - 10


def test_detections_on_keyframes_without_ground_truth_are_false_positives(tmp_path):
    labels = write_label_map(tmp_path / "map.pbtxt", [12])
    truth = truth_of([("m", 902, *A, 12)])
    found = detections_of([("m", 902, *A, 12, 0.5), ("m", 905, *A, 12, 0.9)])
    assert ap(score_detections(truth, found, labels), 12) == pytest.approx(50.0)  # FP then TP: precision 1/2


def test_80_to_60_actions(tmp_path):
    """Ground truth and detections of the 20 actions outside the 60-action list change nothing; with the full list
    they count; ids outside 1..80 are errors."""
    assert 2 not in AVA_60_IDS
    sixty = write_label_map(tmp_path / "60.pbtxt", AVA_60_IDS)
    eighty = write_label_map(tmp_path / "80.pbtxt", range(1, 81))
    truth = truth_of(HAND_TRUTH + [("m", 902, *A, 2), ("m", 903, *D, 2)])
    found = detections_of(HAND_DETECTIONS + [("m", 902, *B, 2, 0.99), ("m", 903, *C, 2, 0.98)])
    on_sixty = score_detections(truth, found, sixty)
    assert on_sixty.metrics()["mAP"] == pytest.approx(HAND_AP) and on_sixty.metrics()["num_actions"] == 1
    assert 2 not in on_sixty.per_action and len(on_sixty.per_action) == 60
    on_eighty = score_detections(truth, found, eighty)
    assert ap(on_eighty, 2) == 0.0 and on_eighty.metrics()["num_actions"] == 2
    with pytest.raises(ValueError, match=r"keyframe \('m', 902\): unknown action id 81 \(known: 1..80\)"):
        score_detections(truth, detections_of([("m", 902, *A, 81, 0.5)]), sixty)


def test_only_50_detections_per_keyframe_count_and_boxes_without_area_none(tmp_path):
    labels = write_label_map(tmp_path / "map.pbtxt", [12])
    truth = truth_of([("m", 902, *A, 12)])
    decoys = [("m", 902, *B, 12, 0.9 - i / 1000) for i in range(50)]
    found = detections_of(decoys + [("m", 902, *A, 12, 0.5)])
    assert ap(score_detections(truth, found, labels), 12) == 0.0  # the true one is 51st: cut
    uncapped = score_detections(truth, found, labels, max_detections_per_keyframe=0)
    assert ap(uncapped, 12) == pytest.approx(100 / 51)
    # The cap applies to the label map's actions only (action 2 is known, 1..12, but not listed).
    unlisted = detections_of([("m", 902, *B, 2, 0.9 - i / 1000) for i in range(50)] + [("m", 902, *A, 12, 0.5)])
    assert ap(score_detections(truth, unlisted, labels), 12) == 100.0
    # The official code drops detections without area (after the cap): a flat box ranked first is not a FP.
    flat = detections_of([("m", 902, 0.2, 0.2, 0.2, 0.6, 12, 0.99), ("m", 902, *A, 12, 0.5)])
    assert ap(score_detections(truth, flat, labels), 12) == 100.0


def test_group_means_from_label_type_or_from_id_ranges(tmp_path):
    # AP per action: 1 → 100, 12 → 55 (hand case), 17 → 0 (not detected), 64 → 50 (1 of 2 boxes found first).
    truth = truth_of(HAND_TRUTH + [("m", 902, *A, 1), ("m", 903, *C, 17), ("m", 902, *A, 64), ("m", 903, *D, 64)])
    found = detections_of(HAND_DETECTIONS + [("m", 902, *A, 1, 0.9), ("m", 902, *A, 64, 0.9)])
    by_ranges = score_detections(truth, found, write_label_map(tmp_path / "60.pbtxt", [1, 12, 17, 64]))
    assert by_ranges.metrics() == pytest.approx(
        {
            "mAP": (100 + HAND_AP + 0 + 50) / 4,
            "mAP_pose": (100 + HAND_AP) / 2,
            "mAP_object": 0.0,
            "mAP_interaction": 50.0,
            "num_actions": 4,
            "num_keyframes": 2,
            "num_detected_keyframes": 2,
        }
    )
    # label_type wins over the ranges.
    typed = write_label_map(
        tmp_path / "full.pbtxt",
        [1, 12, 17, 64],
        ["PERSON_MOVEMENT", "OBJECT_MANIPULATION", "OBJECT_MANIPULATION", "PERSON_INTERACTION"],
    )
    assert typed.groups == {1: "pose", 12: "object", 17: "object", 64: "interaction"}
    metrics = score_detections(truth, found, typed).metrics()
    assert metrics["mAP_pose"] == 100.0 and metrics["mAP_object"] == pytest.approx(HAND_AP / 2)


# ----- label map ----------------------------------------------------------------------------------------------------
def test_label_map_reads_both_official_layouts(tmp_path):
    sixty = write_label_map(tmp_path / "60.pbtxt", AVA_60_IDS)
    assert list(sixty.names) == AVA_60_IDS and sixty.names[80] == "action 80"
    assert [sixty.groups[i] for i in (1, 14, 15, 63, 64, 80)] == [
        "pose",
        "pose",
        "object",
        "object",
        "interaction",
        "interaction",
    ]
    assert sixty.known_actions == range(1, 81)
    (tmp_path / "full.pbtxt").write_text(
        'label {\n  name: "bend/bow (at the waist)"\n  label_id: 1\n'
        '  label_type: PERSON_MOVEMENT\n}\n# a comment\nlabel { name: "carry/hold '
        '(an object)" label_id: 17 label_type: OBJECT_MANIPULATION }\n'
    )
    full = read_label_map(str(tmp_path / "full.pbtxt"))
    assert full.names == {1: "bend/bow (at the waist)", 17: "carry/hold (an object)"}
    assert full.groups == {1: "pose", 17: "object"}


@pytest.mark.parametrize(
    "text, message",
    [
        ('item {\n  name: "a"\n  id: 1\n}\nitem {\n  name: "b"\n  id: 1\n}\n', ":7: action id 1 appears twice"),
        ('item {\n  name: "a"\n  id: 1\n', ":3: the label map ends where a field or '}' was expected"),
        ('item {\n  name: "a"\n  idd: 1\n}\n', ":3: unknown field 'idd'"),
        ('item {\n  name: "a"\n}\n', ":1: a block needs a name and one of id or label_id"),
        ('label {\n  name: "a"\n  label_id: 3\n  label_type: DANCING\n}\n', ":4: label_type 'DANCING' is not one of"),
        ('item {\n  name: "a"\n  id: 0\n}\n', ":3: action id must be an integer ≥ 1, found '0'"),
        ('item {\n  name: "a"\n  id: 1\n}\n}\n', ":5: expected a block item or label { … }, found '}'"),
        ('item {\n  name: "a\n', ":2: unexpected '\"' in the label map"),
        ("", ": no action items found"),
    ],
)
def test_label_map_errors_name_file_and_line(tmp_path, text, message):
    (tmp_path / "map.pbtxt").write_text(text)
    with pytest.raises(AvaFormatError) as err:
        read_label_map(str(tmp_path / "map.pbtxt"))
    assert f"{tmp_path / 'map.pbtxt'}{message}" in str(err.value)


# ----- tools/ava_eval.py ------------------------------------------------------------------------------------------
def hand_files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "map.pbtxt").write_text(pbtxt([12, 14, 64]))
    write_rows(tmp_path / "gt.csv", [(*row, 7) for row in HAND_TRUTH + [("m", 950, *A, 12), ("m", 902, *A, 14)]])
    write_rows(tmp_path / "det.csv", HAND_DETECTIONS + [("m", 950, *B, 12, 0.99), ("m", 902, *A, 14, 0.3)])
    write_rows(tmp_path / "excluded.csv", [("m", 950)])
    return {
        "--groundtruth": str(tmp_path / "gt.csv"),
        "--detections": str(tmp_path / "det.csv"),
        "--labelmap": str(tmp_path / "map.pbtxt"),
        "--exclusions": str(tmp_path / "excluded.csv"),
    }


def arguments(files: dict[str, str]) -> list[str]:
    return [part for option, path in files.items() for part in (option, path)]


def test_cli_prints_group_means_and_map_last_and_writes_per_action_json(tmp_path, capsys):
    assert main(arguments(hand_files(tmp_path))) == 0
    lines = capsys.readouterr().out.splitlines()
    # Action 12: the hand case (the excluded keyframe 950 counts for nothing); 14: found, 100; 64: no ground truth.
    assert lines[-1] == f"mAP@0.5 {(HAND_AP + 100) / 2:.4f}"
    assert f"pose mAP@0.5 {(HAND_AP + 100) / 2:.4f} (2 actions)" in lines
    assert not any(line.startswith(("object", "interaction")) for line in lines)
    per_action = json.loads((tmp_path / "det_ap.json").read_text())
    assert list(per_action) == ["12", "14", "64"]
    assert per_action["12"]["ap"] == pytest.approx(HAND_AP) and per_action["12"]["num_ground_truth"] == 4
    assert per_action["64"] == {
        "name": "action 64",
        "group": "interaction",
        "ap": None,
        "num_ground_truth": 0,
        "num_detections": 0,
    }


def test_the_tool_runs_as_a_script(tmp_path):
    proc = subprocess.run(
        [sys.executable, "tools/ava_eval.py", *arguments(hand_files(tmp_path))],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"mAP@0.5 {(HAND_AP + 100) / 2:.4f}"


@pytest.mark.parametrize(
    "target, line, text, message",
    [
        ("--detections", 2, "m,0902,0.1,0.1,1.2,0.4,12,0.5", "box ['0.1', '0.1', '1.2', '0.4'] is not normalised"),
        ("--groundtruth", 3, "m,0903,0.5,0.1,0.4,0.5,12,7", "box ['0.5', '0.1', '0.4', '0.5'] is not normalised"),
        ("--detections", 4, "m,0903,0.1,0.1,0.4,0.4,81,0.5", "unknown action id 81 (known: 1..64)"),
        ("--groundtruth", 1, "m,0902,0.1,0.1,0.4,0.4,0,7", "unknown action id 0 (known: 1..64)"),
        (
            "--detections",
            1,
            "m,0902,0.1,0.1,0.4,0.4,12",
            "expected 8 columns video_id,timestamp,x1,y1,x2,y2,action_id,score (no score column?)",
        ),
        ("--detections", 5, "m,0902,0.1,0.1,0.4,0.4,12,high", "bad score 'high'"),
        ("--exclusions", 1, "m,09o2", "bad timestamp '09o2'"),
        ("--labelmap", 2, '  nme: "a"', "unknown field 'nme'"),
    ],
)
def test_cli_bad_input_exits_2_naming_file_and_line(tmp_path, capsys, target, line, text, message):
    files = hand_files(tmp_path)
    lines = Path(files[target]).read_text().splitlines()
    lines[line - 1] = text
    Path(files[target]).write_text("\n".join(lines) + "\n")
    assert main(arguments(files)) == 2
    assert f"{files[target]}:{line}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "det_ap.json").exists()


def test_cli_unreadable_file_exits_2_naming_it(tmp_path, capsys):
    files = hand_files(tmp_path)
    files["--groundtruth"] = str(tmp_path / "missing.csv")
    assert main(arguments(files)) == 2
    assert f"No such file or directory: '{tmp_path / 'missing.csv'}'" in capsys.readouterr().err


# ----- AvaEvaluator -------------------------------------------------------------------------------------------------
EVAL_IDS = [1, 12, 17, 64, 80]
NUM_ACTIONS = 80  # model.num_classes: column a−1 scores action id a


def evaluation_data(seed: int = 0):
    """Ground-truth rows, and per keyframe the sample a detector would see: the ground-truth boxes jittered plus a
    false one as RoIs, with scores that favour the true actions. One keyframe has no RoI."""
    rng = np.random.default_rng(seed)
    truth_rows, samples = [], []
    for second in range(902, 914):
        people = []
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0, 0.5, size=2).round(3)
            people.append(
                (
                    [x, y, round(x + 0.4, 3), round(y + 0.45, 3)],
                    sorted(rng.choice(EVAL_IDS, size=int(rng.integers(1, 3)), replace=False).tolist()),
                )
            )
        truth_rows += [
            ("movie", second, *box, action, person)
            for person, (box, actions) in enumerate(people)
            for action in actions
        ]
        rois = [np.clip(np.array(box) + rng.normal(0, 0.02, 4), 0, 1) for box, _ in people]
        rois.append(np.array([0.7, 0.05, 0.95, 0.3]))
        scores = rng.uniform(0, 0.6, size=(len(rois), NUM_ACTIONS)).astype(np.float32)
        for roi, (_, actions) in enumerate(people):
            scores[roi, np.array(actions) - 1] += rng.uniform(0.1, 0.4, size=len(actions)).astype(np.float32)
        if second == 905:
            rois, scores = [], np.zeros((0, NUM_ACTIONS), np.float32)
        samples.append((f"movie_{second:04d}", "movie", second, np.array(rois, np.float32).reshape(-1, 4), scores))
    return truth_rows, samples


def evaluation_set(root: Path):
    """The files of `evaluation_data` in `root` (ground truth, label map, keyframe 903 excluded) and its samples."""
    truth_rows, samples = evaluation_data()
    (root / "map.pbtxt").write_text(pbtxt(EVAL_IDS))
    write_rows(root / "gt.csv", truth_rows)
    write_rows(root / "excluded.csv", [("movie", 903)])
    return {
        "groundtruth": str(root / "gt.csv"),
        "label_map": str(root / "map.pbtxt"),
        "exclusions": str(root / "excluded.csv"),
    }, samples


def contract_batch(samples) -> tuple[dict, dict]:
    """A batch in the contract's field layout (full-frame clips of 64×48 pixels, no padding) and the model's
    outputs."""
    width, height = 64, 48
    box_norm = torch.from_numpy(np.concatenate([boxes for *_, boxes, _ in samples]).reshape(-1, 4))
    scores = torch.from_numpy(np.concatenate([s for *_, s in samples]).reshape(-1, NUM_ACTIONS))
    batch = {
        "video": torch.zeros(len(samples), 3, 4, height, width),
        "boxes": box_norm * torch.tensor([width, height, width, height], dtype=torch.float32),
        "box_index": torch.tensor(
            [clip for clip, (*_, boxes, _) in enumerate(samples) for _ in boxes], dtype=torch.int64
        ),
        "box_labels": torch.zeros(len(box_norm), NUM_ACTIONS),
        "box_norm": box_norm,
        "video_id": [video for _, video, *_ in samples],
        "timestamp": torch.tensor([second for _, _, second, *_ in samples], dtype=torch.int64),
        "key": [key for key, *_ in samples],
    }
    return batch, {"scores": scores, "logits": torch.logit(scores.clamp(1e-6, 1 - 1e-6))}


def feed(evaluator: AvaEvaluator, samples, batch_size: int) -> None:
    for start in range(0, len(samples), batch_size):
        evaluator.update(*contract_batch(samples[start : start + batch_size]))


def direct_csv(path: Path, samples) -> Path:
    """The samples' detections as the official CSV, written here independently of the evaluator."""
    with open(path, "w") as handle:
        for _, video, second, boxes, scores in samples:
            for box, roi_scores in zip(boxes.tolist(), scores.tolist()):
                for action in EVAL_IDS:
                    handle.write(
                        f"{video},{second:04d},{','.join(f'{v:.6f}' for v in box)},{action},"
                        f"{roi_scores[action - 1]:.6f}\n"
                    )
    return path


def test_evaluator_on_contract_batches_equals_the_direct_computation(tmp_path, capsys):
    files, samples = evaluation_set(tmp_path)
    evaluator = AvaEvaluator(**files)
    feed(evaluator, samples, batch_size=3)
    metrics = evaluator.compute()
    direct = evaluate_files(
        files["groundtruth"], str(direct_csv(tmp_path / "direct.csv", samples)), files["label_map"], files["exclusions"]
    )
    assert metrics == direct.metrics()
    assert 20 < metrics["mAP"] < 95 and metrics["num_keyframes"] == 11 and metrics["num_detected_keyframes"] == 10

    # What it writes scores the same with the standalone tool.
    evaluator.write(tmp_path / "out", metrics)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "detections.csv",
        "detections_ap.json",
        "metrics.json",
    ]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    written = (tmp_path / "out" / "detections.csv").read_text()
    assert written == (tmp_path / "direct.csv").read_text()  # one row per RoI and action, 6 decimals
    assert written.count("\n") == sum(len(boxes) for *_, boxes, _ in samples) * len(EVAL_IDS)
    assert (
        main(
            [
                "--groundtruth",
                files["groundtruth"],
                "--detections",
                str(tmp_path / "out" / "detections.csv"),
                "--labelmap",
                files["label_map"],
                "--exclusions",
                files["exclusions"],
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines()[-1] == f"mAP@0.5 {metrics['mAP']:.4f}"
    assert json.loads((tmp_path / "out" / "detections_ap.json").read_text()) == json.loads(
        json.dumps(direct.per_action_json())
    )


def test_evaluator_counts_a_repeated_key_once(tmp_path):
    files, samples = evaluation_set(tmp_path)
    once = AvaEvaluator(**files)
    feed(once, samples, batch_size=4)
    # The loader's padding repeats whole samples; a repeat is ignored whatever it scores.
    repeats = [(key, video, second, boxes, np.ones_like(scores)) for key, video, second, boxes, scores in samples[:5]]
    twice = AvaEvaluator(**files)
    feed(twice, samples[:7] + repeats + samples[7:] + repeats[:2], batch_size=4)
    assert twice.compute() == once.compute()
    # A second sample of an already-seen keyframe is not a repeat: an error naming both.
    other = [("another_key", "movie", 902, samples[0][3], samples[0][4])]
    clash = AvaEvaluator(**files)
    feed(clash, samples + other, batch_size=4)
    with pytest.raises(
        ValueError,
        match=r"keyframe \('movie', 902\) arrived as two samples, 'movie_0902' and "
        r"'another_key'",
    ):
        clash.compute()


def test_evaluator_on_a_subset_of_keyframes(tmp_path):
    """A validation pass over every other second: by default the untested keyframes' boxes count as missed; with
    tested_keyframes_only, the result is that of the subset's own ground truth."""
    files, samples = evaluation_set(tmp_path)
    subset = samples[::2]
    full = AvaEvaluator(**files)
    feed(full, subset, batch_size=4)
    tested = AvaEvaluator(**files, tested_keyframes_only=True)
    feed(tested, subset, batch_size=4)
    truth_rows, _ = evaluation_data()
    seconds = {second for _, _, second, *_ in subset}
    write_rows(tmp_path / "subset_gt.csv", [row for row in truth_rows if row[1] in seconds])
    expected = evaluate_files(
        str(tmp_path / "subset_gt.csv"),
        str(direct_csv(tmp_path / "subset.csv", subset)),
        files["label_map"],
        files["exclusions"],
    ).metrics()
    assert tested.compute() == expected and expected["num_keyframes"] == 6  # 902, 904, ..., 912
    on_all = full.compute()
    assert on_all["num_keyframes"] == 11 and on_all["mAP"] < expected["mAP"] - 10


def test_evaluator_checks_the_model_scores_every_action_of_the_label_map(tmp_path):
    files, samples = evaluation_set(tmp_path)
    evaluator = AvaEvaluator(**files)
    batch, outputs = contract_batch(samples[:2])
    with pytest.raises(ValueError, match="the model scores 60 actions but the label map .*map.pbtxt has action id 80"):
        evaluator.update(batch, {"scores": outputs["scores"][:, :60]})


# ----- two real processes -----------------------------------------------------------------------------------------
def _distributed_worker(rank: int, root: str, files: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/store", rank=rank, world_size=2)
    try:
        _, samples = evaluation_data()
        mine = samples[rank::2] + (samples[:1] if rank == 1 else [])  # sample 0 on both ranks, as padding does
        evaluator = AvaEvaluator(**files)
        feed(evaluator, mine, batch_size=2 + rank)
        with open(f"{root}/rank{rank}.json", "w") as handle:
            json.dump(evaluator.compute(), handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_exactly_the_metrics_of_one(tmp_path):
    files, samples = evaluation_set(tmp_path)
    single = AvaEvaluator(**files)
    feed(single, samples, batch_size=5)
    expected = json.loads(json.dumps(single.compute()))
    mp.spawn(_distributed_worker, args=(str(tmp_path), files), nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected
