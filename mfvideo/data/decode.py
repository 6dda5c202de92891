"""Decode the frames a clip needs, straight from a sample's bytes, with one of three decoders (`DECODERS`, the
recipe's `data.decoder`). Every decoder opens one reader per sample where it is used (inside the loader worker,
never before a fork), single-threaded (one core per worker), and returns frame i as the i-th frame in presentation
order, converted to RGB by FFmpeg's scaler with the same settings: on the CPU the three return the same pixels, bit
for bit (tests/test_decoders.py checks H.264 with and without B-pyramids, VP9 and MPEG-4 shards).

- `pyav` (PyAV, FFmpeg; the default, the fastest measured: docs/benchmarks.md "data"): only as much of the stream
  as the requested frames need. A non-reference frame (H.264 `nal_ref_idc` 0, e.g. the B-frames `make_shards`
  writes between its reference frames) is needed by no other frame, so one that the clip does not show is skipped by
  the decoder (`skip_frame`, set per packet: `NONREF` for packets not requested, `DEFAULT` for requested ones).
  Reference frames on the way are decoded, so every requested frame decodes exactly as in a full decode. With three
  non-reference B-frames between reference frames this decodes about a quarter of the frames from the keyframe to
  the clip's last frame, plus the clip's own frames. While FFmpeg probes the stream on opening, non-reference frames
  are skipped as well (it would otherwise decode up to 7 frames just to open the file).
- `decord` (decord 0.6.0's `VideoReader.get_batch`): the design's decoder. The maintained fork decord2 (same import
  name) installs too, but its 3.4.0 returns four-channel frames and fails `get_batch` at some widths (96 and 144
  pixels among them, the demo's videos included), so the project installs decord 0.6.0.
- `torchcodec` (PyTorch's decoder, `VideoDecoder` with exact seeking): on the CPU here; with `data.decode_device:
  cuda` NVIDIA's hardware decoder (NVDEC) decodes on the GPU instead, and the workers only plan the clips
  (`mfvideo.data.device_decode`). torchcodec loads the system's FFmpeg libraries (major versions 4 to 9) and must
  be built for the installed torch.

Images (`jpg`) are single-frame videos: Pillow decodes them (Pillow is already a dependency of matplotlib), and every
requested index maps to frame 0, whatever the decoder.

Container metadata can claim more frames than really decode, so the frame count used for sampling is the smaller of
the frames the decoder counts and the `num_frames` the shard writer recorded, and indices are clamped to it. Any
decoder error becomes `DecodeError`, which the stream counts as a failed sample.
"""

from __future__ import annotations

import importlib
import io
import logging
import math
from dataclasses import dataclass
from typing import Optional, Protocol

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = ("mp4", "webm")
IMAGE_EXTENSIONS = ("jpg",)
DECODERS = ("pyav", "decord", "torchcodec")
DECODE_DEVICES = ("cpu", "cuda")  # cuda: torchcodec only (NVDEC)
# What to install for each decoder, for the error that names a missing one.
INSTALLS = {
    "pyav": "pip install av",
    "decord": "pip install decord==0.6.0",
    "torchcodec": "pip install torchcodec (a build for the installed torch: tools/dev.sh picks it) and FFmpeg's shared "
    "libraries, major version 4 to 9 (Debian: apt-get install ffmpeg)",
}


class DecodeError(RuntimeError):
    """A sample whose media could not be opened or decoded."""


class DecodedMedia(Protocol):
    """Frame source for one sample: `num_frames`, `fps` (0 when unknown) and `frames(indices)`."""

    num_frames: int
    fps: float

    def frames(self, indices: np.ndarray) -> torch.Tensor:
        """uint8 T×H×W×3 for the given frame indices (clamped to the decodable range)."""


class PyAVMedia:
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
        self.num_frames = _frame_count(len(self._pts), recorded_num_frames)
        if not self._keyframes:
            raise DecodeError(f"video has no keyframe among its {len(self._pts)} packets")
        self.fps = _known_rate(self._stream.average_rate)
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


class DecordMedia:
    """decord's `VideoReader` from the bytes, one thread; frames through `get_batch`, handed to torch by DLPack.

    decord (0.6.0 and decord2 3.4.0 alike) returns the wrong frames of MPEG-4 Part 2 video with B-frames after a
    seek (frame i + 1 or i + 2 for frame i), so such a sample is refused (a `DecodeError`, skipped and counted)
    rather than decoded wrong: PyAV tells the codec and whether it has B-frames from the headers, in under a
    millisecond."""

    def __init__(self, data: bytes, recorded_num_frames: int = 0):
        import decord

        _refuse_mpeg4_with_b_frames(data)
        try:
            self._reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
            counted = len(self._reader)
            fps = float(self._reader.get_avg_fps())
        except decord.DECORDError as err:
            raise DecodeError(f"cannot open video: {_first_line(err)}") from err
        self._error = decord.DECORDError
        self.num_frames = _frame_count(counted, recorded_num_frames)
        self.fps = _known_rate(fps)

    def frames(self, indices: np.ndarray) -> torch.Tensor:
        from torch.utils.dlpack import from_dlpack

        safe = np.clip(np.asarray(indices, dtype=np.int64), 0, self.num_frames - 1)
        try:
            return from_dlpack(self._reader.get_batch(safe.tolist()).to_dlpack())
        except self._error as err:
            raise DecodeError(f"cannot decode frames {safe.min()}..{safe.max()}: {_first_line(err)}") from err


