"""Loaders for the data-layer tests, composed the way the task slices compose them (`mfvideo.tasks`), but with any
set of batch fields: a test may ask for labels and masks together, which no task does.

`fields` names collate fields: "label", "mask", "view" (video_index and view), "boxes" (the detection RoIs, which
also makes the clips keyframe-centred detection clips)."""

from mfvideo.data.augment import RandAugment
from mfvideo.data.clips import DetectionEvalClips, DetectionTrainClips, EvalClips, TemporalSampling, TrainClips
from mfvideo.data.collate import LABELS, MASKS, ROIS, VIEWS, Collate
from mfvideo.data.loader import Batching, keeping_pixels, normalising, read_policy
from mfvideo.data.loader import build_test_loader as data_test_loader
from mfvideo.data.loader import build_train_loader as data_train_loader
from mfvideo.data.shardlist import read_split_manifest
from mfvideo.data.stream import Placement, ShardSplit
from mfvideo.data.transforms import DetectionEvalTransform, DetectionTrainTransform, EvalTransform, TrainTransform
from mfvideo.targets.masks import build_mask_generator, mask_grid
from mfvideo.tasks.detect import TEST_PAD_MULTIPLE

FIELDS = {"label": LABELS, "mask": MASKS, "view": VIEWS, "boxes": ROIS}


def _temporal(cfg):
    return TemporalSampling(cfg.num_frames, cfg.sampling_rate, cfg.reference_fps, cfg.sampling)


def _num_actions(cfg, pattern, manifest, num_actions):
    if num_actions is not None:
        return num_actions
    return len(read_split_manifest(pattern, manifest, read_policy(cfg)).get("classes") or [])


def build_train_loader(
    cfg,
    mask_cfg,
    micro_batch_size,
    rank,
    world_size,
    seed,
    fields=("label",),
    rand_augment=None,
    batch_augment=None,
    keep_pixels=False,
    num_actions=None,
):
    steps = (keeping_pixels,) if keep_pixels else ()
    steps += (normalising(cfg.mean, cfg.std),)
    if batch_augment is not None:
        steps += (batch_augment,)
    if "boxes" in fields:
        transform = DetectionTrainTransform(cfg.crop_size, cfg.detection.train_short_side, flip=cfg.flip)
        clips = DetectionTrainClips(
            _temporal(cfg),
            transform,
            cfg.repeated_sampling,
            _num_actions(cfg, cfg.train, cfg.train_manifest, num_actions),
            cfg.detection.train_score,
        )
    else:
        transform = TrainTransform(
            cfg.crop_size,
            cfg.train_crop_area,
            cfg.train_crop_aspect,
            flip=cfg.flip,
            rand_augment=RandAugment.from_spec(rand_augment) if rand_augment else None,
        )
        masks = None
        if "mask" in fields:
            masks = build_mask_generator(
                mask_cfg.mode,
                mask_grid(cfg.num_frames, cfg.crop_size),
                ratio=mask_cfg.ratio,
                min_units=mask_cfg.min_units,
                max_tries=mask_cfg.max_tries,
            )
        clips = TrainClips(_temporal(cfg), transform, cfg.repeated_sampling, masks)
    batching = Batching(clips, Collate([FIELDS[name] for name in fields]), steps)
    return data_train_loader(cfg, batching, micro_batch_size, Placement(rank, world_size, cfg.num_workers), seed)


def build_test_loader(
    cfg,
    micro_batch_size,
    rank,
    world_size,
    pattern=None,
    manifest=None,
    num_clips=None,
    num_crops=None,
    fields=("label", "view"),
    num_actions=None,
    pad_multiple=TEST_PAD_MULTIPLE,
):
    if pattern is None:
        pattern, manifest = cfg.val, cfg.val_manifest
    num_clips = cfg.test_clips if num_clips is None else num_clips
    num_crops = cfg.test_crops if num_crops is None else num_crops
    if "boxes" in fields:
        clips = DetectionEvalClips(
            _temporal(cfg),
            DetectionEvalTransform(cfg.test_short_side),
            _num_actions(cfg, pattern, manifest, num_actions),
            cfg.detection.test_score,
            cfg.detection.test_boxes,
        )
        collate = Collate([FIELDS[name] for name in fields], pad_multiple)
    else:
        clips = EvalClips(_temporal(cfg), EvalTransform(cfg.crop_size, cfg.test_short_side, num_crops), num_clips)
        collate = Collate([FIELDS[name] for name in fields])
    batching = Batching(clips, collate, (normalising(cfg.mean, cfg.std),))
    return data_test_loader(
        cfg,
        ShardSplit(pattern, manifest, read_policy(cfg)),
        batching,
        micro_batch_size,
        Placement(rank, world_size, cfg.num_workers),
    )
