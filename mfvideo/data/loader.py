"""Loaders built from the recipe: `build_train_loader` and `build_test_loader`.

`iter(loader)` yields dicts: `video` float32 B×3×T×H×W (normalised) and `key` list[str], plus the fields asked for
(`mfvideo.data.collate.FIELDS`: `label`, `mask`, `video_index` + `view`, and `boxes`, which makes the loader a
detection loader: keyframe-centred clips carrying their RoIs, see below), every tensor on the current CUDA device
when CUDA is available (set the device before iterating), else on the CPU. With `keep_pixels`, `pixels` is the same
clip as uint8 (what the workers made, already on the device: no extra transfer), for targets that need the exact
integer values. A training loader's `batch_augment(batch, rng)` runs last, on the device (mixup, CutMix, random
erasing), with a generator drawn from (seed, epoch, rank, batch number): resumed runs see the same draws.

`len(loader)` is the batches per epoch, the same on every rank. The loader is a torchdata `StatefulDataLoader`; its
`state_dict()` is `{"epoch": e, "batches": batches yielded this epoch, "loader": <StatefulDataLoader state with each
worker's ClipStream state>}` (see `mfvideo.data.stream` for the per-worker contract). Resume with the same world
size, `data.num_workers`, micro-batch and shards: `load_state_dict(state)`, then iterate; calling `set_epoch` with
a different epoch first discards the loaded position (the new epoch starts from its beginning).

Detection (AVA shards, field `boxes`): clips of `data.num_frames` × `data.sampling_rate` centred on each sample's
keyframe; training crops `data.crop_size`² after a short-side jitter in `data.detection.train_short_side` and flips
(`data.flip`), with the ground truth plus detections scoring ≥ `data.detection.train_score` as RoIs; testing takes
the full frame at short side `data.test_short_side`, one clip per keyframe, with the detections scoring ≥
`data.detection.test_score` (or the ground truth: `data.detection.test_boxes`), batches padded to a multiple of
`pad_multiple`. The number of action ids A (columns of `box_labels`) is `num_actions`, by default the length of
the split manifest's `classes`.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from mfvideo.data.augment import RandAugment
from mfvideo.data.clips import (ClipMaker, DetectionEvalClips, DetectionTrainClips, EvalClips, TemporalSampling,
                                TrainClips)
from mfvideo.data.collate import Collate
from mfvideo.data.shardio import ReadPolicy
from mfvideo.data.shardlist import read_split_manifest
from mfvideo.data.stream import ClipStream
from mfvideo.data.transforms import (DetectionEvalTransform, DetectionTrainTransform, EvalTransform, Normalise,
                                     TrainTransform)
from mfvideo.preemption import leave_preemption_to_parent

BatchAugment = Callable[[dict, np.random.Generator], dict]

logger = logging.getLogger(__name__)

# Full test frames are padded right and bottom to a multiple of the largest output stride a detector may read
# (model.detection_stride 16 or 32): the detector sees each clip at its own size rounded up to its stride.
TEST_PAD_MULTIPLE = 32


class StreamLoader(StatefulDataLoader):
    """StatefulDataLoader over a ClipStream, with the epoch and the batch count in its state. Workers hand over uint8
    video; it is normalised to float32 here, on the current CUDA device when there is one (a quarter of the bytes
    through shared memory and to the GPU, and no float work on the host), else on the CPU."""

    def __init__(self, stream: ClipStream, num_workers: int, normalise: Normalise, keep_pixels: bool = False,
                 batch_augment: Optional[BatchAugment] = None, seed: int = 0):
        # Its own generator: drawing the workers' base seed from the global torch RNG would shift the training
        # process's random stream (drop path) between a fresh epoch and a mid-epoch resume. The stream seeds
        # everything it samples from (seed, epoch, position), so this seed decides nothing. Workers ignore a
        # scheduler's SIGTERM/SIGUSR1 sent to the whole process group: the training process finishes its step
        # with them and then stops them (mfvideo.preemption).
        super().__init__(stream, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                         generator=torch.Generator().manual_seed(0), worker_init_fn=leave_preemption_to_parent)
        self.stream = stream
        self.normalise = normalise
        self.keep_pixels = keep_pixels
        self.batch_augment = batch_augment
        self.seed = seed
        self.batches = 0  # yielded in the current epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        if self.next_iter_state is None:
            self.batches = 0
        for batch in super().__iter__():
            if device is not None:
                batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            if self.keep_pixels:
                batch["pixels"] = batch["video"]
            batch["video"] = self.normalise(batch["video"])
            self.batches += 1
            if self.batch_augment is not None:
                rng = np.random.default_rng([self.seed, self.stream.epoch, self.stream.rank, self.batches, 0xA06])
                batch = self.batch_augment(batch, rng)
            yield batch

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.stream.epoch and self.next_iter_state is not None:
            logger.info("loader: epoch %d requested, dropping the loaded position in epoch %d", epoch,
                        self.stream.epoch)
            self.next_iter_state = None
        self.stream.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.stream.epoch, "batches": self.batches, "loader": super().state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.set_epoch(int(state["epoch"]))
        self.batches = int(state["batches"])
        super().load_state_dict(state["loader"])


def read_policy(data_cfg) -> ReadPolicy:
    """How `data_cfg`'s shards and manifests are read: data.read_timeout, data.read_retries, data.read_backoff."""
    return ReadPolicy(data_cfg.read_timeout, data_cfg.read_retries, data_cfg.read_backoff)


