"""AVA detection data: boxes travel with keyframe-centred clips from real shards (make_shards' AVA source over
PyAV-encoded movies) through the transforms, the proposals and the collate, into batches.

The movies are a flat grey whose level encodes the movie frame index, with solid coloured rectangles at known
places; the shards' boxes are those rectangles, so after any transform a box must still frame its rectangle's pixels.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import re
import shutil
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from loader_helpers import build_test_loader, build_train_loader
from mfvideo.config.recipe import RecipeError, load_recipe
from mfvideo.config.schema import DataConfig, DetectionDataConfig
from mfvideo.data.boxes import KeyframeAnnotation, MissingDetections, eval_rois, training_rois
from mfvideo.data.decode import open_media
from mfvideo.data.tarstream import iter_shard
from mfvideo.data.transforms import (
    MIN_VISIBLE_FRACTION,
    DetectionEvalTransform,
    DetectionTrainTransform,
    clip_boxes,
    jittered_crop_box,
)
from mfvideo.shards import AvaSource, ShardOptions, make_shards
from mfvideo.tasks import detect
from mfvideo.tasks.rules import choice_problems
from shards_helpers import AVA_60_IDS

FPS = 15  # the movies' rate: a 16 × 4 clip at 30 fps reference strides 2 frames here
NUM_ACTIONS = 80  # the manifest lists action ids 1..80
GREEN, BLUE = (30, 220, 30), (30, 30, 220)
G = [0.25, 0.25, 0.5, 0.75]  # the green rectangle of movie -mov_A1 (160×120): x 40..80, y 30..90
B = [0.625, 0.15, 0.875, 0.5]  # its blue rectangle: x 100..140, y 18..60
G2 = [0.2, 0.2, 0.4, 0.8]  # the green rectangle of movie mov_B2 (150×100): x 30..60, y 20..80
MOVIES = {"-mov_A1": (160, 120, [(G, GREEN), (B, BLUE)]), "mov_B2": (150, 100, [(G2, GREEN)])}
MOVIE_FRAMES = 51  # 3.4 s: the keyframe at 3 s is near the end

GROUND_TRUTH = [  # video, second, box, action, person
    ("-mov_A1", 2, G, 12, 0),
    ("-mov_A1", 2, B, 14, 1),
    ("-mov_A1", 2, B, 80, 1),
    ("-mov_A1", 3, G, 17, 0),
    ("-mov_A1", 3, B, 11, 1),
    ("mov_B2", 2, G2, 12, 0),
]
NEAR_B = [0.63, 0.16, 0.875, 0.5]  # IoU 0.95 with B: takes B's actions
PART_G = [0.25, 0.25, 0.5, 0.6]  # IoU 0.7 with G: a negative
FAR = [0.0, 0.5, 0.2, 0.95]  # overlaps nothing: a negative
AT_THRESHOLD = [0.3, 0.0, 0.45, 0.2]  # score exactly 0.8: kept
DETECTIONS = [  # video, second, box, score
    ("-mov_A1", 1, [0.1, 0.1, 0.3, 0.3], 0.3),  # keyframe 1 has no ground truth and no detection ≥ 0.8
    ("-mov_A1", 2, G, 0.97),
    ("-mov_A1", 2, NEAR_B, 0.9),
    ("-mov_A1", 2, PART_G, 0.95),
    ("-mov_A1", 2, FAR, 0.85),
    ("-mov_A1", 2, AT_THRESHOLD, 0.8),
    ("-mov_A1", 2, [0.6, 0.1, 0.9, 0.55], 0.79),
    ("-mov_A1", 3, [0.26, 0.25, 0.5, 0.75], 0.9),
    ("mov_B2", 2, G2, 0.99),
]


def grey_level(movie_frame: int) -> int:
    return 10 + 4 * movie_frame


def write_movie(path: Path, width: int, height: int, rectangles) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "10"}
        for index in range(MOVIE_FRAMES):
            frame = np.full((height, width, 3), grey_level(index), dtype=np.uint8)
            for (x1, y1, x2, y2), colour in rectangles:
                frame[round(y1 * height) : round(y2 * height), round(x1 * width) : round(x2 * width)] = colour
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, picture.time_base = index, Fraction(1, FPS)
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))


def _csv_box(box) -> str:
    return ",".join(f"{v:g}" for v in box)


def make_ava_shards(root: Path, detections: bool = True) -> Path:
    """The AVA layout (movies, action list, annotation and detection CSVs) → shards by make_shards' AVA source."""
    (root / "movies").mkdir(parents=True)
    for name, (width, height, rectangles) in MOVIES.items():
        write_movie(root / "movies" / f"{name}.mp4", width, height, rectangles)
    (root / "actions.pbtxt").write_text("".join(f'item {{\n  name: "action {i}"\n  id: {i}\n}}\n' for i in AVA_60_IDS))
    (root / "train.csv").write_text("".join(f"{v},{s:04d},{_csv_box(b)},{a},{p}\n" for v, s, b, a, p in GROUND_TRUTH))
    (root / "detections.csv").write_text(
        "".join(f"{v},{s:04d},{_csv_box(b)},,{score}\n" for v, s, b, score in DETECTIONS)
    )
    source = AvaSource(
        action_list=str(root / "actions.pbtxt"),
        movies=str(root / "movies"),
        annotations=str(root / "train.csv"),
        detections=str(root / "detections.csv") if detections else None,
    )
    make_shards(source, ShardOptions(out=root / "ava", progress=False))
    return root / "ava"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_ava_shards(tmp_path_factory.mktemp("ava"))


