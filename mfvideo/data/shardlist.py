"""Shard lists and the per-epoch split of shards over ranks and loader workers.

A pattern is anything WebDataset accepts (local paths or URLs, with brace expansion, several patterns joined by
`::`), or a local split folder made by `make_shards`, which stands for every shard its manifest lists. Per-shard
sample counts come from the shard directory's `manifest.json` (written by `make_shards`): they are what makes every
rank's epoch the same length without reading the data first. The manifest is looked up beside the shards (same
directory or URL prefix) unless given explicitly (`data.train_manifest` / `data.val_manifest`, needed for `pipe:`
patterns); a missing manifest is an error, never a guess. Manifests are read through `shardio` (timeouts,
retries), and a local shard whose size is not the manifest's `bytes` is an error at start.

Every (rank, worker) pair is a *slot*. Each epoch the shards are dealt to slots: training shuffles their order
from (seed, epoch), testing keeps it; each shard then goes to the slot holding the fewest samples so far, so
slots differ by at most one shard's size and, with at least as many shards as slots, every slot gets one.
Fewer shards than slots is an error at start (a slot without data would hang a collective or end early).
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from braceexpand import braceexpand

from mfvideo.data.shardio import ReadPolicy, read_bytes


@dataclass(frozen=True)
class ShardEntry:
    url: str
    num_samples: int
    first_index: int  # global index of the shard's first sample in pattern order (the test `video_index`)
    bytes: Optional[int] = None  # file size from the manifest (None: the manifest does not say)


def expand_pattern(pattern: str) -> list[str]:
    urls = [url for part in pattern.split("::") for url in braceexpand(part.strip())]
    if not urls:
        raise ValueError(f"shard pattern {pattern!r} names no shard")
    return urls


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def manifest_location(urls: Sequence[str], explicit: Optional[str]) -> str:
    if explicit:
        return explicit
    if urls[0].startswith("pipe:"):
        raise ValueError(f"cannot locate the manifest of pipe: shards ({urls[0]!r}); pass the manifest's path or URL")
    directories = {posixpath.dirname(url) for url in urls}
    if len(directories) != 1:
        raise ValueError(f"shards come from several directories {sorted(directories)}; pass the manifest's path or URL")
    return posixpath.join(directories.pop(), "manifest.json")


def read_manifest(location: str, policy: Optional[ReadPolicy] = None) -> dict:
    try:
        manifest = json.loads(read_bytes(location, policy or ReadPolicy.from_env()))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"cannot read shard manifest {location!r}: {err}. Shards must come with the "
            f"manifest.json written by tools/make_shards.py (or set data.*_manifest)"
        ) from err
    if "shards" not in manifest:
        raise ValueError(f"{location!r} is not a shard manifest: it has no 'shards' list")
    return manifest


def _split(pattern: str, manifest: Optional[str], policy: Optional[ReadPolicy]) -> tuple[list[str], str, dict]:
    """(shard URLs, manifest location, manifest content) of a split folder or a shard pattern."""
    if _is_local(pattern) and "{" not in pattern and "::" not in pattern and not os.path.exists(pattern):
        raise FileNotFoundError(
            f"{pattern!r} is neither a shard folder nor a shard file; make the shards with tools/make_shards.py first"
        )
    if _is_local(pattern) and os.path.isdir(pattern):
        location = manifest or os.path.join(pattern, "manifest.json")
        content = read_manifest(location, policy)
        return [os.path.join(pattern, entry["file"]) for entry in content["shards"]], location, content
    urls = expand_pattern(pattern)
    location = manifest_location(urls, manifest)
    return urls, location, read_manifest(location, policy)


def read_split_manifest(pattern: str, manifest: Optional[str] = None, policy: Optional[ReadPolicy] = None) -> dict:
    """The manifest of the split a folder or pattern names (its `classes`, `num_samples`, ...)."""
    return _split(pattern, manifest, policy)[2]


def list_shards(pattern: str, manifest: Optional[str] = None, policy: Optional[ReadPolicy] = None) -> list[ShardEntry]:
    """The pattern's shards with their sample counts and sizes (shards without samples are left out); `policy`
    (default `ReadPolicy.from_env()`) reads the manifest. Local shards must have the size their manifest lists."""
    urls, location, content = _split(pattern, manifest, policy)
    listed = {entry["file"]: entry for entry in content["shards"]}
    shards, first = [], 0
    for url in urls:
        name = posixpath.basename(url.split("?")[0])
        if name not in listed:
            raise ValueError(f"shard {url!r} is not listed in manifest {location!r}")
        count, size = int(listed[name]["num_samples"]), listed[name].get("bytes")
        if _is_local(url):
            if not os.path.exists(url):
                raise FileNotFoundError(f"shard {url!r} (listed in {location!r}) does not exist")
            if size is not None and os.path.getsize(url) != size:
                raise ValueError(
                    f"shard {url!r} has {os.path.getsize(url)} bytes but manifest {location!r} lists "
                    f"{size}: it is truncated or from another run; rebuild it with tools/make_shards.py"
                )
        if count > 0:
            shards.append(ShardEntry(url, count, first, size))
        first += count
    return shards


@dataclass(frozen=True)
class SlotPlan:
    """What one (rank, worker) slot reads in one epoch: its shards, cycled as often as needed, and how many clips
    it emits in total."""

    shards: tuple[ShardEntry, ...]
    quota_clips: int

    @property
    def cycle_samples(self) -> int:
        return sum(shard.num_samples for shard in self.shards)


def deal_shards(
    shards: Sequence[ShardEntry], num_slots: int, order_seed: Optional[Sequence[int]]
) -> list[list[ShardEntry]]:
    """Deal shards to slots, fewest-samples-first; `order_seed` shuffles the order (None keeps it)."""
    order = list(shards)
    if order_seed is not None:
        permutation = np.random.default_rng(list(order_seed)).permutation(len(order))
        order = [order[i] for i in permutation]
    slots: list[list[ShardEntry]] = [[] for _ in range(num_slots)]
    totals = [0] * num_slots
    for shard in order:
        target = min(range(num_slots), key=lambda s: (totals[s], s))
        slots[target].append(shard)
        totals[target] += shard.num_samples
    return slots


def check_enough_shards(num_shards: int, world_size: int, workers_per_rank: int, pattern: str) -> None:
    slots = world_size * workers_per_rank
    if num_shards < slots:
        raise ValueError(
            f"{pattern!r} has {num_shards} non-empty shards, fewer than ranks × loader workers = "
            f"{world_size} × {workers_per_rank} = {slots}: every worker of every rank needs a shard. "
            f"Write more, smaller shards or use fewer loader workers"
        )


def train_batches_per_rank(total_videos: int, clips_per_video: int, world_size: int, batch_size: int) -> int:
    """An epoch shows every video once (each giving `clips_per_video` clips): floor(videos·k / world / batch)."""
    return total_videos * clips_per_video // (world_size * batch_size)


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` split into `parts` counts differing by at most one, larger counts first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def train_plans(
    shards: Sequence[ShardEntry],
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    workers_per_rank: int,
    batch_size: int,
    clips_per_video: int,
) -> list[SlotPlan]:
    """This rank's worker plans: every rank emits the same number of batches, split over its workers. The first
    workers take the remainder (the loader visits workers round-robin from worker 0), so the rank's slots are
    ordered largest first: the extra batches go where the data is."""
    slots = deal_shards(shards, world_size * workers_per_rank, order_seed=(seed, epoch))
    total = sum(shard.num_samples for shard in shards)
    batches = split_evenly(train_batches_per_rank(total, clips_per_video, world_size, batch_size), workers_per_rank)
    mine = sorted(
        slots[rank * workers_per_rank : (rank + 1) * workers_per_rank],
        key=lambda slot: -sum(shard.num_samples for shard in slot),
    )
    return [SlotPlan(tuple(slot), count * batch_size) for slot, count in zip(mine, batches)]


def eval_plans(
    shards: Sequence[ShardEntry], rank: int, world_size: int, workers_per_rank: int, views_per_video: int
) -> list[SlotPlan]:
    """Every video exactly once over all slots; worker w of every rank emits as many videos as the largest
    worker-w slot, the others repeating their first videos, so batch counts match across ranks (duplicates repeat
    whole videos with identical views: de-duplicate by (video_index, view))."""
    slots = deal_shards(shards, world_size * workers_per_rank, order_seed=None)
    plans = []
    for worker in range(workers_per_rank):
        videos = max(sum(s.num_samples for s in slots[r * workers_per_rank + worker]) for r in range(world_size))
        plans.append(SlotPlan(tuple(slots[rank * workers_per_rank + worker]), videos * views_per_video))
    return plans
