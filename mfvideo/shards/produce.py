"""One item → one sample (media bytes + JSON) or a reject, per item kind; runs in the writer's worker processes."""

from __future__ import annotations

import io
import json
import os
from typing import Callable

from mfvideo.shards.encode import VideoError, cut_video, probe_video, reencode_video, scaled_size
from mfvideo.shards.items import EncodeOptions, Item, Reject, Sample
from mfvideo.shards.sources.demo import render_demo_video


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
    half_frame = 0.5 / cut.info.fps
    if not cut.start - half_frame <= keyframe <= cut.last + half_frame:
        raise VideoError(
            f"keyframe {keyframe} s is outside the movie: the frames around it run from {cut.start} s to {cut.last} s"
        )
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
    data, info = render_demo_video(**item.params)
    return "mp4", data, info.as_json()


_PRODUCERS: dict[str, Callable[[Item, EncodeOptions], tuple[str, bytes, dict]]] = {
    "video": _produce_video,
    "clip": _produce_clip,
    "image": _produce_image,
    "demo": _produce_demo,
}


def produce(item: Item, key: str, source: str, options: EncodeOptions) -> Sample | Reject:
    """Media plus JSON for one item, or a Reject with the reason (never raises for bad input)."""
    try:
        ext, media, info = _PRODUCERS[item.kind](item, options)
    except VideoError as err:
        return Reject(item.id, item.path, str(err))
    except Exception as err:  # noqa: BLE001 -- one odd file must not stop a days-long job; the reason names it
        return Reject(item.id, item.path, f"{type(err).__name__}: {err}")
    meta = {"id": item.id, "label": item.label, "label_name": item.label_name, "source": source, **info, **item.extra}
    payload = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return Sample(key, {ext: media, "json": payload})
