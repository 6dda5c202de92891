"""Decode the frames a clip needs, straight from a sample's bytes.

Videos (`mp4`, `webm`) go through decord: one reader per sample, created where it is used (inside the loader
worker, never before a fork: a reader crossing a fork deadlocks), `num_threads=1` (one core per worker; decord's
default of 0 spawns a thread per core in every worker), and only the requested frames are decoded with one
`get_batch` call. The reader is dropped after the sample, which also bounds decord's memory growth over many seeks.

Images (`jpg`) are single-frame videos: Pillow decodes them (decord reads no still images; Pillow is already a
dependency of matplotlib and is the smallest decoder we have), and every requested index maps to frame 0.

`len(VideoReader)` comes from container metadata and can exceed the frames that really decode; asking
`get_batch` for such a frame spins forever in native code (no exception to catch). So the frame count used for
sampling is the smaller of decord's count and the `num_frames` the shard writer recorded, and indices are
clamped to it. Any decoder error becomes `DecodeError`, which the stream counts as a failed sample.
"""

from __future__ import annotations

import io
import math
from typing import Protocol

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack

VIDEO_EXTENSIONS = ("mp4", "webm")
IMAGE_EXTENSIONS = ("jpg",)


class DecodeError(RuntimeError):
    """A sample whose media could not be opened or decoded."""


class DecodedMedia(Protocol):
    """Frame source for one sample: `num_frames`, `fps` (0 when unknown) and `frames(indices)`."""

    num_frames: int
    fps: float

    def frames(self, indices: np.ndarray) -> torch.Tensor:
        """uint8 T×H×W×3 for the given frame indices (clamped to the decodable range)."""


class VideoMedia:
    def __init__(self, data: bytes, recorded_num_frames: int = 0):
        import decord  # imported here so that importing the data package never initialises decord in the parent

        try:
            self._reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
            counted = len(self._reader)
            fps = float(self._reader.get_avg_fps())
        except Exception as err:  # decord raises DECORDError or RuntimeError depending on where it fails
            raise DecodeError(f"cannot open video: {err}") from err
        self.num_frames = min(counted, recorded_num_frames) if recorded_num_frames > 0 else counted
        if self.num_frames <= 0:
            raise DecodeError(f"video has no frames (decord counts {counted}, shard records {recorded_num_frames})")
        self.fps = fps if math.isfinite(fps) and fps > 0 else 0.0

    def frames(self, indices: np.ndarray) -> torch.Tensor:
        safe = np.clip(np.asarray(indices, dtype=np.int64), 0, self.num_frames - 1)
        try:
            # DLPack hands decord's buffer to torch without the copy `asnumpy()` makes.
            return from_dlpack(self._reader.get_batch(safe.tolist()).to_dlpack())
        except Exception as err:
            raise DecodeError(f"cannot decode frames {safe.min()}..{safe.max()}: {err}") from err


class ImageMedia:
    def __init__(self, data: bytes):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:
                self._frame = torch.from_numpy(np.array(image.convert("RGB")))
        except Exception as err:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
            raise DecodeError(f"cannot decode image: {err}") from err
        self.num_frames = 1
        self.fps = 0.0

    def frames(self, indices: np.ndarray) -> torch.Tensor:
        return self._frame.unsqueeze(0).expand(len(indices), -1, -1, -1)


def open_media(data: bytes, extension: str, recorded_num_frames: int = 0) -> DecodedMedia:
    """Open a sample's media bytes by their extension (`mp4`, `webm` or `jpg`)."""
    if extension in VIDEO_EXTENSIONS:
        return VideoMedia(data, recorded_num_frames)
    if extension in IMAGE_EXTENSIONS:
        return ImageMedia(data)
    raise DecodeError(f"unsupported media extension {extension!r} (expected one of "
                      f"{VIDEO_EXTENSIONS + IMAGE_EXTENSIONS})")
