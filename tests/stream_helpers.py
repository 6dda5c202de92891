"""Fixtures for the streaming tests: real shards made by `make_shards` (the demo source's H.264 videos, JPEG
images from files), a copy with a truncated video, and PyAV-encoded videos for the decoding unit tests."""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from mfvideo.shards import DemoSource, Item, ItemList, ShardOptions, make_shards

_CACHE: dict[str, Path] = {}
_ROOT = Path(tempfile.mkdtemp(prefix="mfvideo-stream-tests-"))
atexit.register(shutil.rmtree, _ROOT, True)


def _pattern(directory: Path) -> str:
    manifest = json.loads((directory / "manifest.json").read_text())
    return str(directory / f"{manifest['name']}-{{000000..{len(manifest['shards']) - 1:06d}}}.tar")


def shard_counts(pattern: str) -> list[int]:
    manifest = json.loads((Path(pattern).parent / "manifest.json").read_text())
    return [shard["num_samples"] for shard in manifest["shards"]]


def demo_shards() -> str:
    """53 demo videos (64×48, 20–100 frames, 30 fps) in 9 unevenly filled shards (2 to 9 samples), made once per
    test session."""
    if "demo" not in _CACHE:
        source = DemoSource(num_videos=53, width=64, height=48, min_frames=20, max_frames=100, seed=1)
        make_shards(source, ShardOptions(out=_ROOT / "demo", max_count=16, max_size=64_000, progress=False))
        _CACHE["demo"] = _ROOT / "demo"
    return _pattern(_CACHE["demo"])


@dataclass(frozen=True)
class ImageFiles:
    """A `make_shards` source over JPEG files (the writer's image producer)."""

    paths: tuple[str, ...]
    name = "images"

    def list_items(self) -> ItemList:
        return ItemList(
            [
                Item(id=Path(p).stem, kind="image", label=i % 3, label_name=f"class{i % 3}", path=p)
                for i, p in enumerate(self.paths)
            ],
            classes=["class0", "class1", "class2"],
        )


def image_shards() -> str:
    """11 random 64×48 JPEGs in shards of 6 and 5."""
    if "images" not in _CACHE:
        files = _ROOT / "jpg"
        files.mkdir()
        paths = []
        for i in range(11):
            pixels = np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(files / f"img{i:02d}.jpg", quality=95)
            paths.append(str(files / f"img{i:02d}.jpg"))
        make_shards(ImageFiles(tuple(paths)), ShardOptions(out=_ROOT / "images", max_count=6, progress=False))
        _CACHE["images"] = _ROOT / "images"
    return _pattern(_CACHE["images"])


def truncated_copy(pattern: str, destination: Path, broken: list[int]) -> tuple[str, list[str]]:
    """Copy of the shards whose samples at global positions `broken` have their video cut to 300 bytes (as a
    failed download leaves it; the shards were written with it, so the manifest lists their new sizes); returns
    the copy's pattern and the broken keys."""
    source = Path(pattern).parent
    shutil.copytree(source, destination)
    keys, position = [], 0
    manifest = json.loads((source / "manifest.json").read_text())
    for shard in manifest["shards"]:
        members = []
        with tarfile.open(source / shard["file"]) as tar:
            for member in tar:
                members.append((member, tar.extractfile(member).read()))
        with tarfile.open(destination / shard["file"], "w") as out:
            for member, data in members:
                if member.name.endswith(".mp4"):
                    if position in broken:
                        data = data[:300]
                        keys.append(member.name.split(".")[0])
                    position += 1
                member.size = len(data)
                out.addfile(member, io.BytesIO(data))
        shard["bytes"] = (destination / shard["file"]).stat().st_size
        shard["sha256"] = hashlib.sha256((destination / shard["file"]).read_bytes()).hexdigest()
    (destination / "manifest.json").write_text(json.dumps(manifest))
    return _pattern(destination), keys


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
            frame = np.clip(background.astype(int) + 4 * (index % 30), 0, 255).astype(np.uint8)
            x = (3 * index) % (width - 12)
            frame[8:20, x : x + 12] = 250
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def textured_video(num_frames: int, width: int = 96, height: int = 64, seed: int = 0) -> bytes:
    """H.264 mp4 written by the shard writer's encoder (make_shards' frame-type pattern, one keyframe per second at
    30 fps): a noise texture panning under a moving square, with a per-frame brightness ramp, so that P- and B-frames
    carry real residuals and a wrong frame shows in the pixels."""
    from mfvideo.shards.encode import encode_rgb_frames

    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 160, (height, 2 * width, 3), dtype=np.uint8)
    frames = []
    for index in range(num_frames):
        frame = np.roll(texture, -2 * index, axis=1)[:, :width].astype(int) + 3 * (index % 30)
        frame[10:26, (5 * index) % (width - 16) : (5 * index) % (width - 16) + 16] = 250
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return encode_rgb_frames(frames, 30)[0]


def decode_all(data: bytes, skip_non_reference: bool = False) -> dict[int, np.ndarray]:
    """Every frame by presentation timestamp, decoded in one pass from the start (no seeking): the ground truth for
    what frame index i means. With `skip_non_reference`, only the frames other frames reference come out."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        if skip_non_reference:
            stream.codec_context.skip_frame = "NONREF"
        return {frame.pts: frame.to_ndarray(format="rgb24") for frame in container.decode(stream)}


def frames_in_order(data: bytes) -> np.ndarray:
    """T×H×W×3 uint8: frame i is the i-th in presentation order."""
    frames = decode_all(data)
    return np.stack([frames[pts] for pts in sorted(frames)])


def encode_jpg(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()