def samples(folder: Path) -> dict[str, dict]:
    return {
        key: json.loads(parts["json"]) for url in sorted(folder.glob("*.tar")) for key, parts in iter_shard(str(url))
    }


def data_cfg(folder: Path, **overrides):
    values = dict(
        train=str(folder),
        val=str(folder),
        num_frames=16,
        sampling_rate=4,
        reference_fps=30.0,
        crop_size=64,
        num_workers=0,
        shuffle_buffer=4,
        test_short_side=96,
        test_clips=1,
        test_crops=1,
        max_failure_fraction=0.0,
        detection=DetectionDataConfig(train_short_side=[64, 100]),
    )
    values.update(overrides)
    return OmegaConf.structured(DataConfig(**values))


# ----- pixels and boxes -----------------------------------------------------------------------------------------

MARGIN = 1.5  # output pixels of blur at a rectangle's edge: bilinear resizing and the codec's 2×2 chroma


def colour_mask(frame: torch.Tensor, colour) -> torch.Tensor:
    """H×W: where a uint8 C×H×W frame shows the rectangle colour (its strong channel well above the others)."""
    strong = int(np.argmax(colour))
    values = frame.int()
    others = torch.stack([values[c] for c in range(3) if c != strong]).max(0).values
    return values[strong] - others > 100


def assert_box_frames_rectangle(frame: torch.Tensor, box, colour, where: str) -> None:
    """Every pixel of the rectangle's colour lies inside the box, and every pixel inside the box has it."""
    mask = colour_mask(frame, colour)
    x1, y1, x2, y2 = (float(v) for v in box)
    assert mask.any(), f"{where}: no {colour} pixel in the clip, yet box {box} is there"
    ys, xs = torch.nonzero(mask, as_tuple=True)
    centres_x, centres_y = xs + 0.5, ys + 0.5
    inside = (
        (centres_x > x1 - MARGIN) & (centres_x < x2 + MARGIN) & (centres_y > y1 - MARGIN) & (centres_y < y2 + MARGIN)
    )
    assert inside.all(), f"{where}: {int((~inside).sum())} {colour} pixels outside box {box}"
    grid_x, grid_y = torch.arange(mask.shape[1]) + 0.5, torch.arange(mask.shape[0]) + 0.5
    core = ((grid_x > x1 + MARGIN) & (grid_x < x2 - MARGIN))[None, :] & (
        (grid_y > y1 + MARGIN) & (grid_y < y2 - MARGIN)
    )[:, None]
    assert core.any() and mask[core].all(), f"{where}: box {box} is not filled with {colour}"


def as_pixels(video: torch.Tensor) -> torch.Tensor:
    """A normalised clip (mean 0.45, std 0.225, the loaders' default) back to uint8."""
    return (video * 0.225 + 0.45).mul(255).round().clamp(0, 255).to(torch.uint8)


def decoded_frames(folder: Path, key: str) -> torch.Tensor:
    for url in sorted(folder.glob("*.tar")):
        for sample_key, parts in iter_shard(str(url)):
            if sample_key == key:
                media = open_media(parts["mp4"], "mp4", json.loads(parts["json"])["num_frames"])
                return media.frames(np.arange(2))
    raise KeyError(key)


