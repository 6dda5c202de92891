"""Typed recipe schema. Every recipe key exists here with its type; YAML may only override.

Batch size and learning rate are **global** (all devices of all nodes): the per-device micro-batch
and the accumulation steps are derived from them at start (`derive_batch_split`).

A numeric key's allowed range is declared beside it (`at_least`, `above`, `within`: a `Range` in the field's
metadata, for a list every element); `load_recipe` checks every one before any work (`range_problems`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING

from mfvideo.common.read_policy import ReadPolicy

RANGE = "range"  # the metadata key of a field's Range


@dataclass(frozen=True)
class Range:
    """The values a numeric key (every element of a list key) may take: finite, between the bounds; a list key
    with a `length` has exactly that many elements."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # the bound itself is outside the range
    high_open: bool = False
    length: Optional[int] = None

    def contains(self, value: float) -> bool:
        above_low = value > self.low if self.low_open else value >= self.low
        below_high = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above_low and below_high

    def __str__(self) -> str:
        if self.low == -math.inf and self.high == math.inf:
            return "a finite number"
        low, high = _shown(self.low), _shown(self.high)
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {low}, finite"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _shown(bound: float) -> str:
    return str(int(bound)) if math.isfinite(bound) and bound == int(bound) else f"{bound:g}"


def at_least(low: float, default: Any = MISSING, factory=None, length: Optional[int] = None):
    return _ranged(Range(low, length=length), default, factory)


def above(low: float, default: Any = MISSING, factory=None, length: Optional[int] = None):
    return _ranged(Range(low, low_open=True, length=length), default, factory)


def within(
    low: float,
    high: float,
    default: Any = MISSING,
    factory=None,
    low_open: bool = False,
    high_open: bool = False,
    length: Optional[int] = None,
):
    return _ranged(Range(low, high, low_open, high_open, length), default, factory)


def finite(default: Any = MISSING, factory=None, length: Optional[int] = None):
    return _ranged(Range(length=length), default, factory)


def _ranged(allowed: Range, default: Any, factory):
    if factory is not None:
        return field(default_factory=factory, metadata={RANGE: allowed})
    return field(default=default, metadata={RANGE: allowed})


@dataclass
class DetectionDataConfig:
    """AVA detection clips (batch field `boxes`; mfvideo.data.boxes, DetectionTrainTransform, DetectionEvalTransform).
    The defaults are PySlowFast's AVA recipe; testing scales the full frame to `data.test_short_side` (no crop)."""

    # training: the short side is resized to a whole number drawn uniformly from [min, max] before the
    # data.crop_size² random crop (min >= data.crop_size)
    train_short_side: List[int] = at_least(1, factory=lambda: [256, 320], length=2)
    # training RoIs: the ground truth plus person detections scoring at least this (labelled from the ground truth
    # they overlap with IoU >= 0.9, else negatives)
    train_score: float = within(0, 1, default=0.8)
    # test RoIs: person detections scoring at least this (when test_boxes is "detections")
    test_score: float = within(0, 1, default=0.8)
    # the boxes scored at test time: the person detections (the AVA protocol) or the ground truth (the classifier
    # alone)
    test_boxes: str = "detections"
    # what the AVA evaluation (mfvideo.evaluation.ava) scores the val detections against: the label map of the
    # evaluated actions (AVA: the 60 of ava_action_list_v2.2_for_activitynet_2019.pbtxt), the ground-truth CSV of the
    # val split and its excluded keyframes (optional); needed for validation (train.eval_every) and tools/test.py
    label_map: Optional[str] = None
    val_groundtruth: Optional[str] = None
    val_excluded: Optional[str] = None


