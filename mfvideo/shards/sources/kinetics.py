"""Kinetics 400/600/700: the official annotation CSV or a plain `path label` list.

Class ids are the sorted class names of the CSV (so K400, K600 and K700 each get their own stable label space),
or the order of an explicit `class_map` file (JSON {name: id} or one name per line). A CSV without a `label`
column (the official test splits) is refused unless `unlabelled` says that is intended; every label is then -1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mfvideo.common.fileio import PathEscape, plain_name
from mfvideo.shards.items import Item, ItemList, Reject
from mfvideo.shards.sources.common import SourceError, csv_rows, index_files, label_index, load_class_map, read_text

_REQUIRED = ("youtube_id", "time_start", "time_end")


@dataclass(frozen=True)
class KineticsSource:
    videos: str  # folder of videos: flat or in class folders
    csv: str | None = None  # label,youtube_id,time_start,time_end,split[,is_cc]
    list_file: str | None = None  # lines "path label" (path relative to `videos`; label a name or an int)
    class_map: str | None = None
    unlabelled: bool = False  # the CSV has no label column, on purpose (a test split)

    name = "kinetics"

    def __post_init__(self) -> None:
        if (self.csv is None) == (self.list_file is None):
            raise SourceError("kinetics needs exactly one of --csv or --list")
        if self.unlabelled and self.csv is None:
            raise SourceError("kinetics --unlabelled is for a --csv without a label column")

    def list_items(self) -> ItemList:
        return self._from_csv() if self.csv is not None else self._from_list()

    def _csv_records(self) -> list[tuple[str, dict[str, str]]]:
        """("file:line", {column: value}) per row, each row checked to have a value for every column."""
        rows = csv_rows(self.csv)
        if not rows:
            raise SourceError(f"{self.csv}: empty; expected a header label,youtube_id,time_start,time_end,split")
        columns = [column.strip() for column in rows[0][1]]
        missing = [column for column in _REQUIRED if column not in columns]
        if missing:
            raise SourceError(f"{self.csv}: needs columns {', '.join(_REQUIRED)}; found {', '.join(columns)}")
        if "label" not in columns and not self.unlabelled:
            raise SourceError(
                f"{self.csv}: no 'label' column (found {', '.join(columns)}), so every label would be "
                f"-1; for an unlabelled split (a test split) pass --unlabelled"
            )
        if "label" in columns and self.unlabelled:
            raise SourceError(f"{self.csv}: has a 'label' column but --unlabelled was given; drop --unlabelled")
        records = []
        for where, row in rows[1:]:
            if len(row) != len(columns):
                raise SourceError(f"{where}: {len(row)} values for the {len(columns)} columns {','.join(columns)}")
            record = dict(zip(columns, (value.strip() for value in row)))
            empty = [column for column in _REQUIRED if not record[column]]
            if empty:
                raise SourceError(f"{where}: no value for {', '.join(empty)}")
            records.append((where, record))
        return records

    def _from_csv(self) -> ItemList:
        records = self._csv_records()
        names = sorted({record.get("label", "") for _, record in records} - {""})
        classes = load_class_map(self.class_map) if self.class_map else names
        files = index_files(self.videos)
        items, rejects = [], []
        for where, record in records:
            try:
                plain_name(record["youtube_id"], f"{where}: youtube_id")
            except PathEscape as err:  # an id that is a path would shard a file outside the videos folder
                rejects.append(Reject(record["youtube_id"], None, str(err)))
                continue
            try:
                start, end = int(float(record["time_start"])), int(float(record["time_end"]))
            except ValueError:
                raise SourceError(
                    f"{where}: bad time_start/time_end {record['time_start']!r}, {record['time_end']!r}"
                ) from None
            clip_id = f"{record['youtube_id']}_{start:06d}_{end:06d}"
            path = files.get(clip_id) or files.get(record["youtube_id"]) or os.path.join(self.videos, clip_id + ".mp4")
            label_name = record.get("label", "")
            label = label_index(classes, label_name, where) if label_name else -1
            items.append(Item(id=clip_id, kind="video", label=label, label_name=label_name, path=path))
        return ItemList(items=items, classes=classes, rejects=rejects)

    def _from_list(self) -> ItemList:
        entries = []
        for line, text in enumerate(read_text(self.list_file).splitlines(), start=1):
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
            items.append(
                Item(
                    id=os.path.splitext(path)[0],
                    kind="video",
                    label=label,
                    label_name=classes[label] if label >= 0 else "",
                    path=path if os.path.isabs(path) else os.path.join(self.videos, path),
                )
            )
        return ItemList(items=items, classes=classes)