def test_train_transform_moves_boxes_with_pixels_and_drops_boxes_mostly_cut_away(shards):
    frames = decoded_frames(shards, "-mov_A1_0002")  # 120×160
    transform = DetectionTrainTransform(64, (64, 100), flip=True)
    boxes = np.array([G, B])
    flips, clipped, dropped = set(), 0, 0
    for seed in range(40):
        clip, out, kept = transform(frames, boxes, np.random.default_rng(seed))
        assert clip.shape == (2, 3, 64, 64) and out.shape == (2, 4) and kept.dtype == bool
        if kept.all():
            flips.add(bool(out[0, 0] > out[1, 0]))  # green drawn left of blue: right of it once flipped
        scale = 64 / jittered_crop_box(120, 160, (64, 100), 64, np.random.default_rng(seed)).height
        for box, (normalised, colour), keep in zip(out, [(G, GREEN), (B, BLUE)], kept):
            visible = int(colour_mask(clip[0], colour).sum())  # pixels of the rectangle in the clip
            width, height = (normalised[2] - normalised[0]) * 160 * scale, (normalised[3] - normalised[1]) * 120 * scale
            blur = MARGIN * 2 * (width + height)
            if keep:
                assert_box_frames_rectangle(clip[0], box, colour, f"seed {seed}")
                assert visible > MIN_VISIBLE_FRACTION * width * height - blur, f"seed {seed}: {visible} px kept"
                clipped += bool((box[2] - box[0]) * (box[3] - box[1]) < 0.99 * width * height)
            else:
                dropped += 1
                assert visible < MIN_VISIBLE_FRACTION * width * height + blur, f"seed {seed}: {visible} px dropped"
    assert flips == {True, False}
    assert clipped and dropped  # the draws did cut boxes, keeping some and dropping others


def test_box_rule_clips_to_the_crop_and_drops_what_is_mostly_outside():
    boxes = np.array(
        [
            [-10.0, 0.0, 30.0, 20.0],  # 3/4 inside: clipped, kept
            [-32.0, 0.0, 8.0, 20.0],  # 1/5 inside: dropped
            [-30.0, 0.0, 10.0, 20.0],  # exactly 1/4 inside: kept
            [70.0, 0.0, 90.0, 20.0],  # wholly outside
            [10.0, 5.0, 10.0, 15.0],
        ]
    )  # no width: frames no pixel
    clipped, kept = clip_boxes(boxes, 64, 64)
    assert kept.tolist() == [True, False, True, False, False]
    assert clipped[0].tolist() == [0.0, 0.0, 30.0, 20.0] and clipped[3].tolist() == [64.0, 0.0, 64.0, 20.0]


def test_test_transform_keeps_the_full_frame_and_its_boxes(shards):
    for key, (width, height, rectangles) in [("-mov_A1_0002", MOVIES["-mov_A1"]), ("mov_B2_0002", MOVIES["mov_B2"])]:
        frames = decoded_frames(shards, key)
        clip, out, kept = DetectionEvalTransform(96)(frames, np.array([box for box, _ in rectangles]))
        scale = 96 / min(width, height)
        assert clip.shape == (2, 3, round(height * scale), round(width * scale)) and min(clip.shape[2:]) == 96
        assert kept.all()
        np.testing.assert_allclose(out, np.array([box for box, _ in rectangles]) * ([clip.shape[3], clip.shape[2]] * 2))
        for box, (_, colour) in zip(out, rectangles):
            assert_box_frames_rectangle(clip[0], box, colour, key)


# ----- through the loaders --------------------------------------------------------------------------------------


def rectangle_of(video_id: str, box_norm) -> tuple:
    for box, colour in MOVIES[video_id][2]:
        if np.allclose(box_norm, box, atol=1e-6):
            return colour
    return None


