"""`tools/predict.py CKPT VIDEO_OR_FOLDER...`: what a trained model says about video files of one's own.

Classification: per file the top classes with their probabilities, averaged over the views `tools/test.py` takes
(`mfvideo.app.inference`), printed as a table and, with `--out`, written as JSON lines. Detection: the actions of
the person boxes of an AVA-format CSV (`--boxes`: `video_id,timestamp,x1,y1,x2,y2[,...]`, the video id being the
file's stem, the timestamp whole seconds from the start of the file, the box normalised to the frame), or the ground
truth of a split's AVA shards (`--boxes SHARD_FOLDER`), one JSON line per box; `--render out.mp4` draws the boxes
with their top actions on the frames of the clip around each keyframe.

Bad input stops with exit code 2, naming the file, before anything is written: a checkpoint that cannot be used, a
file given by name that is not a video, a boxes CSV that does not parse, `--render` or `--boxes` on a model that does
not detect. Files found in a folder that do not decode are skipped and counted instead.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from mfvideo.app.inference import (
    BoxPrediction,
    CheckpointError,
    LoadedModel,
    NotAVideo,
    Prediction,
    load_model,
    read_media,
)
from mfvideo.common.fileio import write_atomic
from mfvideo.common.log import setup_logging
from mfvideo.data.shardlist import list_shards
from mfvideo.data.tarstream import iter_shard

# What a folder is searched for (a file named on the command line is tried whatever its suffix).
MEDIA_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".jpg", ".jpeg", ".png")
BOX_COLOURS = ((255, 64, 64), (64, 224, 64), (64, 128, 255), (255, 208, 0), (224, 64, 224), (0, 224, 224))
RENDERED_ACTIONS = 3
RENDER_SHORT_SIDE = 360
BOX_LINE_WIDTH = 3
FONT_SIZE = 14


class InputError(ValueError):
    """Input that stops the command with exit code 2; the message names the file."""


def media_files(paths: Sequence[str]) -> tuple[list[Path], set[Path]]:
    """(the files to predict, in order; those named directly, whose failure stops the run)."""
    files, named = [], set()
    for given in map(Path, paths):
        if given.is_dir():
            files += sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
        elif given.is_file():
            files.append(given)
            named.add(given)
        else:
            raise InputError(f"{given}: no such file or folder")
    return files, named


def shard_boxes(pattern: str) -> dict[str, dict[int, list[list[float]]]]:
    """{video_id: {timestamp: ground-truth boxes}} of the keyframe samples of a split's AVA shards; InputError
    naming the split when it cannot be read or holds no keyframes."""
    boxes: dict[str, dict[int, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    try:
        for shard in list_shards(pattern):
            for key, parts in iter_shard(shard.url, size=shard.bytes):
                meta = json.loads(parts["json"])
                if "video_id" in meta and "timestamp" in meta:
                    boxes[meta["video_id"]][int(meta["timestamp"])] += meta.get("boxes") or []
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"--boxes {pattern}: cannot read its shards: {err}") from None
    if not boxes:
        raise InputError(f"--boxes {pattern}: its shards hold no AVA keyframes")
    return boxes


def read_boxes(path: str, min_score: float = 0.0) -> dict[str, dict[int, list[list[float]]]]:
    """{video_id: {timestamp: [[x1, y1, x2, y2], ...]}} from an AVA-format CSV, leaving out rows whose score (the
    eighth column, as person detections have it) is below `min_score`; InputError naming file and line."""
    boxes: dict[str, dict[int, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise InputError(f"--boxes {path}: cannot read: {err.strerror or err}") from None
    for number, row in enumerate(csv.reader(lines), start=1):
        if not row:
            continue
        try:
            video_id, timestamp = row[0], int(row[1])
            box = [float(value) for value in row[2:6]]
        except (IndexError, ValueError):
            raise InputError(
                f"--boxes {path} line {number}: expected video_id,timestamp,x1,y1,x2,y2 (whole "
                f"seconds, a box normalised to the frame), got {','.join(row)!r}"
            ) from None
        if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
            raise InputError(f"--boxes {path} line {number}: box {box} is not x1 < x2, y1 < y2 within [0, 1]")
        try:
            score = float(row[7]) if len(row) > 7 and row[7] else None
        except ValueError:
            raise InputError(f"--boxes {path} line {number}: score {row[7]!r} is not a number") from None
        if score is None or score >= min_score:
            boxes[video_id][timestamp].append(box)
    if not boxes:
        raise InputError(f"--boxes {path}: no boxes")
    return boxes


def table(prediction: Prediction) -> str:
    rows = [f"{prediction.file}  ({prediction.num_views} views){'  ' + prediction.note if prediction.note else ''}"]
    rows += [
        f"  {rank}. {name:<40} {probability:7.2%}"
        for rank, (_, name, probability) in enumerate(prediction.top, start=1)
    ]
    return "\n".join(rows)


def box_table(predictions: list[BoxPrediction]) -> str:
    rows = []
    for p in predictions:
        actions = ", ".join(f"{name} {score:.2f}" for _, name, score in p.actions[:RENDERED_ACTIONS])
        rows.append(f"{p.file} t={p.timestamp}s box ({', '.join(f'{v:.3f}' for v in p.box)}): {actions}")
    return "\n".join(rows)


def render(loaded: LoadedModel, video: Path, predictions: list[BoxPrediction], out: str) -> Path:
    """An H.264 MP4 of every frame of the clip around each keyframe, in time order, scaled up by a whole factor to a
    short side of at least RENDER_SHORT_SIDE (so that labels can be read), each box drawn in its colour with its
    top actions and scores."""
    from PIL import Image, ImageDraw, ImageFont

    from mfvideo.shards.encode import encode_rgb_frames

    by_time: dict[int, list[BoxPrediction]] = defaultdict(list)
    for prediction in predictions:
        by_time[prediction.timestamp].append(prediction)
    try:
        font = ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow before 10.1: one bitmap size
        font = ImageFont.load_default()
    media, _ = read_media(video)  # decoded once for every keyframe
    frames = []
    for timestamp in sorted(by_time):
        clip = loaded.keyframe_frames(media, timestamp)
        scale = max(1, math.ceil(RENDER_SHORT_SIDE / min(clip.shape[1:3])))
        height, width = clip.shape[1] * scale // 2 * 2, clip.shape[2] * scale // 2 * 2  # H.264 wants even sides
        for frame in clip:
            image = Image.fromarray(frame).resize((clip.shape[2] * scale, clip.shape[1] * scale), Image.BILINEAR)
            image = image.crop((0, 0, width, height))
            draw = ImageDraw.Draw(image)
            for number, box in enumerate(by_time[timestamp]):
                colour = BOX_COLOURS[number % len(BOX_COLOURS)]
                x1, y1, x2, y2 = box_pixels(box.box, width, height)
                draw.rectangle((x1, y1, x2, y2), outline=colour, width=BOX_LINE_WIDTH)
                text = " ".join(f"{name} {score:.2f}" for _, name, score in box.actions[:RENDERED_ACTIONS])
                above = y1 - FONT_SIZE - 4
                left = max(0, min(x1 + 2, width - draw.textlength(text, font=font) - 2))  # kept inside the frame
                draw.text((left, above if above >= 0 else y2 + 2), text, fill=colour, font=font)
            frames.append(np.asarray(image))
    data, _ = encode_rgb_frames(frames, round(media.fps) or 30)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_path, data)
    return out_path


def box_pixels(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """A normalised (x1, y1, x2, y2) box in pixels of a width × height frame, as `render` draws it."""
    x1, y1, x2, y2 = box
    return round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height)


@dataclass(frozen=True)
class PredictOptions:
    out: Optional[str] = None  # JSON lines, one per file (detection: per box)
    boxes: Optional[str] = None  # detection: AVA-format CSV of person boxes
    min_score: float = 0.0  # detection: boxes whose CSV score is below are left out
    render_to: Optional[str] = None  # detection: the MP4 to draw the boxes and their actions into
    top_k: int = 5
    batch_size: Optional[int] = None  # views per forward pass (default: train.micro_batch_size)


def run_predict(
    checkpoint: str,
    paths: Sequence[str],
    recipe: Optional[str] = None,
    overrides: Sequence[str] = (),
    options: PredictOptions = PredictOptions(),
) -> int:
    """Entry point of tools/predict.py; returns the exit code (2 for bad input, module docstring)."""
    setup_logging()
    try:
        loaded = load_model(checkpoint, recipe, overrides)
        detect = loaded.recipe.model.task == "detect"
        if (options.render_to or options.boxes) and not detect:
            raise InputError(
                f"{'--render' if options.render_to else '--boxes'} needs a detection model; {checkpoint} is a "
                f"{loaded.recipe.model.task} model"
            )
        if detect and not options.boxes:
            raise InputError(f"{checkpoint} is a detection model: pass --boxes CSV with the person boxes to score")
        if not options.boxes:
            box_table_of = {}
        elif Path(options.boxes).is_dir():  # a split's shards: their ground-truth boxes
            box_table_of = shard_boxes(options.boxes)
        else:
            box_table_of = read_boxes(options.boxes, options.min_score)
        files, named = media_files(paths)
        if options.render_to and len(files) != 1:
            raise InputError(f"--render draws one video; {len(files)} were given")
    except (InputError, CheckpointError) as err:
        print(f"predict: {err}", file=sys.stderr)
        return 2
    rows, skipped = [], []
    for path in tqdm(files, unit="file", disable=len(files) < 2, file=sys.stderr):
        try:
            if detect:
                result = (
                    loaded.predict(path, box_table_of[path.stem], top_k=options.top_k)
                    if path.stem in box_table_of
                    else []
                )
                if not result:
                    skipped.append(f"{path}: no boxes for video id {path.stem!r} in {options.boxes}")
                    continue
                print(box_table(result))
                rows += [p.as_json() for p in result]
                if options.render_to:
                    print(f"rendered: {render(loaded, path, result, options.render_to)}")
            else:
                prediction = loaded.predict(path, top_k=options.top_k, batch_size=options.batch_size)
                print(table(prediction))
                rows.append(prediction.as_json())
        except NotAVideo as err:
            if path in named:
                print(f"predict: {err}", file=sys.stderr)
                return 2
            skipped.append(str(err))
    for reason in skipped:
        print(f"skipped {reason}", file=sys.stderr)
    if options.out:
        write_atomic(Path(options.out), "".join(json.dumps(row) + "\n" for row in rows).encode())
    results = f"; results: {options.out}" if options.out else ""
    print(f"{len(files) - len(skipped)} file(s) predicted, {len(skipped)} skipped{results}", file=sys.stderr)
    return 0