class TorchCodecMedia:
    """torchcodec's `VideoDecoder` from the bytes with exact seeking (the frame index is the presentation order, as
    the other decoders count), one FFmpeg thread, frames as N×H×W×C on `device` (cuda: NVDEC)."""

    def __init__(self, data: bytes, recorded_num_frames: int = 0, device: str = "cpu"):
        from torchcodec.decoders import VideoDecoder

        try:
            self._decoder = VideoDecoder(data, dimension_order="NHWC", num_ffmpeg_threads=1, device=device)
            self._device = device
            metadata = self._decoder.metadata
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError) as err:
            raise DecodeError(f"cannot open video: {_first_line(err)}") from err
        self.num_frames = _frame_count(metadata.num_frames or 0, recorded_num_frames)
        # The header's rate, as the other decoders read it (`average_fps` divides by the duration: WebM's
        # millisecond timestamps make that 30.0075 for 30 fps).
        self.fps = _known_rate(metadata.average_fps_from_header or metadata.average_fps)

    def frames(self, indices: np.ndarray) -> torch.Tensor:
        safe = np.clip(np.asarray(indices, dtype=np.int64), 0, self.num_frames - 1)
        try:
            frames = self._decoder.get_frames_at(safe.tolist()).data
        except torch.cuda.OutOfMemoryError:
            raise  # the device's memory, not the video
        except (RuntimeError, ValueError, IndexError) as err:
            raise DecodeError(f"cannot decode frames {safe.min()}..{safe.max()}: {_first_line(err)}") from err
        if self._device != "cpu":
            _log_cpu_fallback_once(self._decoder)
        return frames


_cpu_fallback_logged = False


def _log_cpu_fallback_once(decoder) -> None:
    """torchcodec decodes on the CPU where NVDEC cannot (a codec or size the GPU does not support) and says so only
    when asked: ask after each GPU decode, and log the first fallback with its reason."""
    global _cpu_fallback_logged
    status = getattr(decoder, "cpu_fallback", None)
    if status and not _cpu_fallback_logged:
        _cpu_fallback_logged = True
        logger.warning("NVDEC could not decode a video, torchcodec decoded it on the CPU: %s", status)


def _refuse_mpeg4_with_b_frames(data: bytes) -> None:
    try:
        with av.open(io.BytesIO(data)) as container:
            streams = container.streams.video
            codec = streams[0].codec_context if streams else None
    except av.FFmpegError as err:
        raise DecodeError(f"cannot open video: {err}") from err
    if codec is not None and codec.name == "mpeg4" and codec.has_b_frames:
        raise DecodeError(
            "decord returns the wrong frames of MPEG-4 Part 2 video with B-frames; decode these shards with "
            "data.decoder=pyav or torchcodec, or re-encode them (make_shards --short-side)"
        )


def _frame_count(counted: int, recorded: int) -> int:
    count = min(counted, recorded) if recorded > 0 else counted
    if count <= 0:
        raise DecodeError(f"video has no frames (decoder counts {counted}, shard records {recorded})")
    return count


def _known_rate(rate) -> float:
    """Frames per second as a positive finite float, 0.0 where the container gives none."""
    fps = float(rate) if rate else 0.0
    return fps if math.isfinite(fps) and fps > 0 else 0.0