def _temporal(data_cfg) -> TemporalSampling:
    return TemporalSampling(data_cfg.num_frames, data_cfg.sampling_rate, data_cfg.reference_fps, data_cfg.sampling)


def _mask_generator(mask_cfg, data_cfg):
    if mask_cfg is None or mask_cfg.mode == "none":
        return None
    from mfvideo.targets.masks import build_mask_generator, mask_grid

    grid = mask_grid(data_cfg.num_frames, data_cfg.crop_size)
    return build_mask_generator(mask_cfg.mode, grid, ratio=mask_cfg.ratio, min_units=mask_cfg.min_units,
                                max_tries=mask_cfg.max_tries)


def _num_actions(data_cfg, pattern: str, manifest: Optional[str], num_actions: Optional[int]) -> int:
    if num_actions is not None:
        if num_actions < 1:
            raise ValueError(f"num_actions must be at least 1, got {num_actions}")
        return num_actions
    classes = read_split_manifest(pattern, manifest, read_policy(data_cfg)).get("classes") or []
    if not classes:
        raise ValueError(f"{pattern!r}: its manifest lists no classes, so the number of action ids is unknown "
                         f"(make the shards with an action list, or pass num_actions)")
    return len(classes)


def _check_detection_sampling(data_cfg, fields: Sequence[str]) -> None:
    if "mask" in fields:
        raise ValueError("batch fields 'boxes' and 'mask' asked for together: detection clips carry no masks")
    if data_cfg.sampling != "random":
        raise ValueError(f"data.sampling={data_cfg.sampling!r}: detection clips are centred on their keyframe at "
                         f"data.sampling_rate; set data.sampling=random")


def _detection_train_clips(data_cfg, fields: Sequence[str], rand_augment: Optional[str],
                           num_actions: Optional[int]) -> DetectionTrainClips:
    _check_detection_sampling(data_cfg, fields)
    if rand_augment:
        raise ValueError(f"RandAugment ({rand_augment!r}) shears, translates and rotates pixels without their boxes: "
                         f"detection clips cannot use it (set augment.rand_augment to '')")
    detection = data_cfg.detection
    transform = DetectionTrainTransform(data_cfg.crop_size, detection.train_short_side, data_cfg.flip)
    actions = _num_actions(data_cfg, data_cfg.train, data_cfg.train_manifest, num_actions)
    return DetectionTrainClips(_temporal(data_cfg), transform, data_cfg.repeated_sampling, actions,
                               detection.train_score)