@dataclass
class DataConfig:
    train: str = MISSING  # shard pattern or URL, e.g. shards/k400/train/train-{000000..000099}.tar
    val: Optional[str] = None
    train_manifest: Optional[str] = None  # manifest.json of the train shards; default: beside them (needed for pipe:)
    val_manifest: Optional[str] = None  # same for data.val
    # Labelled splits of the k-NN probe during pretraining (train.probe_every): its neighbours and its queries,
    # e.g. a few thousand train and val videos of the fine-tuning dataset; both manifests must list the same classes.
    probe_train: Optional[str] = None
    probe_val: Optional[str] = None
    probe_train_manifest: Optional[str] = None  # manifest.json of data.probe_train; default: beside its shards
    probe_val_manifest: Optional[str] = None  # same for data.probe_val
    num_frames: int = at_least(1, default=16)  # T of a clip (1 for images)
    sampling_rate: int = at_least(1, default=4)  # frame stride at `reference_fps`; scaled by the video's real fps
    reference_fps: float = above(0, default=30.0)
    sampling: str = "random"  # clips at sampling_rate; SSv2 takes segments
    crop_size: int = at_least(1, default=224)
    train_crop_area: List[float] = within(0, 1, factory=lambda: [0.5, 1.0], low_open=True, length=2)
    train_crop_aspect: List[float] = above(0, factory=lambda: [0.75, 4.0 / 3.0], length=2)
    test_short_side: int = at_least(1, default=256)
    test_clips: int = at_least(1, default=10)  # temporal views at test time (tools/test.py)
    test_crops: int = 1  # spatial crops per temporal view
    val_clips: int = at_least(1, default=1)  # temporal views of the validation pass during training (centre crop)
    flip: bool = True  # off for SSv2: its labels are directional
    mean: List[float] = finite(factory=lambda: [0.45, 0.45, 0.45], length=3)  # per colour channel
    std: List[float] = above(0, factory=lambda: [0.225, 0.225, 0.225], length=3)
    repeated_sampling: int = at_least(1, default=1)  # clips drawn from one decoded video
    decoder: str = "pyav"  # video decoder in the workers (mfvideo.data.decode; docs/data.md compares them)
    # where videos decode: cuda = NVDEC through torchcodec, the workers ship the bytes and the crops run on the GPU
    decode_device: str = "cpu"
    num_workers: int = at_least(0, default=8)  # loader processes per rank
    shuffle_buffer: int = at_least(0, default=1000)  # samples
    # stop when more than this fraction of samples fails to decode
    max_failure_fraction: float = within(0, 1, default=0.01)
    # Reading shards and manifests (mfvideo.common.read_policy.ReadPolicy): seconds without a byte before a read fails,
    # failed attempts in a row retried before the error, seconds before the first retry (doubling after each).
    read_timeout: float = above(0, default=ReadPolicy.timeout)
    read_retries: int = at_least(0, default=ReadPolicy.retries)
    read_backoff: float = at_least(0, default=ReadPolicy.backoff)
    detection: DetectionDataConfig = field(default_factory=DetectionDataConfig)


@dataclass
class AugmentConfig:
    """Fine-tuning augmentation (all off for pretraining). RandAugment runs in the loader workers on each clip;
    random erasing and mixup/CutMix run on the batch where it is consumed (the GPU when there is one)."""

    rand_augment: str = ""  # timm-style spec, e.g. rand-m7-n2-mstd0.5-inc1; "" = off
    # random erasing: one cube per clip (same box on every frame), pixel mode
    erase_prob: float = within(0, 1, default=0.0)
    mixup_alpha: float = at_least(0, default=0.0)  # 0 = no mixup
    cutmix_alpha: float = at_least(0, default=0.0)  # 0 = no CutMix
    mix_switch_prob: float = within(0, 1, default=0.5)  # CutMix instead of mixup when both are on
    mix_prob: float = within(0, 1, default=1.0)  # batches mixed at all
    label_smoothing: float = within(0, 1, default=0.0, high_open=True)


@dataclass
class MaskConfig:
    mode: str = "cube"  # block for images, none for fine-tuning and detection
    ratio: float = within(0, 1, default=0.4, low_open=True, high_open=True)
    min_units: int = at_least(1, default=9)  # smallest cube face in mask units (49 // 5); 15 for 2-D blocks
    max_tries: int = at_least(1, default=100)


@dataclass
class HogConfig:
    cell_size: int = at_least(1, default=8)
    bins: int = at_least(1, default=9)
    gaussian_window: int = at_least(0, default=0)  # 0 = off (official); 16 in one re-implementation


@dataclass
class ModelConfig:
    arch: str = "mvit_s"
    task: str = "pretrain"
    num_classes: int = at_least(1, default=400)
    drop_path: float = within(0, 1, default=0.0, high_open=True)
    dropout: float = within(0, 1, default=0.5, high_open=True)
    init: Optional[str] = None  # checkpoint to start from (mfvideo, PySlowFast or torchvision layout)
    activation_checkpointing: bool = False
    hog: HogConfig = field(default_factory=HogConfig)
    # models: where a stage's channels grow — false: in the MLP (MaskFeat checkpoints), true: in the attention
    # (supervised MViTv2, torchvision's mvit_v2_s); the two checkpoint layouts differ.
    dim_mul_in_att: bool = False
    pooling: str = "mean"  # classify: mean (MaskFeat fine-tuning); torchvision mvit_v2_s uses cls
    # detect: pixels per token of the grid the RoI head reads; 16 removes the last Q stride, as in MaskFeat
    # pretraining and MaskFeat's AVA setting
    detection_stride: int = 16


