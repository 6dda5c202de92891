"""What a source lists (items) and what processing one item gives (a sample or a reject).

Sources only list; `mfvideo.shards.produce` (run in worker processes) turns an item into media bytes and
metadata. Items are plain picklable data so that workers need nothing but the item itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")


@dataclass(frozen=True)
class Item:
    """One input. `kind` picks the producer: video (a file), clip (a cut of a movie), image, or demo."""

    id: str
    kind: str
    label: int = -1
    label_name: str = ""
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # extra JSON fields (AVA boxes, ...)
    params: dict[str, Any] = field(default_factory=dict)  # producer parameters (cut times, demo spec)


@dataclass(frozen=True)
class ItemList:
    items: list[Item]
    classes: list[str]  # names in label order
    rejects: list[Reject] = field(default_factory=list)  # inputs refused while listing (a bad annotation row)


@dataclass(frozen=True)
class EncodeOptions:
    short_side: int | None = None  # re-encode to H.264 with this short side; None copies the original bytes


@dataclass(frozen=True)
class Sample:
    key: str
    files: dict[str, bytes]  # extension -> bytes, e.g. {"mp4": ..., "json": ...}


@dataclass(frozen=True)
class Reject:
    id: str
    path: str | None
    reason: str

    def as_json(self) -> dict:
        return {"id": self.id, "path": self.path, "reason": self.reason}


def sanitize_key(identifier: str) -> str:
    """Characters outside [A-Za-z0-9_-] (dots above all: WebDataset splits keys at the first dot) become '_'."""
    key = re.sub(r"[^A-Za-z0-9_-]", "_", identifier)
    return key or "_"


def assign_keys(items: list[Item]) -> list[str]:
    """A unique sanitised key per item, in item order; a collision gets the suffix -1, -2, ..."""
    used: set[str] = set()
    keys = []
    for item in items:
        base = key = sanitize_key(item.id)
        suffix = 0
        while key in used:
            suffix += 1
            key = f"{base}-{suffix}"
        used.add(key)
        keys.append(key)
    return keys
