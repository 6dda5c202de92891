"""Loaders: `build_train_loader` and `build_test_loader`, task-neutral.

A loader is given its `Batching`: the clip maker that turns each video into its clips and the collate that turns
clips into a batch (both in the workers), and the steps that run on every batch after it reached the device
(normalising the video, and whatever the task adds: keeping the uint8 pixels, mixing). `iter(loader)` yields the
batch dicts the collate made, changed by those steps (`mfvideo.data.fields` declares every key), every tensor on
the current CUDA device when CUDA is available (set the device before iterating), else on the CPU. A device step
gets a generator drawn from (seed, epoch, rank, batch number): resumed runs see the same draws. Videos decode in the
workers with `data.decoder`, or on the device (`data.decode_device`, `mfvideo.data.device_decode`), where decoding
is the first device step.

`len(loader)` is the batches per epoch, the same on every rank. The loader is a torchdata `StatefulDataLoader`; its
`state_dict()` is `{"epoch": e, "batches": batches yielded this epoch, "loader": <StatefulDataLoader state with each
worker's ClipStream state>}` (see `mfvideo.data.stream` for the per-worker contract). Resume with the same world
size, number of workers, micro-batch and shards: `load_state_dict(state)`, then iterate; calling `set_epoch` with
a different epoch first discards the loaded position (the new epoch starts from its beginning).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from mfvideo.common.preemption import leave_preemption_to_parent
from mfvideo.common.read_policy import ReadPolicy
from mfvideo.data import fields
from mfvideo.data.clips import ClipMaker
from mfvideo.data.collate import Collate
from mfvideo.data.decode import Decoding
from mfvideo.data.device_decode import DeviceDecoding
from mfvideo.data.stream import ClipStream, Placement, ShardSplit, TrainOrder
from mfvideo.data.transforms import Normalise

BatchStep = Callable[[dict, np.random.Generator], dict]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batching:
    """How a loader makes its batches: `clip_maker` and `collate` in the workers, then `device_steps` in order on
    every batch once it is on the device."""

    clip_maker: ClipMaker
    collate: Collate
    device_steps: tuple[BatchStep, ...] = ()


def normalising(mean: Sequence[float], std: Sequence[float]) -> BatchStep:
    """The device step that turns the uint8 `video` into the float32 input of the model."""
    normalise = Normalise(mean, std)

    def step(batch: dict, rng: np.random.Generator) -> dict:
        batch[fields.VIDEO.name] = normalise(batch[fields.VIDEO.name])
        return batch

    return step


def keeping_pixels(batch: dict, rng: np.random.Generator) -> dict:
    """The device step that keeps the uint8 clip as `pixels` (before normalising: no extra copy or transfer), for
    targets that need its exact integer values."""
    batch[fields.PIXELS.name] = batch[fields.VIDEO.name]
    return batch


class StreamLoader(StatefulDataLoader):
    """StatefulDataLoader over a ClipStream, with the epoch and the batch count in its state. Workers hand over uint8
    video (a quarter of the bytes of float32 through shared memory and to the GPU); the device steps make the rest
    there, on the current CUDA device when there is one, else on the CPU."""

    def __init__(self, stream: ClipStream, num_workers: int, device_steps: Sequence[BatchStep] = (), seed: int = 0):
        # Its own generator: drawing the workers' base seed from the global torch RNG would shift the training
        # process's random stream (drop path) between a fresh epoch and a mid-epoch resume. The stream seeds
        # everything it samples from (seed, epoch, position), so this seed decides nothing. Workers ignore a
        # scheduler's SIGTERM/SIGUSR1 sent to the whole process group: the training process finishes its step
        # with them and then stops them (mfvideo.common.preemption).
        super().__init__(
            stream,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(0),
            worker_init_fn=leave_preemption_to_parent,
        )
        self.stream = stream
        self.device_steps = tuple(device_steps)
        self.seed = seed
        self.batches = 0  # yielded in the current epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        if self.next_iter_state is None:
            self.batches = 0
        for batch in super().__iter__():
            if device is not None:
                batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            self.batches += 1
            rng = np.random.default_rng([self.seed, self.stream.epoch, self.stream.rank, self.batches, 0xA06])
            for step in self.device_steps:
                batch = step(batch, rng)
            yield batch

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.stream.epoch and self.next_iter_state is not None:
            logger.info(
                "loader: epoch %d requested, dropping the loaded position in epoch %d", epoch, self.stream.epoch
            )
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


def _device_steps(decoding: Decoding, batching: Batching) -> tuple[BatchStep, ...]:
    """The batching's device steps, after decoding on the device when it decodes (`data.decode_device`)."""
    if decoding.device is None:
        return batching.device_steps
    return (DeviceDecoding(decoding.device), *batching.device_steps)


def build_train_loader(
    data_cfg, batching: Batching, micro_batch_size: int, placement: Placement, seed: int
) -> StreamLoader:
    """Training loader over `data_cfg.train`: shards dealt and samples shuffled (`data.shuffle_buffer`) per epoch
    from `seed`, every rank the same number of batches."""
    split = ShardSplit(data_cfg.train, data_cfg.train_manifest, read_policy(data_cfg))
    stream = ClipStream(
        split,
        batching.clip_maker,
        batching.collate,
        micro_batch_size,
        placement,
        TrainOrder(seed, data_cfg.shuffle_buffer),
        data_cfg.max_failure_fraction,
        Decoding.of(data_cfg),
    )
    return StreamLoader(stream, placement.num_workers, _device_steps(stream.decoding, batching), seed)


def build_test_loader(
    data_cfg, split: ShardSplit, batching: Batching, micro_batch_size: int, placement: Placement
) -> StreamLoader:
    """Test loader over `split`: every video once over all ranks, in shard order (slots short of data repeat
    views), its clips as `batching.clip_maker` makes them."""
    stream = ClipStream(
        split,
        batching.clip_maker,
        batching.collate,
        micro_batch_size,
        placement,
        None,
        data_cfg.max_failure_fraction,
        Decoding.of(data_cfg),
    )
    return StreamLoader(stream, placement.num_workers, _device_steps(stream.decoding, batching))
