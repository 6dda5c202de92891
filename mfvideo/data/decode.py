"""Decode the frames a clip needs, straight from a sample's bytes.

Videos (`mp4`, `webm`) go through PyAV (FFmpeg): one container per sample, opened where it is used (inside the
loader worker, never before a fork), single-threaded (one core per worker), and only as much of the stream as the
requested frames need. Frame i is the i-th frame in presentation order (packets sorted by pts, read once when the
media is opened), and frames are converted to RGB by FFmpeg's scaler exactly as decord 0.6 did: the loader returns
the same pixels decord's `get_batch` returned for the same indices.

What makes it cheaper than decoding every frame from the last keyframe on: a non-reference frame (H.264 `nal_ref_idc`
0, e.g. the B-frames `make_shards` writes between its reference frames) is needed by no other frame, so one that the
clip does not show is skipped by the decoder (`skip_frame`, set per packet: `NONREF` for packets not requested,
`DEFAULT` for requested ones). Reference frames on the way are decoded, so every requested frame decodes exactly as in
a full decode. With three non-reference B-frames between reference frames this decodes about a quarter of the
frames from the keyframe to the clip's last frame, plus the clip's own frames. While FFmpeg probes the stream on
opening, non-reference frames are skipped as well (it would otherwise decode up to 7 frames just to open the file).

Images (`jpg`) are single-frame videos: Pillow decodes them (Pillow is already a dependency of matplotlib), and every
requested index maps to frame 0.

Container metadata can claim more frames than really decode, so the frame count used for sampling is the smaller of
the packets found and the `num_frames` the shard writer recorded, and indices are clamped to it. Any decoder error
becomes `DecodeError`, which the stream counts as a failed sample.
"""

from __future__ import annotations

import io
import math
from typing import Protocol

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

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
    """`frames_decoded` counts the frames the decoder has produced (requested ones and the reference frames on the
    way; skipped non-reference frames are not produced); the data benchmark reports it per clip."""

    def __init__(self, data: bytes, recorded_num_frames: int = 0):
        try:
            self._container = av.open(io.BytesIO(data), options={"skip_frame": "nonref"})
            if not self._container.streams.video:
                raise DecodeError("cannot open video: no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.codec_context.thread_count = 1
            packets = [(p.pts, p.is_keyframe) for p in self._container.demux(self._stream) if p.pts is not None]
        except av.FFmpegError as err:
            raise DecodeError(f"cannot open video: {err}") from err
        self._pts = np.sort(np.array([pts for pts, _ in packets], dtype=np.int64))
        self._keyframes = sorted(pts for pts, key in packets if key)
        counted = len(self._pts)
        self.num_frames = min(counted, recorded_num_frames) if recorded_num_frames > 0 else counted
        if self.num_frames <= 0 or not self._keyframes:
            raise DecodeError(
                f"video has no frames (packets: {counted}, keyframes: {len(self._keyframes)}, shard "
                f"records {recorded_num_frames})"
            )
        rate = self._stream.average_rate
        fps = float(rate) if rate else 0.0
        self.fps = fps if math.isfinite(fps) and fps > 0 else 0.0
        self.frames_decoded = 0

    def frames(self, indices: np.ndarray) -> torch.Tensor:
        safe = np.clip(np.asarray(indices, dtype=np.int64), 0, self.num_frames - 1)
        wanted = np.unique(safe)
        slots = {int(self._pts[index]): slot for slot, index in enumerate(wanted)}
        try:
            out = self._decode(slots)
        except av.FFmpegError as err:
            raise DecodeError(f"cannot decode frames {safe.min()}..{safe.max()}: {err}") from err
        if np.array_equal(wanted, safe):  # distinct and ascending, as a clip or a union of clips: no reordering copy
            return out
        return out[torch.from_numpy(np.searchsorted(wanted, safe))]

    def _decode(self, slots: dict[int, int]) -> torch.Tensor:
        """Decode from the last keyframe at or before the first wanted frame until every wanted frame is out."""
        first = min(slots)
        # Seeking takes a presentation timestamp and lands on the last keyframe at or before it.
        start = max((key for key in self._keyframes if key <= first), default=self._keyframes[0])
        self._container.seek(start, stream=self._stream, backward=True)
        codec = self._stream.codec_context
        to_rgb = VideoReformatter()  # one scaler for all frames: its set-up is half the cost of a conversion
        out, missing = None, set(slots)
        for packet in self._container.demux(self._stream):
            if packet.pts is not None:
                codec.skip_frame = "DEFAULT" if packet.pts in slots else "NONREF"
            for frame in self._stream.decode(packet):
                self.frames_decoded += 1
                if frame.pts in missing:
                    rgb = torch.from_numpy(to_rgb.reformat(frame, format="rgb24").to_ndarray())
                    if out is None:
                        out = torch.empty((len(slots), *rgb.shape), dtype=torch.uint8)
                    out[slots[frame.pts]] = rgb
                    missing.discard(frame.pts)
            if not missing:
                return out
        raise DecodeError(f"{len(missing)} of {len(slots)} requested frames never decoded (pts {sorted(missing)[:4]})")


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
    raise DecodeError(
        f"unsupported media extension {extension!r} (expected one of {VIDEO_EXTENSIONS + IMAGE_EXTENSIONS})"
    )
