"""Helpers shared by the dataset sources: class maps and finding files by name stem."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from mfvideo.shards.items import VIDEO_EXTENSIONS


class SourceError(ValueError):
    """Bad annotation input; the message names the file and the value at fault."""


def load_class_map(path: str) -> list[str]:
    """Class names in label order from a JSON object {name: id} or a text file with one name per line (id = line)."""
    text = Path(path).read_text()
    if path.endswith(".json"):
        mapping = json.loads(text)
        if not isinstance(mapping, dict):
            raise SourceError(f"{path}: expected a JSON object {{class name: id}}")
        ids = {int(i) for i in mapping.values()}
        if ids != set(range(len(mapping))):
            raise SourceError(f"{path}: class ids must be 0..{len(mapping) - 1} without gaps")
        return [name for name, _ in sorted(mapping.items(), key=lambda kv: int(kv[1]))]
    names = [line.strip() for line in text.splitlines() if line.strip()]
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