def _first_line(err: Exception) -> str:
    """decord and torchcodec put C++ stack traces after the message."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class EncodedVideo:
    """A video left compressed, for the training process to decode on its device (`Decoding.device`): what a clip
    maker needs to plan the clips (frame count, rate, frame size) from the container's headers, without decoding.
    The frame count is the smaller of the packets counted and the recorded one, as `PyAVMedia` counts it."""

    def __init__(self, data: bytes, recorded_num_frames: int = 0):
        try:
            with av.open(io.BytesIO(data)) as container:
                if not container.streams.video:
                    raise DecodeError("cannot open video: no video stream")
                stream = container.streams.video[0]
                self.height, self.width = stream.codec_context.height, stream.codec_context.width
                rate = stream.average_rate
                # counted as PyAVMedia counts them, so that the clips drawn are the workers' own
                counted = sum(1 for packet in container.demux(stream) if packet.pts is not None)
        except av.FFmpegError as err:
            raise DecodeError(f"cannot open video: {err}") from err
        self.data = data
        self.num_frames = _frame_count(counted, recorded_num_frames)
        self.fps = _known_rate(rate)

    def frames(self, indices: np.ndarray) -> torch.Tensor:
        raise DecodeError("this video decodes on the device (data.decode_device), not in the loader worker")


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


_VIDEO_READERS = {"pyav": PyAVMedia, "decord": DecordMedia, "torchcodec": TorchCodecMedia}
_MODULES = {"pyav": "av", "decord": "decord", "torchcodec": "torchcodec.decoders"}


class DecoderUnavailable(ValueError):
    """The decoder a recipe names cannot run here (a bad value for this machine); the message says what to install."""


def check_decoder(decoder: str, device: str = "cpu") -> None:
    """Raise `DecoderUnavailable` (naming `data.decoder` or `data.decode_device`, the reason and what to install)
    unless `decoder` imports here and can decode on `device`; before any work, in the process that starts it."""
    if decoder not in DECODERS:
        raise DecoderUnavailable(f"data.decoder={decoder!r}: must be one of {DECODERS}")
    if device not in DECODE_DEVICES:
        raise DecoderUnavailable(f"data.decode_device={device!r}: must be one of {DECODE_DEVICES}")
    try:
        importlib.import_module(_MODULES[decoder])
    except Exception as err:  # a missing package, or a build whose shared libraries do not load (torchcodec)
        reason = f"{type(err).__name__}: {_first_line(err)}"
        if "libtorchcodec" in str(err):  # its message is a page of tracebacks, one per FFmpeg version tried
            reason = (
                "its libraries do not load: no FFmpeg 4 to 9 shared libraries, or a build for another torch than "
                f"{torch.__version__}"
            )
        raise DecoderUnavailable(
            f"data.decoder={decoder!r} is not importable here ({reason}); install it: {INSTALLS[decoder]}"
        ) from err
    if device == "cuda":
        if decoder != "torchcodec":
            raise DecoderUnavailable(
                f"data.decode_device='cuda' needs data.decoder='torchcodec' (NVDEC), got {decoder!r}"
            )
        if not torch.cuda.is_available():
            raise DecoderUnavailable(
                "data.decode_device='cuda': no CUDA device here; decode on the CPU (data.decode_device=cpu)"
            )
        problem = _nvdec_problem()
        if problem:
            raise DecoderUnavailable(
                f"data.decode_device='cuda': torchcodec cannot decode on this GPU ({problem}); install the torchcodec "
                "build for this torch and CUDA version (PyTorch's own wheel index), or set data.decode_device=cpu"
            )


def _nvdec_problem() -> Optional[str]:
    """Why torchcodec cannot decode H.264 on the current GPU, or None: a CPU-only build imports and only fails, or
    quietly decodes on the CPU, when asked to decode. Probed on a tiny video made here."""
    from mfvideo.shards.encode import encode_rgb_frames

    video, _ = encode_rgb_frames([np.full((64, 64, 3), 60 * index, np.uint8) for index in range(2)], 30)
    try:
        frames = TorchCodecMedia(video, 0, f"cuda:{torch.cuda.current_device()}").frames(np.arange(2))
    except Exception as err:  # the build's own error: a CPU-only build, a driver without NVDEC, ...
        return f"{type(err).__name__}: {_first_line(err)}"
    return None if frames.is_cuda else "its frames came back on the CPU"


def open_media(data: bytes, extension: str, recorded_num_frames: int = 0, decoder: str = "pyav") -> DecodedMedia:
    """Open a sample's media bytes by their extension (`mp4`, `webm` or `jpg`), videos with `decoder` (DECODERS)."""
    if extension in VIDEO_EXTENSIONS:
        return _VIDEO_READERS[decoder](data, recorded_num_frames)
    if extension in IMAGE_EXTENSIONS:
        return ImageMedia(data)
    raise DecodeError(
        f"unsupported media extension {extension!r} (expected one of {VIDEO_EXTENSIONS + IMAGE_EXTENSIONS})"
    )


@dataclass(frozen=True)
class Decoding:
    """How a loader decodes: with `decoder` in its workers (`device` None), or, with `device` set, in the training
    process on that device with torchcodec (cuda: NVDEC) while the workers only plan the clips (`EncodedVideo`,
    `mfvideo.data.device_decode`). The recipe's `data.decoder` and `data.decode_device` (cuda: the device)."""

    decoder: str = "pyav"
    device: Optional[str] = None

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.device is not None and self.decoder != "torchcodec":
            raise ValueError(f"decoding on a device needs the torchcodec decoder, got {self.decoder!r}")

    @classmethod
    def of(cls, data_cfg) -> "Decoding":
        return cls(data_cfg.decoder, None if data_cfg.decode_device == "cpu" else data_cfg.decode_device)

    def open(self, data: bytes, extension: str, recorded_num_frames: int = 0) -> DecodedMedia:
        """The sample's media as the worker sees it: decoded frames, or an `EncodedVideo` when the device decodes."""
        if self.device is None:
            return open_media(data, extension, recorded_num_frames, self.decoder)
        if extension not in VIDEO_EXTENSIONS:
            raise DecodeError(f"{extension!r} samples decode in the workers only: set data.decode_device=cpu")
        return EncodedVideo(data, recorded_num_frames)