def test_training_batches_carry_boxes_that_frame_their_rectangles(shards):
    cfg = data_cfg(shards, repeated_sampling=4)
    loader = build_train_loader(cfg, None, 4, 0, 1, seed=1, fields=("boxes",), keep_pixels=True)
    checked, flips = 0, set()
    for epoch in range(3):
        loader.set_epoch(epoch)
        for batch in loader:
            assert batch["pixels"].shape == (4, 3, 16, 64, 64)
            left_edges = [{} for _ in batch["key"]]
            for row, box in enumerate(batch["boxes"].tolist()):
                clip = int(batch["box_index"][row])
                colour = rectangle_of(batch["video_id"][clip], batch["box_norm"][row].tolist())
                if colour is None:
                    continue  # a detection: no rectangle of its own
                for frame in (0, 8, 15):
                    assert_box_frames_rectangle(
                        batch["pixels"][clip, :, frame],
                        box,
                        colour,
                        f"{batch['key'][clip]} epoch {epoch} frame {frame}",
                    )
                left_edges[clip][colour] = box[0]
                checked += 1
            flips.update(edges[GREEN] > edges[BLUE] for edges in left_edges if len(edges) == 2)
    assert checked > 40 and flips == {True, False}


def expected_rois(video_id: str, second: int, train: bool) -> dict[tuple, set]:
    """{box: action ids} by the rule: ground truth (training), detections ≥ 0.8 with the actions of the ground truth
    they overlap with IoU ≥ 0.9, a detection with a ground-truth box's coordinates being that box."""
    truth: dict[tuple, set] = {}
    for v, s, box, action, _ in GROUND_TRUTH:
        if (v, s) == (video_id, second):
            truth.setdefault(tuple(box), set()).add(action)
    hand_labelled = {
        tuple(NEAR_B): {14, 80},
        tuple(PART_G): set(),
        tuple(FAR): set(),
        tuple(AT_THRESHOLD): set(),
        (0.26, 0.25, 0.5, 0.75): {17},
    }
    rois = dict(truth) if train else {}
    for v, s, box, score in DETECTIONS:
        if (v, s) == (video_id, second) and score >= 0.8:
            rois[tuple(box)] = truth.get(tuple(box), hand_labelled.get(tuple(box)))
    return rois


def rois_by_clip(batch) -> list[dict[tuple, set]]:
    out = [{} for _ in batch["key"]]
    for row in range(len(batch["boxes"])):
        box = tuple(round(v, 6) for v in batch["box_norm"][row].tolist())
        actions = {int(a) + 1 for a in torch.nonzero(batch["box_labels"][row]).flatten()}
        out[int(batch["box_index"][row])][box] = actions
    return out


def _rounded(rois: dict) -> dict:
    return {tuple(round(v, 6) for v in box): actions for box, actions in rois.items()}


def test_proposals_are_ground_truth_plus_confident_detections_labelled_by_overlap(shards):
    meta = samples(shards)["-mov_A1_0002"]
    keyframe = KeyframeAnnotation.from_meta(meta, NUM_ACTIONS)
    train, test = training_rois(keyframe, 0.8, NUM_ACTIONS), eval_rois(keyframe, 0.8, "detections", NUM_ACTIONS)

    def as_dict(rois):
        return {tuple(box): {i + 1 for i in np.flatnonzero(row)} for box, row in zip(rois.boxes, rois.labels)}

    assert len(train.boxes) == 6 and as_dict(train) == expected_rois("-mov_A1", 2, train=True)
    assert as_dict(test) == expected_rois("-mov_A1", 2, train=False)
    assert as_dict(test)[tuple(G)] == {12} and as_dict(test)[tuple(PART_G)] == set()
    ground_truth = eval_rois(keyframe, 0.8, "ground_truth", NUM_ACTIONS)
    assert as_dict(ground_truth) == {tuple(G): {12}, tuple(B): {14, 80}}


def test_a_detection_takes_the_actions_of_every_ground_truth_box_it_overlaps():
    keyframe = KeyframeAnnotation.from_meta(
        {
            "video_id": "v",
            "timestamp": 902,
            "keyframe_sec": 1.5,
            "boxes": [[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.51], [0.6, 0.6, 0.9, 0.9]],
            "labels": [[1], [2, 3], [4]],
            "det_boxes": [[0.1, 0.1, 0.5, 0.505], [0.6, 0.6, 0.9, 0.86]],
            "det_scores": [0.9, 0.9],
        },
        5,
    )
    rois = training_rois(keyframe, 0.8, 5)
    assert rois.labels.tolist()[3:] == [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]  # IoU 0.87 < 0.9: a negative


