"""Helpers shared by the dataset sources: reading annotation files (errors name the file and line), class maps and
finding files by name stem."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Iterator

from mfvideo.shards.items import VIDEO_EXTENSIONS


class SourceError(ValueError):
    """Bad annotation input; the message names the file and the value at fault."""


def read_text(path: str) -> str:
    """An annotation file as text: UTF-8 (a leading byte-order mark is dropped); other bytes are an error naming
    the file and line."""
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        raise SourceError(
            f"{path}:{line}: byte {data[err.start]:#04x} at column {column} is not UTF-8; save the file as UTF-8"
        ) from None


def csv_rows(path: str) -> list[tuple[str, list[str]]]:
    """("file:line", fields) of every non-empty row of a CSV file, the line being where the row starts."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    rows = []
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as err:
            raise SourceError(f"{path}:{line}: not a CSV row: {err}") from None
        if row:
            rows.append((f"{path}:{line}", row))


def load_json(path: str) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise SourceError(f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}") from None


def load_class_map(path: str) -> list[str]:
    """Class names in label order from a JSON object {name: id} or a text file with one name per line (id = line)."""
    if path.endswith(".json"):
        mapping = load_json(path)
        if not isinstance(mapping, dict):
            raise SourceError(f"{path}: expected a JSON object {{class name: id}}")
        try:
            ids = {int(i) for i in mapping.values()}
        except (TypeError, ValueError):
            raise SourceError(f"{path}: class ids must be integers") from None
        if ids != set(range(len(mapping))):
            raise SourceError(f"{path}: class ids must be 0..{len(mapping) - 1} without gaps")
        return [name for name, _ in sorted(mapping.items(), key=lambda kv: int(kv[1]))]
    names = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise SourceError(f"{path}: a class name appears twice")
    return names


def label_index(classes: list[str], name: str, where: str) -> int:
    try:
        return classes.index(name)
    except ValueError:
        raise SourceError(f"{where}: class {name!r} is not in the class list") from None


def walk_files(root: str, extensions: tuple[str, ...]) -> Iterator[tuple[str, str, str]]:
    """(directory, stem, file name) of every file under `root` with one of `extensions`, in sorted order."""
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for file in sorted(files):
            stem, ext = os.path.splitext(file)
            if ext.lower() in extensions:
                yield directory, stem, file


def index_files(root: str, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> dict[str, str]:
    """Name stem -> path for every file under `root` (flat or in sub-folders); the first in sorted order wins."""
    if not os.path.isdir(root):
        raise SourceError(f"video folder {root} does not exist")
    found: dict[str, str] = {}
    for directory, stem, file in walk_files(root, extensions):
        found.setdefault(stem, os.path.join(directory, file))
    return found
