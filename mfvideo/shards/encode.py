"""Video probing and H.264 encoding with PyAV.

Every encode is single-threaded with fixed x264 settings and FFmpeg's bitexact flags, so the same
frames always give the same bytes: shard determinism rests on this.

The frame types follow one fixed pattern, I or P then three B-frames that no other frame references (`bframes=3`,
`b-adapt=0`, `b-pyramid=none`): a decoder can skip every B-frame a clip does not show (mfvideo.data.decode), so a
16×4 clip decodes about a quarter of the frames from the keyframe on, plus its own. x264's macroblock-tree rate
control is off (`mbtree=0`): in the x264 build PyAV ships, with B-frames it made repeated encodes of identical
frames differ (heap-dependent; up to a third of encodes of decoded frames, found by hashing repeats), and without it
they never did.

What `make_shards` re-encodes (`--short-side`, AVA's cuts) is entropy-coded with CAVLC instead of CABAC (`cabac=0`):
decoding is the loader workers' main cost and CAVLC decodes in about 1.6× fewer CPU seconds per clip, for files
about a quarter larger (docs/benchmarks.md "data"). Frames encoded from pixels (`encode_rgb_frames`: the procedural
demo sets, which stand in for camera files, and the rendered predictions) keep x264's default CABAC.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

X264_PRESET = "veryfast"
X264_CRF = 23
X264_BFRAMES = 3  # non-reference B-frames between two reference frames


class VideoError(ValueError):
    """A video that cannot be read: missing stream, undecodable data, no frames."""


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    num_frames: int
    width: int
    height: int
    duration: float  # seconds, num_frames / fps

    def as_json(self) -> dict:
        return {
            "fps": self.fps,
            "num_frames": self.num_frames,
            "width": self.width,
            "height": self.height,
            "duration": self.duration,
        }


def _open(source: str | bytes) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else source, mode="r")
    except (av.FFmpegError, OSError) as err:
        raise VideoError(f"cannot open: {err}") from err


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError("no video stream")
    return container.streams.video[0]


def _frame_rate(stream: av.video.stream.VideoStream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise VideoError("unknown frame rate")
    return Fraction(rate)


def _info(rate: Fraction, num_frames: int, width: int, height: int) -> VideoInfo:
    if num_frames <= 0:
        raise VideoError("no frames")
    return VideoInfo(
        fps=round(float(rate), 6),
        num_frames=num_frames,
        width=width,
        height=height,
        duration=round(num_frames / float(rate), 6),
    )


def probe_video(data: bytes) -> VideoInfo:
    """Metadata of encoded video bytes. Demuxes every packet (cheap) and decodes the first frame,
    so truncated or garbage files fail here rather than in the training loader."""
    with _open(data) as container:
        stream = _video_stream(container)
        rate = _frame_rate(stream)
        num_packets, first_frame = 0, None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                num_packets += 1
                if first_frame is None:
                    frames = packet.decode()
                    first_frame = frames[0] if frames else None
        except av.FFmpegError as err:
            raise VideoError(f"corrupt stream after {num_packets} packets: {err}") from err
        if first_frame is None:
            raise VideoError("no decodable frame")
        return _info(rate, num_packets, first_frame.width, first_frame.height)


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Size with the short side at `short_side` (never upscaled), both sides even (yuv420p needs it)."""
    scale = 1.0 if short_side is None else min(1.0, short_side / min(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


class H264Writer:
    """Encodes RGB or decoded frames to an in-memory MP4 at a constant frame rate, one keyframe per second,
    entropy-coded with CABAC or (`cabac=False`) CAVLC."""

    def __init__(self, rate: Fraction | int, width: int, height: int, *, cabac: bool = True):
        self.rate = Fraction(rate)
        self.width, self.height = width, height
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, mode="w", format="mp4", options={"fflags": "+bitexact"})
        self.stream = self.container.add_stream("libx264", rate=self.rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.codec_context.flags |= av.codec.context.Flags.bitexact
        self.stream.codec_context.thread_count = 1
        keyint = max(1, round(self.rate))
        self.stream.options = {
            "preset": X264_PRESET,
            "crf": str(X264_CRF),
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:mbtree=0:"
            f"bframes={X264_BFRAMES}:b-adapt=0:b-pyramid=none:cabac={int(cabac)}",
        }
        self.num_frames = 0
        self.to_yuv = VideoReformatter()  # one scaler for all frames: setting one up costs more than converting

    def add(self, frame: av.VideoFrame) -> None:
        frame = self.to_yuv.reformat(
            frame, width=self.width, height=self.height, format="yuv420p", interpolation="AREA", threads=1
        )
        frame.pts, frame.time_base = self.num_frames, 1 / self.rate
        self.container.mux(self.stream.encode(frame))
        self.num_frames += 1

    def finish(self) -> tuple[bytes, VideoInfo]:
        self.container.mux(self.stream.encode(None))
        self.container.close()
        return self.buffer.getvalue(), _info(self.rate, self.num_frames, self.width, self.height)


def encode_frames(
    frames: Iterable[av.VideoFrame], rate: Fraction | int, short_side: int | None, empty: str, *, cabac: bool
) -> tuple[bytes, VideoInfo]:
    """H.264 MP4 of `frames`, sized from the first (short side scaled to `short_side`); VideoError(empty) if none."""
    writer = None
    for frame in frames:
        if writer is None:
            writer = H264Writer(rate, *scaled_size(frame.width, frame.height, short_side), cabac=cabac)
        writer.add(frame)
    if writer is None:
        raise VideoError(empty)
    return writer.finish()


def encode_rgb_frames(frames: Iterable[np.ndarray], rate: Fraction | int) -> tuple[bytes, VideoInfo]:
    """H.264 MP4 from H×W×3 uint8 frames (even sides)."""
    video_frames = (av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24") for image in frames)
    return encode_frames(video_frames, rate, None, "no frames to encode", cabac=True)


def _decoded_frames(container: av.container.InputContainer, stream) -> Iterator[av.VideoFrame]:
    try:
        yield from container.decode(stream)
    except av.FFmpegError as err:
        raise VideoError(f"corrupt stream: {err}") from err


def reencode_video(source: str | bytes, short_side: int | None) -> tuple[bytes, VideoInfo]:
    """The whole video as H.264 MP4, short side scaled down to `short_side`, frame rate kept, audio dropped."""
    with _open(source) as container:
        stream = _video_stream(container)
        stream.thread_count = 1
        frames = _decoded_frames(container, stream)
        return encode_frames(frames, _frame_rate(stream), short_side, "no decodable frame", cabac=False)


@dataclass(frozen=True)
class Cut:
    data: bytes
    info: VideoInfo
    start: float  # movie time (s) of the cut's first frame
    last: float  # and of its last


def cut_video(path: str, start: float, end: float, short_side: int | None) -> Cut:
    """Frames with movie time in [start, end) re-encoded as H.264 MP4 (seek, then decode only the span)."""
    with _open(path) as container:
        stream = _video_stream(container)
        stream.thread_count = 1
        rate = _frame_rate(stream)
        origin = float((stream.start_time or 0) * stream.time_base)
        try:
            container.seek(int((max(0.0, start) + origin) / stream.time_base), stream=stream, backward=True)
        except av.FFmpegError as err:
            raise VideoError(f"cannot seek to {start:.3f}s: {err}") from err
        times: list[float] = []

        def span() -> Iterator[av.VideoFrame]:
            for frame in _decoded_frames(container, stream):
                time = float(frame.pts * stream.time_base) - origin if frame.pts is not None else None
                if time is None or time < start - 0.5 / float(rate):
                    continue
                if time >= end:
                    return
                times.append(time)
                yield frame

        empty = f"no frame between {start:.3f}s and {end:.3f}s"
        data, info = encode_frames(span(), rate, short_side, empty, cabac=False)
        return Cut(data=data, info=info, start=round(times[0], 6), last=round(times[-1], 6))
