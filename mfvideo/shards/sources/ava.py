"""AVA v2.2: one sample per keyframe, a clip cut from the movie around it plus all of its boxes.

Labels are the original AVA action ids (1-based, as in the CSV and the pbtxt); the manifest's `classes[i]` is the
name of action id i+1 ("" for ids the action list leaves out). Actions outside the list are dropped from a box,
and a box left without actions is dropped: pass the full 80-class list for training shards; the 60-class
ActivityNet list is what evaluation uses.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass

from mfvideo.shards.items import Item, ItemList
from mfvideo.shards.sources.common import SourceError, csv_rows, index_files, read_text

# The full list (ava_action_list_v2.2.pbtxt) has `label { name, label_id, label_type }` blocks, the ActivityNet
# subset (..._for_activitynet_2019.pbtxt) `item { name, id }` ones.
_ITEM = re.compile(r"\b(?:item|label)\s*\{(.*?)\}", re.S)
_NAME = re.compile(r'name:\s*"([^"]*)"')
_ID = re.compile(r"\b(?:label_)?id:\s*(\d+)")


def parse_action_list(path: str) -> dict[int, str]:
    """AVA action-list pbtxt -> {action id: name}."""
    actions = {}
    for block in _ITEM.findall(read_text(path)):
        name, action_id = _NAME.search(block), _ID.search(block)
        if not name or not action_id:
            raise SourceError(f"{path}: item without name or id: {block.strip()!r}")
        actions[int(action_id.group(1))] = name.group(1)
    if not actions:
        raise SourceError(f"{path}: no action items found")
    return actions


def _keyframe(video_id: str, timestamp: str, where: str) -> tuple[str, int]:
    try:
        return video_id, int(float(timestamp))
    except ValueError:
        raise SourceError(f"{where}: bad timestamp {timestamp!r}") from None


def _box(values: list[str], where: str) -> tuple[float, ...]:
    try:
        box = tuple(float(v) for v in values)
    except ValueError:
        raise SourceError(f"{where}: bad box {values}") from None
    if not all(0.0 <= v <= 1.0 for v in box) or box[0] > box[2] or box[1] > box[3]:
        raise SourceError(f"{where}: box {values} is not normalised x1<=x2, y1<=y2 in [0, 1]")
    return box


@dataclass(frozen=True)
class AvaSource:
    action_list: str                   # ava_action_list_v2.2(.._for_activitynet_2019).pbtxt
    movies: str                        # folder of <video_id>.<ext>
    annotations: str | None = None     # video_id,timestamp,x1,y1,x2,y2,action_id,person_id
    excluded: str | None = None        # video_id,timestamp rows to leave out
    detections: str | None = None      # video_id,timestamp,x1,y1,x2,y2,action_id(unused),score
    min_detection_score: float = 0.0
    half_span: float = 1.5             # seconds each side of the keyframe (16x4 frames at 30 fps need 1.07)

    name = "ava"

    def __post_init__(self) -> None:
        if self.annotations is None and self.detections is None:
            raise SourceError("ava needs --annotations and/or --detections")

    def list_items(self) -> ItemList:
        actions = parse_action_list(self.action_list)
        classes = [actions.get(i, "") for i in range(1, max(actions) + 1)]
        boxes = self._ground_truth(actions) if self.annotations else {}
        detections = self._detections() if self.detections else {}
        excluded = self._excluded() if self.excluded else set()
        movies = index_files(self.movies)
        items = []
        for video_id, timestamp in sorted((set(boxes) | set(detections)) - excluded):
            people = boxes.get((video_id, timestamp), {})
            extra = {"video_id": video_id, "timestamp": timestamp,
                     "boxes": [list(box) for box, _ in people],
                     "labels": [sorted(labels) for labels in people.values()],
                     "person_ids": [person for _, person in people]}
            if self.detections:
                found = detections.get((video_id, timestamp), [])
                extra["det_boxes"] = [list(box) for box, _ in found]
                extra["det_scores"] = [score for _, score in found]
            path = movies.get(video_id) or os.path.join(self.movies, video_id + ".mp4")
            params = {"start": timestamp - self.half_span, "end": timestamp + self.half_span, "keyframe": timestamp}
            items.append(Item(id=f"{video_id}_{timestamp:04d}", kind="clip", path=path, extra=extra, params=params))
        return ItemList(items=items, classes=classes)

    def _ground_truth(self, actions: dict[int, str]) -> dict:
        """(video, second) -> {(box, person id): set of action ids}, boxes in order of first appearance."""
        keyframes: dict = defaultdict(dict)
        for where, row in csv_rows(self.annotations):
            if len(row) != 8:
                raise SourceError(f"{where}: expected 8 columns video_id,timestamp,x1,y1,x2,y2,action_id,person_id")
            key = _keyframe(row[0], row[1], where)
            try:
                action, person = int(row[6]), int(row[7])
            except ValueError:
                raise SourceError(f"{where}: bad action_id/person_id {row[6]!r}, {row[7]!r}") from None
            if action in actions:
                keyframes[key].setdefault((_box(row[2:6], where), person), set()).add(action)
        return keyframes

    def _excluded(self) -> set[tuple[str, int]]:
        keyframes = set()
        for where, row in csv_rows(self.excluded):
            if len(row) != 2:
                raise SourceError(f"{where}: expected 2 columns video_id,timestamp")
            keyframes.add(_keyframe(row[0], row[1], where))
        return keyframes

    def _detections(self) -> dict:
        found: dict = defaultdict(list)
        for where, row in csv_rows(self.detections):
            if len(row) < 7:
                raise SourceError(f"{where}: expected video_id,timestamp,x1,y1,x2,y2,[action_id,]score")
            try:
                score = float(row[-1])
            except ValueError:
                raise SourceError(f"{where}: bad score {row[-1]!r}") from None
            if score >= self.min_detection_score:
                found[_keyframe(row[0], row[1], where)].append((_box(row[2:6], where), score))
        return found