@dataclass
class OptimConfig:
    lr: float = above(0, default=8e-4)  # global: for the whole global batch
    warmup_start_lr: float = at_least(0, default=1e-6)
    min_lr: float = at_least(0, default=1e-6)
    weight_decay: float = at_least(0, default=0.05)
    betas: List[float] = within(0, 1, factory=lambda: [0.9, 0.999], high_open=True, length=2)
    eps: float = above(0, default=1e-8)
    layer_decay: float = within(0, 1, default=1.0, low_open=True)  # 1.0 = off
    clip_grad: float = at_least(0, default=0.02)  # L2 norm; 0 = off
    epochs: int = at_least(1, default=300)
    warmup_epochs: float = at_least(0, default=10.0)


@dataclass
class TrainConfig:
    global_batch_size: int = at_least(1, default=256)  # clips per optimizer step, all devices of all nodes
    micro_batch_size: int = at_least(1, default=4)  # clips per device per forward
    zero_stage: int = 2
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    seed: int = within(0, 2**32 - 1, default=0)  # NumPy and torch seeds are 32-bit
    output_dir: str = "outputs/run"
    checkpoint_every: int = at_least(1, default=1000)  # steps; also at every epoch end
    keep_last: int = at_least(0, default=3)
    log_every: int = at_least(1, default=10)
    max_steps: int = at_least(0, default=0)  # 0 = run all epochs
    max_nonfinite_steps: int = at_least(1, default=5)  # consecutive non-finite losses that stop the run
    eval_every: int = at_least(0, default=0)  # epochs between validation passes on data.val; 0 = none
    # pretraining: epochs between k-NN probes of the frozen backbone (data.probe_train → data.probe_val; also at
    # step 0 and at the last step); 0 = none
    probe_every: int = at_least(0, default=0)
    probe_k: int = at_least(1, default=20)  # neighbours voting for a probe video's class
    probe_temperature: float = above(0, default=0.07)  # a neighbour's vote is exp(cosine similarity / this)


@dataclass
class Recipe:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def range_problems(section: Any, prefix: str = "") -> list[str]:
    """ "key 'section.key' is VALUE; expected RANGE" for every value of `section` (a Recipe or one of its sections)
    outside the range declared beside its key."""
    problems = []
    for spec in dataclasses.fields(section):
        value, key = getattr(section, spec.name), f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(value):
            problems += range_problems(value, f"{key}.")
        elif RANGE in spec.metadata:
            allowed = spec.metadata[RANGE]
            is_list = isinstance(value, (list, tuple))
            items = list(value) if is_list else [value]
            if allowed.length is not None and len(items) != allowed.length:
                problems.append(f"key '{key}' is {items!r}; expected {allowed.length} values")
            elif not all(allowed.contains(item) for item in items):
                problems.append(f"key '{key}' is {value!r}; expected {'each ' if is_list else ''}{allowed}")
    return problems


@dataclass(frozen=True)
class BatchSplit:
    global_batch_size: int
    micro_batch_size: int
    world_size: int
    accumulation_steps: int


def derive_batch_split(train: TrainConfig, world_size: int) -> BatchSplit:
    """global = micro × accumulation × world; raise ValueError naming the keys when it does not divide."""
    per_step = train.micro_batch_size * world_size
    if train.micro_batch_size <= 0 or train.global_batch_size <= 0:
        raise ValueError("train.global_batch_size and train.micro_batch_size must be positive")
    if train.global_batch_size % per_step:
        per_process = train.global_batch_size // world_size if train.global_batch_size % world_size == 0 else "it"
        raise ValueError(
            f"train.global_batch_size={train.global_batch_size} is not a multiple of "
            f"train.micro_batch_size={train.micro_batch_size} × world size {world_size} = {per_step}; "
            f"choose a micro-batch that divides {per_process}"
        )
    return BatchSplit(train.global_batch_size, train.micro_batch_size, world_size, train.global_batch_size // per_step)