def test_loaders_carry_the_rois_of_each_keyframe(shards):
    cfg = data_cfg(
        shards, detection=DetectionDataConfig(train_short_side=[120, 120]), crop_size=120, repeated_sampling=4
    )
    train = build_train_loader(cfg, None, 4, 0, 1, seed=0, fields=("boxes",))
    seen: dict[tuple, dict] = {}
    for epoch in range(4):
        train.set_epoch(epoch)
        for batch in train:
            for clip, rois in enumerate(rois_by_clip(batch)):
                expected = _rounded(expected_rois(batch["video_id"][clip], int(batch["timestamp"][clip]), True))
                assert all(expected[box] == actions for box, actions in rois.items())  # the crop may drop some
                seen.setdefault((batch["video_id"][clip], int(batch["timestamp"][clip])), {}).update(rois)
    assert seen == {key: _rounded(expected_rois(*key, train=True)) for key in seen} and len(seen) == 4
    for batch in build_test_loader(cfg, 4, 0, 1, fields=("boxes",)):
        for clip, rois in enumerate(rois_by_clip(batch)):
            assert rois == _rounded(expected_rois(batch["video_id"][clip], int(batch["timestamp"][clip]), False))


def test_batches_follow_the_contract_with_keyframes_without_boxes(shards):
    cfg = data_cfg(shards)
    (batch,) = list(build_test_loader(cfg, 4, 0, 1, fields=("boxes",), pad_multiple=64))
    order = [(v, int(t)) for v, t in zip(batch["video_id"], batch["timestamp"])]
    assert sorted(order) == [("-mov_A1", 1), ("-mov_A1", 2), ("-mov_A1", 3), ("mov_B2", 2)]
    assert batch["key"] == [f"{v}_{t:04d}" for v, t in order]
    rows = len(batch["boxes"])
    assert batch["video"].dtype == torch.float32 and batch["video"].shape == (4, 3, 16, 128, 192)
    assert batch["boxes"].dtype == batch["box_labels"].dtype == batch["box_norm"].dtype == torch.float32
    assert batch["boxes"].shape == batch["box_norm"].shape == (rows, 4) and batch["box_labels"].shape == (rows, 80)
    assert batch["box_index"].dtype == batch["timestamp"].dtype == torch.int64
    counts = torch.bincount(batch["box_index"], minlength=4).tolist()
    assert counts[order.index(("-mov_A1", 1))] == 0 and sum(counts) == rows == 5 + 1 + 1
    assert batch["box_index"].tolist() == sorted(batch["box_index"].tolist())
    single = list(build_test_loader(cfg, 1, 0, 1, fields=("boxes",)))
    empty = single[order.index(("-mov_A1", 1))]
    assert empty["boxes"].shape == (0, 4) and empty["box_labels"].shape == (0, 80) and empty["box_index"].shape == (0,)
    assert empty["video"].shape == (1, 3, 16, 96, 128)  # 96×128 is already a multiple of 32: no padding
    train = build_train_loader(cfg, None, 1, 0, 1, seed=0, fields=("boxes",))
    assert any(len(b["boxes"]) == 0 and b["box_labels"].shape == (0, 80) for b in train)


def test_padding_moves_no_pixel_and_no_box(shards):
    cfg = data_cfg(shards)
    (batch,) = list(build_test_loader(cfg, 4, 0, 1, fields=("boxes",), pad_multiple=64))
    singles = {b["key"][0]: b for b in build_test_loader(cfg, 1, 0, 1, fields=("boxes",), pad_multiple=1)}
    black = (0 - 0.45) / 0.225
    for clip, key in enumerate(batch["key"]):
        alone = singles[key]["video"][0]
        height, width = alone.shape[-2:]
        assert batch["video_size"][clip] == singles[key]["video_size"][0] == [height, width]
        assert torch.equal(batch["video"][clip, :, :, :height, :width], alone)
        assert torch.allclose(batch["video"][clip, :, :, height:], torch.tensor(black))
        assert torch.allclose(batch["video"][clip, :, :, :, width:], torch.tensor(black))
        rows = batch["box_index"] == clip
        assert torch.equal(batch["boxes"][rows], singles[key]["boxes"])
    for row, box in enumerate(batch["boxes"].tolist()):
        clip = int(batch["box_index"][row])
        colour = rectangle_of(batch["video_id"][clip], batch["box_norm"][row].tolist())
        if colour is not None:
            assert_box_frames_rectangle(as_pixels(batch["video"][clip, :, 8]), box, colour, batch["key"][clip])


