"""Batches of clips streamed from tar shards: distributed, shuffled, resumable, and task-neutral.

`ClipStream` is an IterableDataset that runs inside each loader worker (one *slot* = one worker of one rank,
see `shardlist`). Per slot and epoch it reads its shards as an endless stream of undecoded samples, passes them
through a seeded shuffle buffer, turns each video into its clips once (`clip_maker`, which also sees the sample's
metadata) and hands groups of `batch_size` (sample, clip) pairs to `collate` (which decides the batch's fields, see
`collate`) until the slot's quota is met. Every rank emits the same number of batches (slots short of data cycle
their shards again; surplus samples wait for another epoch), so no collective can hang on uneven shards.

Randomness: the shard deal comes from (seed, epoch); the shuffle buffer's draws from (seed, epoch, rank,
worker); every video's clips from (seed, epoch, global sample index, cycle) — so a clip does not depend on which
worker decodes it or on anything decoded before it.

Resumable state, one per worker, taken by torchdata's StatefulDataLoader after every batch (`state_dict`):

    {"version": 1, "epoch": e, "rank": r, "worker": w,
     "read": positions read from the slot's stream so far,
     "buffer": positions held by the shuffle buffer, in slot order,
     "rng": bit-generator state of the shuffle buffer's generator,
     "emitted": clips emitted this epoch,
     "partial": [position, clips already emitted] of a video cut by a batch boundary, or None,
     "attempts": videos taken out of the buffer, "failures": of which failed to decode}

Positions are integers, so the state is small whatever the buffer size. On restore the worker re-reads the
undecoded tar bytes from the oldest position still needed up to `read`, keeping only the samples the state names,
and continues exactly where the uninterrupted run was; nothing consumed is decoded again (only a video cut by a
batch boundary, whose remaining clips are regenerated from its seed).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from mfvideo.data.clips import Clip, ClipMaker
from mfvideo.data.collate import Collate
from mfvideo.data.decode import DecodeError, Decoding
from mfvideo.data.shardio import ReadPolicy
from mfvideo.data.shardlist import (
    SlotPlan,
    check_enough_shards,
    eval_plans,
    list_shards,
    train_batches_per_rank,
    train_plans,
)
from mfvideo.data.tarstream import RawSample, samples_from

logger = logging.getLogger(__name__)

STATE_VERSION = 1
# A failure fraction means little over a handful of samples: until this many attempts the allowance is
# max_failure_fraction × this many (e.g. 1 failure in the first 100 at 1 %).
MIN_ATTEMPTS_FOR_FRACTION = 100


class TooManyFailures(RuntimeError):
    """More samples failed to decode than `data.max_failure_fraction` allows."""


@dataclass
class _Cursor:
    """A worker's position in its epoch (see the module docstring for the saved form)."""

    epoch: int
    rng: np.random.Generator
    read: int = 0
    buffer: list[tuple[int, RawSample]] = field(default_factory=list)
    emitted: int = 0
    partial: Optional[tuple[int, RawSample, int]] = None  # position, sample, clips already emitted
    attempts: int = 0
    failures: int = 0


@dataclass(frozen=True)
class ShardSplit:
    """The shards a stream reads: a pattern, its manifest (None: beside the shards) and how both are read (None:
    `ReadPolicy.from_env()`)."""

    pattern: str
    manifest: Optional[str] = None
    policy: Optional[ReadPolicy] = None


@dataclass(frozen=True)
class Placement:
    """Which part of the job a stream serves: its rank among `world_size`, with `num_workers` loader workers (0: the
    loading process itself, one slot)."""

    rank: int = 0
    world_size: int = 1
    num_workers: int = 0


@dataclass(frozen=True)
class TrainOrder:
    """A training stream's order: shards dealt and samples shuffled per epoch from `seed`, through a buffer of
    `shuffle_buffer` samples. A stream without one is a test stream: every video once, in shard order."""

    seed: int
    shuffle_buffer: int


