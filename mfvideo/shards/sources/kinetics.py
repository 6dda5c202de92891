"""Kinetics 400/600/700: the official annotation CSV or a plain `path label` list.

Class ids are the sorted class names of the CSV (so K400, K600 and K700 each get their own stable label space),
or the order of an explicit `class_map` file (JSON {name: id} or one name per line).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

from mfvideo.shards.items import Item, ItemList
from mfvideo.shards.sources.common import SourceError, index_files, label_index, load_class_map

_REQUIRED = ("youtube_id", "time_start", "time_end")


@dataclass(frozen=True)
class KineticsSource:
    videos: str                     # folder of videos: flat or in class folders
    csv: str | None = None          # label,youtube_id,time_start,time_end,split[,is_cc]
    list_file: str | None = None    # lines "path label" (path relative to `videos`; label a name or an int)
    class_map: str | None = None

    name = "kinetics"

    def __post_init__(self) -> None:
        if (self.csv is None) == (self.list_file is None):
            raise SourceError("kinetics needs exactly one of --csv or --list")

    def list_items(self) -> ItemList:
        return self._from_csv() if self.csv is not None else self._from_list()

    def _from_csv(self) -> ItemList:
        with open(self.csv, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and any(column not in rows[0] for column in _REQUIRED):
            raise SourceError(f"{self.csv}: needs columns {', '.join(_REQUIRED)}; found {', '.join(rows[0])}")
        names = sorted({row.get("label") or "" for row in rows} - {""})
        classes = load_class_map(self.class_map) if self.class_map else names
        files = index_files(self.videos)
        items = []
        for line, row in enumerate(rows, start=2):
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except ValueError:
                raise SourceError(f"{self.csv}:{line}: bad time_start/time_end {row['time_start']!r}, "
                                  f"{row['time_end']!r}") from None
            clip_id = f"{row['youtube_id']}_{start:06d}_{end:06d}"
            path = files.get(clip_id) or files.get(row["youtube_id"]) or os.path.join(self.videos, clip_id + ".mp4")
            label_name = row.get("label") or ""
            label = label_index(classes, label_name, f"{self.csv}:{line}") if label_name else -1
            items.append(Item(id=clip_id, kind="video", label=label, label_name=label_name, path=path))
        return ItemList(items=items, classes=classes)

    def _from_list(self) -> ItemList:
        entries = []
        with open(self.list_file) as handle:
            for line, text in enumerate(handle, start=1):
                if text.strip() and not text.lstrip().startswith("#"):
                    parts = text.strip().rsplit(None, 1)
                    if len(parts) != 2:
                        raise SourceError(f"{self.list_file}:{line}: expected 'path label', got {text.strip()!r}")
                    entries.append((line, *parts))
        numeric = all(label.lstrip("-").isdigit() for _, _, label in entries)
        if self.class_map:
            classes = load_class_map(self.class_map)
        elif numeric:
            classes = [str(i) for i in range(max((int(label) for _, _, label in entries), default=-1) + 1)]
        else:
            classes = sorted({label for _, _, label in entries})
        items = []
        for line, path, label_text in entries:
            where = f"{self.list_file}:{line}"
            label = int(label_text) if numeric else label_index(classes, label_text, where)
            if not -1 <= label < len(classes):
                raise SourceError(f"{where}: label {label} outside 0..{len(classes) - 1}")
            items.append(Item(id=os.path.splitext(path)[0], kind="video", label=label,
                              label_name=classes[label] if label >= 0 else "",
                              path=path if os.path.isabs(path) else os.path.join(self.videos, path)))
        return ItemList(items=items, classes=classes)