def test_clip_is_centred_on_the_keyframe_and_repeats_edge_frames(shards):
    metas = samples(shards)
    for batch in build_test_loader(data_cfg(shards), 1, 0, 1, fields=("boxes",)):
        key, pixels = batch["key"][0], as_pixels(batch["video"][0]).float()
        meta = metas[key]
        keyframe = meta["timestamp"] * FPS  # the keyframe's frame in the movie
        first = keyframe - round(meta["keyframe_sec"] * FPS)  # the movie frame the cut starts at
        last = first + meta["num_frames"] - 1
        expected = np.clip(keyframe + 2 * (np.arange(16) - 8), first, last)  # stride 4 at 30 fps = 2 at 15 fps
        grey = pixels[:, :, -4:, :8].mean(dim=(0, 2, 3))  # a corner no rectangle covers
        shown = np.round((grey.numpy() - 10) / 4).astype(int)
        assert shown.tolist() == expected.tolist(), key
        assert shown[8] == keyframe
        if meta["timestamp"] == 3:
            assert shown.tolist()[-5:] == [MOVIE_FRAMES - 1] * 5  # beyond the cut's end: its last frame repeats
        if key == "-mov_A1_0001":
            assert first == 0 and shown[0] == 0  # before the movie's start: its first frame


def test_crops_and_flips_follow_the_seed_and_resume_exactly(shards):
    cfg = data_cfg(shards, repeated_sampling=2)

    def run(loader, stop_after=None):
        boxes, state = [], None
        for step, batch in enumerate(loader):
            boxes.append((batch["key"], batch["boxes"], batch["video"]))
            if step == stop_after:
                state = copy.deepcopy(loader.state_dict())
        return boxes, state

    full, state = run(build_train_loader(cfg, None, 2, 0, 1, seed=4, fields=("boxes",)), stop_after=1)
    again, _ = run(build_train_loader(cfg, None, 2, 0, 1, seed=4, fields=("boxes",)))
    resumed = build_train_loader(cfg, None, 2, 0, 1, seed=4, fields=("boxes",))
    resumed.load_state_dict(state)
    rest, _ = run(resumed)

    def same(a, b):
        return a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])

    assert all(map(same, full, again)) and len(rest) == len(full) - 2 and all(map(same, rest, full[2:]))
    other_seed, _ = run(build_train_loader(cfg, None, 2, 0, 1, seed=5, fields=("boxes",)))
    assert not all(map(same, full, other_seed))


# ----- bad input ------------------------------------------------------------------------------------------------


def rewrite_samples(source: Path, destination: Path, edits: dict) -> None:
    """A copy of the shards with the JSON of the samples named in `edits` changed by `edits[key](meta)`."""
    shutil.copytree(source, destination)
    manifest = json.loads((source / "manifest.json").read_text())
    for shard in manifest["shards"]:
        with tarfile.open(source / shard["file"]) as tar:
            members = [(member, tar.extractfile(member).read()) for member in tar]
        with tarfile.open(destination / shard["file"], "w") as out:
            for member, data in members:
                key = member.name.split(".")[0]
                if member.name.endswith(".json") and key in edits:
                    meta = json.loads(data)
                    edits[key](meta)
                    data = json.dumps(meta).encode()
                member.size = len(data)
                out.addfile(member, io.BytesIO(data))
        shard["bytes"] = (destination / shard["file"]).stat().st_size
        shard["sha256"] = hashlib.sha256((destination / shard["file"]).read_bytes()).hexdigest()
    (destination / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["boxes"][0].__setitem__(2, 1.2), r"'boxes'\[0\] is \[0.25, 0.25, 1.2, 0.75\]: not a box"),
        (
            lambda m: m["boxes"][1].__setitem__(0, 0.95),
            r"'boxes'\[1\] is \[0.95, 0.15, 0.875, 0.5\]: not a box .* x1 <= x2",
        ),
        (lambda m: m["labels"].pop(), r"'labels' has 1 entries for 2 boxes"),
        (lambda m: m["labels"][0].append(81), r"'labels'\[0\] is \[12, 81\]: not a list of action ids in 1..80"),
        (lambda m: m["det_scores"].pop(), r"'det_scores' is .*: not one score per detection \(6 det_boxes\)"),
        (lambda m: m["det_boxes"][0].__setitem__(1, -0.1), r"'det_boxes'\[0\] is .*: not a box"),
        (lambda m: m.__setitem__("keyframe_sec", 9.0), r"keyframe_sec=9.0 lies outside the video's \d\.\d+ s"),
    ],
)
def test_bad_boxes_are_skipped_counted_and_named_like_undecodable_videos(shards, tmp_path, caplog, edit, message):
    rewrite_samples(shards, tmp_path / "bad", {"-mov_A1_0002": edit})
    loader = build_train_loader(
        data_cfg(tmp_path / "bad", max_failure_fraction=0.02, shuffle_buffer=0),
        None,
        1,
        0,
        1,
        seed=0,
        fields=("boxes",),
    )
    with caplog.at_level(logging.WARNING):
        keys = [k for batch in loader for k in batch["key"]]
    assert "-mov_A1_0002" not in keys and len(keys) == 4  # the slot reads its shard again to fill its quota
    assert loader.state_dict()["loader"]["dataset_state"]["failures"] == 1
    (record,) = [r for r in caplog.records if "skipping" in r.message]
    assert "'-mov_A1_0002' of shard" in record.message and "ava-000000.tar" in record.message
    assert re.search(message, record.message), record.message


