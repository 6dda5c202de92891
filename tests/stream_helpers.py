"""Fixtures for the streaming tests: real H.264 videos (PyAV) and JPEGs in real tar shards with a manifest."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import webdataset as wds
from PIL import Image


def encode_video(num_frames: int, width: int = 64, height: int = 48, fps: int = 30, seed: int = 0) -> bytes:
    """H.264 mp4 whose frames all differ: a bright square moving over a noisy background, plus a per-frame
    brightness ramp, so a wrong frame index shows in the pixels."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(fps), "crf": "18"}
        for index in range(num_frames):
            frame = background.copy()
            frame[...] = np.clip(frame.astype(int) + 4 * (index % 30), 0, 255).astype(np.uint8)
            x = (3 * index) % (width - 12)
            frame[8:20, x:x + 12] = 250
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def encode_jpg(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_shards(directory: Path, sizes: Sequence[int], kind: str = "video", frames: Sequence[int] = (40, 70, 100),
                 corrupt: Sequence[str] = (), name: str = "demo") -> str:
    """Shards with `sizes[i]` samples each (keys `s00000`, …), a manifest.json beside them; returns the brace
    pattern. Videos cycle through a few encodings of `frames` lengths; keys in `corrupt` get garbage bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "video":
        media = [("mp4", encode_video(n, seed=i), n) for i, n in enumerate(frames)]
    else:
        media = [("jpg", encode_jpg(seed=i), 1) for i in range(3)]
    entries, index = [], 0
    for shard_number, size in enumerate(sizes):
        file = f"{name}-{shard_number:06d}.tar"
        with wds.TarWriter(str(directory / file)) as sink:
            for _ in range(size):
                key = f"s{index:05d}"
                extension, data, num_frames = media[index % len(media)]
                if key in corrupt:
                    data = b"not a video at all" * 10
                meta = {"id": key, "label": index % 5, "label_name": f"class{index % 5}", "fps": 30,
                        "num_frames": num_frames, "width": 64, "height": 48, "duration": num_frames / 30,
                        "source": "demo"}
                sink.write({"__key__": key, extension: data, "json": json.dumps(meta).encode()})
                index += 1
        entries.append({"file": file, "num_samples": size, "bytes": (directory / file).stat().st_size,
                        "sha256": ""})
    manifest = {"format_version": 1, "name": name, "source": "demo", "created_with": {}, "classes": [],
                "num_samples": index, "shards": entries}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return str(directory / f"{name}-{{000000..{len(sizes) - 1:06d}}}.tar")
