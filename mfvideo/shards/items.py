"""What a source lists (items) and what processing one item gives (a sample or a reject).

Sources only list; `produce` (run in worker processes) turns an item into media bytes and metadata.
Items are plain picklable data so that workers need nothing but the item itself.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from mfvideo.shards.encode import VideoError, cut_video, probe_video, reencode_video, scaled_size

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


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as err:
        raise VideoError("missing file") from err
    except OSError as err:
        raise VideoError(f"unreadable file: {err.strerror or err}") from err


def _media_extension(path: str) -> str:
    ext = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return ext if ext in ("mp4", "webm") else "mkv"


def _produce_video(item: Item, options: EncodeOptions) -> tuple[str, bytes, dict]:
    if options.short_side is not None:
        data, info = reencode_video(_read_file(item.path), options.short_side)
        return "mp4", data, info.as_json()
    data = _read_file(item.path)
    info = probe_video(data)
    ext = _media_extension(item.path)
    if ext == "mkv":
        raise VideoError("container is not mp4 or webm; use --short-side to re-encode it")
    return ext, data, info.as_json()


def _produce_clip(item: Item, options: EncodeOptions) -> tuple[str, bytes, dict]:
    if not os.path.exists(item.path):
        raise VideoError("missing file")
    cut = cut_video(item.path, item.params["start"], item.params["end"], options.short_side)
    keyframe = item.params["keyframe"]
    return "mp4", cut.data, {**cut.info.as_json(), "keyframe_sec": round(keyframe - cut.start, 6)}


def _produce_image(item: Item, options: EncodeOptions) -> tuple[str, bytes, dict]:
    from PIL import Image

    data = _read_file(item.path)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            is_jpeg = image.format == "JPEG"
            size = scaled_size(*image.size, options.short_side) if options.short_side else image.size
            if not is_jpeg or size != image.size:
                out = io.BytesIO()
                image.convert("RGB").resize(size, Image.BILINEAR).save(out, format="JPEG", quality=95)
                data = out.getvalue()
    except (OSError, SyntaxError, ValueError) as err:
        raise VideoError(f"corrupt image: {err}") from err
    return "jpg", data, {"fps": 0, "num_frames": 1, "width": size[0], "height": size[1], "duration": 0.0}


def _produce_demo(item: Item, options: EncodeOptions) -> tuple[str, bytes, dict]:
    from mfvideo.shards.sources.demo import render_demo_video

    data, info = render_demo_video(**item.params)
    return "mp4", data, info.as_json()


_PRODUCERS: dict[str, Callable[[Item, EncodeOptions], tuple[str, bytes, dict]]] = {
    "video": _produce_video, "clip": _produce_clip, "image": _produce_image, "demo": _produce_demo,
}


def produce(item: Item, key: str, source: str, options: EncodeOptions) -> Sample | Reject:
    """Media plus JSON for one item, or a Reject with the reason (never raises for bad input)."""
    try:
        ext, media, info = _PRODUCERS[item.kind](item, options)
    except VideoError as err:
        return Reject(item.id, item.path, str(err))
    except Exception as err:  # noqa: BLE001 -- one odd file must not stop a days-long job; the reason names it
        return Reject(item.id, item.path, f"{type(err).__name__}: {err}")
    meta = {"id": item.id, "label": item.label, "label_name": item.label_name, "source": source,
            **info, **item.extra}
    payload = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return Sample(key, {ext: media, "json": payload})