def test_testing_on_shards_without_detections_names_the_sample_or_uses_ground_truth(tmp_path):
    folder = make_ava_shards(tmp_path / "gt_only", detections=False)
    with pytest.raises(
        MissingDetections,
        match=r"sample '-mov_A1_0002' of shard '.*ava-000000.tar' has no person "
        r"detections .*test on the ground-truth boxes instead",
    ):
        list(build_test_loader(data_cfg(folder), 4, 0, 1, fields=("boxes",)))
    cfg = data_cfg(folder, detection=DetectionDataConfig(test_boxes="ground_truth"))
    (batch,) = list(build_test_loader(cfg, 4, 0, 1, fields=("boxes",)))
    assert len(batch["boxes"]) == 5 and batch["box_labels"].sum().item() == 6
    assert len(list(build_train_loader(cfg, None, 1, 0, 1, seed=0, fields=("boxes",)))) == 3  # training: GT alone


def test_options_detection_cannot_use_are_refused_by_its_rules_naming_the_key(shards):
    recipe = load_recipe(
        Path(__file__).parents[1] / "recipes" / "demo_ava_ft.yaml",
        [
            f"data.train={shards}",
            "data.val=null",
            "train.eval_every=0",
            "data.test_clips=10",
            "augment.rand_augment=rand-m7-n2",
            "data.detection.train_short_side=[48,100]",
            "model.num_classes=80",
        ],
    )
    problems = detect.rules(recipe)
    assert any(p.startswith("data.test_clips=10: detection tests one full-frame clip") for p in problems), problems
    assert any(p.startswith("augment.rand_augment='rand-m7-n2': boxes cannot follow it") for p in problems)
    assert any(
        p.startswith("data.detection.train_short_side=[48, 100]: must be [min, max] with data.crop_size=64")
        for p in problems
    )
    assert len(problems) == 3
    with pytest.raises(ValueError, match=r"short_side_range must be \[min, max\] with crop size 64 <= min"):
        DetectionTrainTransform(64, [48, 100], flip=True)


def test_the_number_of_action_ids_is_the_loaders_to_take(shards):
    cfg = data_cfg(shards)
    passed = build_train_loader(cfg, None, 2, 0, 1, seed=0, fields=("boxes",), num_actions=90)
    assert passed.stream.clip_maker.num_actions == 90
    from_manifest = build_train_loader(cfg, None, 2, 0, 1, seed=0, fields=("boxes",))
    assert from_manifest.stream.clip_maker.num_actions == 80 == next(iter(from_manifest))["box_labels"].shape[1]


def test_detection_recipe_keys_are_declared_with_their_ranges():
    demo = Path(__file__).parents[1] / "recipes" / "demo_ft.yaml"
    recipe = load_recipe(demo)
    assert recipe.data.detection == DetectionDataConfig() and recipe.data.detection.train_short_side == [256, 320]
    assert (recipe.data.detection.train_score, recipe.data.detection.test_score) == (0.8, 0.8)
    assert choice_problems(load_recipe(demo, ["data.detection.test_boxes=all"])) == [
        "key 'data.detection.test_boxes' is 'all'; expected one of detections, ground_truth"
    ]
    with pytest.raises(RecipeError, match=r"key 'data.detection.train_score' is 1.5; expected in \[0, 1\]"):
        load_recipe(demo, ["data.detection.train_score=1.5"])
