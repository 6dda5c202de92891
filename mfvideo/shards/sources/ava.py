"""AVA v2.2: one sample per keyframe, a clip cut from the movie around it plus all of its boxes.

Labels are the original AVA action ids (1-based, as in the CSV and the pbtxt); the manifest's `classes[i]` is the
name of action id i+1 ("" for ids the action list leaves out). Actions outside the list are dropped from a box,
and a box left without actions is dropped: pass the full 80-class list for training shards; the 60-class
ActivityNet list is what evaluation uses.

A CSV row with bad values (a box outside [0, 1] or with x2 < x1, an action id outside 1..the list's largest, a
timestamp that is not a whole second ≥ 0, a detection without a score, a wrong number of columns) is left out and
recorded as a reject naming its file and line; the rest of the file is used. A file that is not UTF-8 CSV, or an
action list that does not parse, stops the job before any work. A keyframe outside its movie is rejected when its
clip is cut.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

from mfvideo.common.ava_files import (
    AvaFormatError,
    BadRow,
    LabelMap,
    read_annotations,
    read_excluded,
    read_label_map,
    read_person_detections,
)
from mfvideo.shards.items import Item, ItemList, Reject
from mfvideo.shards.sources.common import SourceError, index_files


@dataclass(frozen=True)
class AvaSource:
    action_list: str  # ava_action_list_v2.2(.._for_activitynet_2019).pbtxt
    movies: str  # folder of <video_id>.<ext>
    annotations: str | None = None  # video_id,timestamp,x1,y1,x2,y2,action_id,person_id
    excluded: str | None = None  # video_id,timestamp rows to leave out
    detections: str | None = None  # video_id,timestamp,x1,y1,x2,y2,action_id(unused),score
    min_detection_score: float = 0.0
    half_span: float = 1.5  # seconds each side of the keyframe (16x4 frames at 30 fps need 1.07)

    name = "ava"

    def __post_init__(self) -> None:
        if self.annotations is None and self.detections is None:
            raise SourceError("ava needs --annotations and/or --detections")

    def list_items(self) -> ItemList:
        rejects: list[Reject] = []

        def reject_row(path: str) -> BadRow:
            name = os.path.basename(path)
            return lambda line, reason: rejects.append(Reject(f"{name}:{line}", path, reason))

        try:
            label_map = read_label_map(self.action_list)
            boxes = self._ground_truth(label_map, reject_row(self.annotations)) if self.annotations else {}
            detections = self._detections(reject_row(self.detections)) if self.detections else {}
            excluded = read_excluded(self.excluded, reject_row(self.excluded)) if self.excluded else set()
        except AvaFormatError as err:
            raise SourceError(str(err)) from None
        actions = label_map.names
        classes = [actions.get(i, "") for i in range(1, max(actions) + 1)]
        movies = index_files(self.movies)
        items = []
        for video_id, timestamp in sorted((set(boxes) | set(detections)) - excluded):
            people = boxes.get((video_id, timestamp), {})
            extra = {
                "video_id": video_id,
                "timestamp": timestamp,
                "boxes": [list(box) for box, _ in people],
                "labels": [sorted(labels) for labels in people.values()],
                "person_ids": [person for _, person in people],
            }
            if self.detections:
                found = detections.get((video_id, timestamp), [])
                extra["det_boxes"] = [list(box) for box, _ in found]
                extra["det_scores"] = [score for _, score in found]
            path = movies.get(video_id) or os.path.join(self.movies, video_id + ".mp4")
            params = {"start": timestamp - self.half_span, "end": timestamp + self.half_span, "keyframe": timestamp}
            items.append(Item(id=f"{video_id}_{timestamp:04d}", kind="clip", path=path, extra=extra, params=params))
        return ItemList(items=items, classes=classes, rejects=rejects)

    def _ground_truth(self, label_map: LabelMap, on_bad_row: BadRow) -> dict:
        """(video, second) -> {(box, person id): set of action ids}, boxes in order of first appearance."""
        keyframes: dict = defaultdict(dict)
        for row in read_annotations(self.annotations, label_map.known_actions, on_bad_row):
            if row.action in label_map.names:
                keyframes[row.keyframe].setdefault((row.box, row.person), set()).add(row.action)
        return keyframes

    def _detections(self, on_bad_row: BadRow) -> dict:
        found: dict = defaultdict(list)
        for row in read_person_detections(self.detections, on_bad_row):
            if row.score >= self.min_detection_score:
                found[row.keyframe].append((row.box, row.score))
        return found