def build_train_loader(data_cfg, mask_cfg, micro_batch_size: int, rank: int, world_size: int, seed: int,
                       fields: Sequence[str] = ("label",), rand_augment: Optional[str] = None,
                       batch_augment: Optional[BatchAugment] = None, keep_pixels: bool = False,
                       num_actions: Optional[int] = None) -> StreamLoader:
    """Training loader for `data_cfg.train`: random clips (×`repeated_sampling`), random resized crops, flips,
    RandAugment when `rand_augment` names a spec, masks from `mask_cfg` when `fields` has "mask", shuffled per epoch
    from `seed`; `batch_augment` on every batch where it is consumed. With "boxes" in `fields`: detection clips
    (module docstring), `num_actions` action ids (default: the train manifest's classes)."""
    clip_maker: ClipMaker
    if "boxes" in fields:
        clip_maker = _detection_train_clips(data_cfg, fields, rand_augment, num_actions)
    else:
        transform = TrainTransform(data_cfg.crop_size, data_cfg.train_crop_area, data_cfg.train_crop_aspect,
                                   data_cfg.flip, RandAugment.from_spec(rand_augment) if rand_augment else None)
        masks = _mask_generator(mask_cfg, data_cfg) if "mask" in fields else None
        if "mask" in fields and masks is None:
            raise ValueError("batch field 'mask' asked for, but mask.mode is 'none'")
        clip_maker = TrainClips(_temporal(data_cfg), transform, data_cfg.repeated_sampling, masks)
    stream = ClipStream(data_cfg.train, data_cfg.train_manifest, clip_maker, Collate(fields), True,
                        micro_batch_size, rank, world_size, data_cfg.num_workers, seed, data_cfg.shuffle_buffer,
                        data_cfg.max_failure_fraction, read_policy(data_cfg))
    return StreamLoader(stream, data_cfg.num_workers, Normalise(data_cfg.mean, data_cfg.std), keep_pixels,
                        batch_augment, seed)


def _detection_test_clips(data_cfg, fields: Sequence[str], pattern: str, manifest: Optional[str], num_clips: int,
                          num_crops: int, num_actions: Optional[int]) -> DetectionEvalClips:
    _check_detection_sampling(data_cfg, fields)
    if (num_clips, num_crops) != (1, 1):
        raise ValueError(f"detection tests one full-frame clip per keyframe, but {num_clips} temporal views "
                         f"(data.test_clips, or data.val_clips for validation) × {num_crops} crops "
                         f"(data.test_crops) were asked for: set them to 1")
    detection = data_cfg.detection
    return DetectionEvalClips(_temporal(data_cfg), DetectionEvalTransform(data_cfg.test_short_side),
                              _num_actions(data_cfg, pattern, manifest, num_actions), detection.test_score,
                              detection.test_boxes)


def build_test_loader(data_cfg, micro_batch_size: int, rank: int, world_size: int,
                      pattern: Optional[str] = None, manifest: Optional[str] = None,
                      num_clips: Optional[int] = None, num_crops: Optional[int] = None,
                      fields: Sequence[str] = ("label", "view"), num_actions: Optional[int] = None,
                      pad_multiple: int = TEST_PAD_MULTIPLE) -> StreamLoader:
    """Multi-view loader for `pattern` and its `manifest` (default: `data_cfg.val`, `data_cfg.val_manifest`):
    `num_clips` temporal views (default `data_cfg.test_clips`) × `num_crops` spatial crops (default
    `data_cfg.test_crops`) per video, every video once over all ranks (slots short of data repeat views). With
    "boxes" in `fields`: one full-frame detection clip per keyframe (both counts must be 1), `num_actions` action ids
    (default: the manifest's classes), batches padded right and bottom to a multiple of `pad_multiple`; other clips are all `data.crop_size`² and never padded."""
    if pattern is None:
        pattern, manifest = data_cfg.val, data_cfg.val_manifest
    if not pattern:
        raise ValueError("data.val is not set: no shards to test on")
    num_clips = data_cfg.test_clips if num_clips is None else num_clips
    num_crops = data_cfg.test_crops if num_crops is None else num_crops
    clip_maker: ClipMaker
    if "boxes" in fields:
        clip_maker = _detection_test_clips(data_cfg, fields, pattern, manifest, num_clips, num_crops, num_actions)
        collate = Collate(fields, pad_multiple)
    else:
        clip_maker = EvalClips(_temporal(data_cfg), EvalTransform(data_cfg.crop_size, data_cfg.test_short_side,
                                                                  num_crops), num_clips)
        collate = Collate(fields)
    stream = ClipStream(pattern, manifest, clip_maker, collate, False, micro_batch_size, rank,
                        world_size, data_cfg.num_workers, 0, 0, data_cfg.max_failure_fraction, read_policy(data_cfg))
    return StreamLoader(stream, data_cfg.num_workers, Normalise(data_cfg.mean, data_cfg.std))
