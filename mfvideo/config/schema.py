"""Typed recipe schema. Every recipe key exists here with its type; YAML may only override.

Batch size and learning rate are **global** (all devices of all nodes): the per-device micro-batch
and the accumulation steps are derived from them at start (`derive_batch_split`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING


@dataclass
class DataConfig:
    train: str = MISSING                  # shard pattern or URL, e.g. shards/k400/train/train-{000000..000099}.tar
    val: Optional[str] = None
    train_manifest: Optional[str] = None  # manifest.json of the train shards; default: beside them (needed for pipe:)
    val_manifest: Optional[str] = None    # same for data.val
    num_frames: int = 16                  # T of a clip (1 for images)
    sampling_rate: int = 4                # frame stride at `reference_fps`; scaled by the video's real fps
    reference_fps: float = 30.0
    sampling: str = "random"              # random | segment (SSv2)
    crop_size: int = 224
    train_crop_area: List[float] = field(default_factory=lambda: [0.5, 1.0])
    train_crop_aspect: List[float] = field(default_factory=lambda: [0.75, 4.0 / 3.0])
    test_short_side: int = 256
    test_clips: int = 10                  # temporal views at test time (tools/test.py)
    test_crops: int = 1                   # 1 (centre) or 3 spatial crops
    val_clips: int = 1                    # temporal views of the validation pass during training (centre crop)
    flip: bool = True                     # off for SSv2: its labels are directional
    mean: List[float] = field(default_factory=lambda: [0.45, 0.45, 0.45])
    std: List[float] = field(default_factory=lambda: [0.225, 0.225, 0.225])
    repeated_sampling: int = 1            # clips drawn from one decoded video
    num_workers: int = 8                  # loader processes per rank
    shuffle_buffer: int = 1000            # samples
    max_failure_fraction: float = 0.01    # stop when more than this fraction of samples fails to decode


@dataclass
class AugmentConfig:
    """Fine-tuning augmentation (all off for pretraining). RandAugment runs in the loader workers on each clip;
    random erasing and mixup/CutMix run on the batch where it is consumed (the GPU when there is one)."""

    rand_augment: str = ""                # timm-style spec, e.g. rand-m7-n2-mstd0.5-inc1; "" = off
    erase_prob: float = 0.0               # random erasing: one cube per clip (same box on every frame), pixel mode
    mixup_alpha: float = 0.0              # 0 = no mixup
    cutmix_alpha: float = 0.0             # 0 = no CutMix
    mix_switch_prob: float = 0.5          # CutMix instead of mixup when both are on
    mix_prob: float = 1.0                 # batches mixed at all
    label_smoothing: float = 0.0


@dataclass
class MaskConfig:
    mode: str = "cube"                    # cube | tube | frame | block (images) | none (fine-tuning, detection)
    ratio: float = 0.4
    min_units: int = 9                    # smallest cube face in mask units (49 // 5); 15 for 2-D blocks
    max_tries: int = 100


@dataclass
class HogConfig:
    cell_size: int = 8
    bins: int = 9
    gaussian_window: int = 0              # 0 = off (official); 16 in one re-implementation


@dataclass
class ModelConfig:
    arch: str = "mvit_s"                  # mfvideo.models.mvit.ARCHS
    task: str = "pretrain"                # mfvideo.tasks.TASKS: pretrain | classify
    num_classes: int = 400
    drop_path: float = 0.0
    dropout: float = 0.5
    init: Optional[str] = None            # checkpoint to start from (mfvideo, PySlowFast or torchvision layout)
    activation_checkpointing: bool = False
    hog: HogConfig = field(default_factory=HogConfig)
    # models: where a stage's channels grow — false: in the MLP (MaskFeat checkpoints), true: in the attention
    # (supervised MViTv2, torchvision's mvit_v2_s); the two checkpoint layouts differ.
    dim_mul_in_att: bool = False
    pooling: str = "mean"                 # models, classify: mean (MaskFeat fine-tuning) | cls (torchvision mvit_v2_s)


@dataclass
class OptimConfig:
    lr: float = 8e-4                      # global: for the whole global batch
    warmup_start_lr: float = 1e-6
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    layer_decay: float = 1.0              # 1.0 = off
    clip_grad: float = 0.02               # L2 norm; 0 = off
    epochs: int = 300
    warmup_epochs: float = 10.0


@dataclass
class TrainConfig:
    global_batch_size: int = 256          # clips per optimizer step, all devices of all nodes
    micro_batch_size: int = 4             # clips per device per forward
    zero_stage: int = 2
    precision: str = "auto"               # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    seed: int = 0
    output_dir: str = "outputs/run"
    checkpoint_every: int = 1000          # steps; also at every epoch end
    keep_last: int = 3
    log_every: int = 10
    max_steps: int = 0                    # 0 = run all epochs
    max_nonfinite_steps: int = 5          # consecutive non-finite losses that stop the run
    eval_every: int = 0                   # epochs between validation passes on data.val; 0 = none


@dataclass
class Recipe:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


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
        raise ValueError(
            f"train.global_batch_size={train.global_batch_size} is not a multiple of "
            f"train.micro_batch_size={train.micro_batch_size} × world size {world_size} = {per_step}; "
            f"choose a micro-batch that divides {train.global_batch_size // world_size if train.global_batch_size % world_size == 0 else 'it'}"
        )
    return BatchSplit(train.global_batch_size, train.micro_batch_size, world_size,
                      train.global_batch_size // per_step)
