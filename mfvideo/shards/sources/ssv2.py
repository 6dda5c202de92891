"""Something-Something v2: labels.json (template -> id), train/validation/test.json, <id>.webm videos."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mfvideo.common.fileio import PathEscape, plain_name
from mfvideo.shards.items import Item, ItemList, Reject
from mfvideo.shards.sources.common import SourceError, load_json


@dataclass(frozen=True)
class SSv2Source:
    labels: str  # labels.json: {"Approaching something with your camera": "0", ...}
    annotations: str  # train.json / validation.json: [{"id", "label", "template", "placeholders"}]; test: [{"id"}]
    videos: str  # folder of <id>.webm

    name = "ssv2"

    def list_items(self) -> ItemList:
        labels = load_json(self.labels)
        try:
            template_ids = {name: int(i) for name, i in labels.items()}
        except (AttributeError, TypeError, ValueError):
            raise SourceError(f"{self.labels}: expected a JSON object {{template: integer id}}") from None
        if set(template_ids.values()) != set(range(len(template_ids))):
            raise SourceError(f"{self.labels}: ids must be 0..{len(template_ids) - 1} without gaps")
        classes = sorted(template_ids, key=template_ids.get)
        entries = load_json(self.annotations)
        if not isinstance(entries, list):
            raise SourceError(f'{self.annotations}: expected a JSON list of {{"id", "template", ...}} objects')
        items, rejects = [], []
        for number, entry in enumerate(entries):
            if not isinstance(entry, dict) or "id" not in entry:
                raise SourceError(f'{self.annotations}: entry {number} has no "id": {entry!r}')
            video_id = str(entry["id"])
            try:
                plain_name(video_id, f"{self.annotations}: entry {number}: id")
            except PathEscape as err:  # an id that is a path would shard a file outside the videos folder
                rejects.append(Reject(video_id, None, str(err)))
                continue
            label, label_name = -1, ""
            if "template" in entry:
                label_name = entry["template"].replace("[", "").replace("]", "")
                if label_name not in template_ids:
                    raise SourceError(
                        f"{self.annotations}: video {video_id}: template {entry['template']!r} is not in {self.labels}"
                    )
                label = template_ids[label_name]
            items.append(
                Item(
                    id=video_id,
                    kind="video",
                    label=label,
                    label_name=label_name,
                    path=os.path.join(self.videos, f"{video_id}.webm"),
                )
            )
        return ItemList(items=items, classes=classes, rejects=rejects)