class ClipStream(IterableDataset):
    def __init__(
        self,
        split: ShardSplit,
        clip_maker: ClipMaker,
        collate: Collate,
        batch_size: int,
        placement: Placement,
        order: Optional[TrainOrder] = None,
        max_failure_fraction: float = 0.0,
        decoding: Decoding = Decoding(),
    ):
        if not 0 <= placement.rank < placement.world_size:
            raise ValueError(f"rank {placement.rank} outside world size {placement.world_size}")
        if batch_size < 1:
            raise ValueError(f"micro-batch size must be positive, got {batch_size}")
        self.policy = split.policy or ReadPolicy.from_env()  # reads the manifest here and the shards in the workers
        self.shards = list_shards(split.pattern, split.manifest, self.policy)
        self.workers_per_rank = max(1, placement.num_workers)
        check_enough_shards(len(self.shards), placement.world_size, self.workers_per_rank, split.pattern)
        self.clip_maker = clip_maker
        self.collate = collate
        self.train = order is not None
        self.batch_size = batch_size
        self.rank = placement.rank
        self.world_size = placement.world_size
        self.seed = order.seed if order is not None else 0
        self.shuffle_buffer = order.shuffle_buffer if order is not None else 0
        self.max_failure_fraction = max_failure_fraction
        self.decoding = decoding
        self.epoch = 0
        self._resume: Optional[dict] = None
        self._cursor: Optional[_Cursor] = None

    # ----- epoch and length -------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.train:
            total = sum(shard.num_samples for shard in self.shards)
            return train_batches_per_rank(total, self.clip_maker.clips_per_video, self.world_size, self.batch_size)
        return sum(math.ceil(plan.quota_clips / self.batch_size) for plan in self._plans())

    def _plans(self) -> list[SlotPlan]:
        if self.train:
            return train_plans(
                self.shards,
                self.epoch,
                self.seed,
                self.rank,
                self.world_size,
                self.workers_per_rank,
                self.batch_size,
                self.clip_maker.clips_per_video,
            )
        return eval_plans(
            self.shards, self.rank, self.world_size, self.workers_per_rank, self.clip_maker.clips_per_video
        )

    def _worker(self) -> int:
        info = get_worker_info()
        if info is None:
            return 0
        if info.num_workers != self.workers_per_rank:
            raise RuntimeError(
                f"ClipStream was planned for {self.workers_per_rank} workers but runs in {info.num_workers}"
            )
        return info.id

    # ----- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        cursor = self._cursor
        if cursor is None:
            return {"version": STATE_VERSION, "epoch": self.epoch, "fresh": True}
        return {
            "version": STATE_VERSION,
            "epoch": cursor.epoch,
            "rank": self.rank,
            "worker": self._worker(),
            "read": cursor.read,
            "buffer": [position for position, _ in cursor.buffer],
            "rng": cursor.rng.bit_generator.state,
            "emitted": cursor.emitted,
            "partial": None if cursor.partial is None else [cursor.partial[0], cursor.partial[2]],
            "attempts": cursor.attempts,
            "failures": cursor.failures,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported stream state version {state.get('version')!r} (expected {STATE_VERSION})")
        self._resume = None if state.get("fresh") else state

    def _shuffle_rng(self, worker: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, self.rank, worker, 0x5EED])

    def _start(self, plan: SlotPlan, worker: int) -> _Cursor:
        state, self._resume = self._resume, None
        cursor = _Cursor(self.epoch, self._shuffle_rng(worker))
        if state is None or state["epoch"] != self.epoch:
            return cursor
        if (state["rank"], state["worker"]) != (self.rank, worker):
            raise ValueError(
                f"stream state of rank {state['rank']} worker {state['worker']} loaded into rank "
                f"{self.rank} worker {worker}: resume with the same world size and number of workers"
            )
        cursor.rng.bit_generator.state = state["rng"]
        cursor.read, cursor.emitted = state["read"], state["emitted"]
        cursor.attempts, cursor.failures = state["attempts"], state["failures"]
        wanted = set(state["buffer"]) | ({state["partial"][0]} if state["partial"] else set())
        kept = self._reread(plan, wanted, cursor.read)
        cursor.buffer = [(position, kept[position]) for position in state["buffer"]]
        if state["partial"]:
            position, done = state["partial"]
            cursor.partial = (position, kept[position], done)
        return cursor

    def _reread(self, plan: SlotPlan, wanted: set[int], end: int) -> dict[int, RawSample]:
        """Undecoded samples at the `wanted` positions (all < `end`), read again from the shards."""
        kept: dict[int, RawSample] = {}
        if not wanted:
            return kept
        stream = samples_from(plan, min(wanted), self.policy)
        for position, sample in stream:
            if position in wanted:
                kept[position] = sample
            if position + 1 >= end:
                break
        stream.close()
        return kept

    # ----- iteration --------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = self._worker()
        plan = self._plans()[worker]
        self._cursor = self._start(plan, worker)
        return self._batches(plan, self._cursor)

    def _pull(
        self, cursor: _Cursor, stream: Iterator[tuple[int, RawSample]], capacity: int, per_cycle: int
    ) -> tuple[int, RawSample]:
        """Next sample out of the shuffle buffer, refilled lazily so that nothing is read ahead of need. The buffer
        drains at the end of a cycle before refilling, so a slot shows all its samples before repeating any."""
        while len(cursor.buffer) < capacity and not (cursor.read % per_cycle == 0 and cursor.buffer):
            cursor.buffer.append(next(stream))
            cursor.read += 1
        if not cursor.buffer:
            cursor.read += 1
            return next(stream)
        slot = int(cursor.rng.integers(len(cursor.buffer)))
        item = cursor.buffer[slot]
        cursor.buffer[slot] = cursor.buffer[-1]
        cursor.buffer.pop()
        return item

    def _videos(self, plan: SlotPlan, cursor: _Cursor) -> Iterator[tuple[int, RawSample, int]]:
        """(position, sample, clips to skip): first a resumed partial video, then samples from the buffer."""
        if cursor.partial is not None:
            yield cursor.partial
        capacity = min(self.shuffle_buffer, plan.cycle_samples) if self.shuffle_buffer > 1 else 0
        stream = samples_from(plan, cursor.read, self.policy)
        while True:
            position, sample = self._pull(cursor, stream, capacity, plan.cycle_samples)
            yield position, sample, 0

    def _clips(self, sample: RawSample, cursor: _Cursor) -> Optional[list[Clip]]:
        cursor.attempts += 1
        try:
            meta = sample.meta
            extension, data = sample.media
            media = self.decoding.open(data, extension, int(meta.get("num_frames", 0)))
            rng = np.random.default_rng([self.seed, self.epoch, sample.index, sample.cycle])
            return self.clip_maker(media, rng, sample)
        except (DecodeError, KeyError, ValueError) as err:
            cursor.failures += 1
            logger.warning(
                "skipping sample %r of shard %r: %s (%d of %d samples failed in rank %d worker %d)",
                sample.key,
                sample.shard,
                err,
                cursor.failures,
                cursor.attempts,
                self.rank,
                self._worker(),
            )
            allowed = self.max_failure_fraction * max(cursor.attempts, MIN_ATTEMPTS_FOR_FRACTION)
            if cursor.failures > allowed:
                raise TooManyFailures(
                    f"{cursor.failures} of {cursor.attempts} samples failed to decode in rank {self.rank} worker "
                    f"{self._worker()} (last: {sample.key!r} in {sample.shard!r}: {err}), more than "
                    f"the allowed failure fraction {self.max_failure_fraction}; check the shards"
                ) from err
            return None

    def _batches(self, plan: SlotPlan, cursor: _Cursor) -> Iterator[dict[str, Any]]:
        if cursor.emitted >= plan.quota_clips:  # a slot with no quota (or resumed at its end) reads nothing
            return
        batch: list[tuple[RawSample, Clip]] = []
        for position, sample, skip in self._videos(plan, cursor):
            clips = self._clips(sample, cursor)
            for number, clip in enumerate(clips or []):
                if number < skip:
                    continue
                batch.append((sample, clip))
                if len(batch) == self.batch_size or cursor.emitted + len(batch) == plan.quota_clips:
                    cursor.emitted += len(batch)
                    cursor.partial = (position, sample, number + 1) if number + 1 < len(clips) else None
                    yield self.collate(batch)
                    batch = []
                    if cursor.emitted >= plan.quota_clips:
                        return
