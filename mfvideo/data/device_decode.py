"""Decoding on the training process's device (`data.decode_device: cuda`: NVIDIA's hardware decoder through
torchcodec), so that the loader workers spend their CPU on reading and planning only.

In the worker, the stream opens each video as an `EncodedVideo` (frame count, rate and size from the headers) and the
clip maker draws every clip's frames, crop, flip and mask exactly as it would from decoded frames (the same generator,
the same order), making `FramePlan`s instead of pixels; the collate hands them over as `frame_plans`: compressed
bytes, frame indices and crop boxes, kilobytes where the pixels were megabytes.

On the device, `DeviceDecoding` (the first device step) decodes each video of the batch once, the union of its
clips' frames, and applies each clip's geometry as the workers do (`mfvideo.data.transforms.ClipGeometry`), then
packs the uint8 `video` that the usual steps (normalising, keeping the pixels) take from there. On the CPU the batches
equal the workers' bit for bit (tests/test_device_decode.py); on a GPU NVDEC's colour conversion differs slightly from
FFmpeg's and the resize runs in float, rounded (within one grey level of the CPU's uint8 kernel). Frames whose size
is not what the headers said (a rotated source, which torchcodec turns) lose their clips rather than take a wrong
crop.

A video the device cannot decode loses its clips from the batch, logged and counted (`failures`): the batch is
smaller by them, as a skipped sample would have left it in the workers. Detection (boxes move with the crops) and
RandAugment (it needs pixels in the worker) keep decoding in the workers (`mfvideo.tasks.rules`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from mfvideo.data import fields
from mfvideo.data.decode import DecodeError, TorchCodecMedia

logger = logging.getLogger(__name__)


def _select(batch: dict[str, Any], keep: list[int], size: int) -> dict[str, Any]:
    """The batch's per-clip keys (tensors of first dimension `size`, host lists of length `size`) at `keep`."""
    index = torch.tensor(keep, dtype=torch.int64)
    out = {}
    for name, value in batch.items():
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == size:
            out[name] = value.index_select(0, index.to(value.device))
        elif isinstance(value, list) and len(value) == size:
            out[name] = [value[i] for i in keep]
        else:
            out[name] = value
    return out


class DeviceDecoding:
    """The device step that turns `frame_plans` into the uint8 `video` B×C×T×H×W on `device` ("cuda": this
    process's current GPU), decoding with torchcodec there (NVDEC on a GPU)."""

    def __init__(self, device: str):
        self.device = device
        self.failures = 0

    def _where(self) -> str:
        # torchcodec takes a bare "cuda" as GPU 0: name this rank's GPU, where the rest of its batch is
        if self.device == "cuda":
            return f"cuda:{torch.cuda.current_device()}"
        return self.device

    def __call__(self, batch: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        plans = batch.pop(fields.FRAME_PLANS.name)
        where = self._where()
        clips, keep = [], []
        video, frames = None, None  # a video's clips are consecutive: one decode each, freed at the next video
        for number, plan in enumerate(plans):
            try:
                if plan.data is not video:
                    video, frames = plan.data, None
                    frames = TorchCodecMedia(plan.data, plan.num_frames, where).frames(plan.frames)
                if frames is None:
                    raise DecodeError("the video failed to decode for an earlier clip")
                if tuple(frames.shape[1:3]) != plan.frame_size:
                    raise DecodeError(
                        f"decoded frames are {tuple(frames.shape[1:3])}, the headers said {plan.frame_size} "
                        "(rotation metadata?): the crop would be wrong"
                    )
                positions = None if plan.positions is None else torch.from_numpy(plan.positions).to(frames.device)
                clips.append(plan.geometry.apply(frames, positions))
                keep.append(number)
            except DecodeError as err:
                self.failures += 1
                logger.warning(
                    "dropping clip of sample %r from the batch: %s (%d clips failed to decode on %s)",
                    batch[fields.SAMPLE_KEY.name][number],
                    err,
                    self.failures,
                    where,
                )
        if not clips:
            raise DecodeError(f"no clip of the batch decoded on {where}: {batch[fields.SAMPLE_KEY.name]}")
        if len(keep) < len(plans):
            batch = _select(batch, keep, len(plans))
        batch[fields.VIDEO.name] = torch.stack([clip.transpose(0, 1) for clip in clips])
        return batch
