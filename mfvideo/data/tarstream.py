"""Raw samples out of tar shards, undecoded: reading tar bytes is cheap, decoding video is not.

A sample is the consecutive tar members sharing a key (`<key>.json` + `<key>.mp4|webm|jpg`); keys contain no dots
(the shard format guarantees it), so the key is the file name up to its first dot. A worker reads its shards as
one endless stream of *positions* 0, 1, 2, …: position p is sample p mod N of the concatenated shards (N samples
per cycle) in cycle p div N. Positions are what the resumable state records.

Shard bytes come through `shardio`, whose retries continue a failed read at the byte where it stopped, so a
position names the same sample however often its shard's reads were retried.
"""

from __future__ import annotations

import functools
import json
import posixpath
import tarfile
from dataclasses import dataclass
from typing import Iterator, Optional

from mfvideo.data.decode import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from mfvideo.data.shardio import ReadPolicy, ShardReadError, open_shard
from mfvideo.data.shardlist import ShardEntry, SlotPlan

MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS


@dataclass
class RawSample:
    key: str
    parts: dict[str, bytes]  # extension → bytes
    shard: str
    index: int  # global sample index: shard.first_index + member number
    cycle: int  # how many times the worker's shards were read before this one

    @functools.cached_property
    def meta(self) -> dict:
        return json.loads(self.parts["json"])

    @property
    def media(self) -> tuple[str, bytes]:
        for extension in MEDIA_EXTENSIONS:
            if extension in self.parts:
                return extension, self.parts[extension]
        raise KeyError(f"no media part among {sorted(self.parts)} (expected one of {MEDIA_EXTENSIONS})")


def iter_shard(
    url: str, policy: Optional[ReadPolicy] = None, size: Optional[int] = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of one shard, in tar order. `policy` (default `ReadPolicy.from_env()`)
    sets read timeouts and retries; `size` is the shard's bytes from its manifest, when known."""
    key, parts = None, {}
    try:
        with (
            open_shard(url, policy or ReadPolicy.from_env(), size) as stream,
            tarfile.open(fileobj=stream, mode="r|*") as tar,
        ):
            for member in tar:
                if not member.isfile():
                    continue
                name = posixpath.basename(member.name)
                member_key, _, extension = name.partition(".")
                if member_key != key and key is not None:
                    yield key, parts
                    parts = {}
                key = member_key
                parts[extension] = tar.extractfile(member).read()
    except ShardReadError:
        raise
    except (tarfile.TarError, OSError) as err:
        raise IOError(f"cannot read shard {url!r}: {err}") from err
    if key is not None:
        yield key, parts


def _shard_samples(shard: ShardEntry, skip: int, cycle: int, policy: ReadPolicy) -> Iterator[RawSample]:
    count = 0
    for member, (key, parts) in enumerate(iter_shard(shard.url, policy, shard.bytes)):
        count += 1
        if member >= skip:
            yield RawSample(key, parts, shard.url, shard.first_index + member, cycle)
    if count != shard.num_samples:
        raise IOError(f"shard {shard.url!r} holds {count} samples but its manifest says {shard.num_samples}")


def samples_from(plan: SlotPlan, position: int, policy: Optional[ReadPolicy] = None) -> Iterator[tuple[int, RawSample]]:
    """(position, sample) for every position from `position` on, cycling the plan's shards without end; shards are
    read with `policy` (default `ReadPolicy.from_env()`)."""
    policy = policy or ReadPolicy.from_env()
    per_cycle = plan.cycle_samples
    while True:
        cycle, offset = divmod(position, per_cycle)
        for shard in plan.shards:
            if offset >= shard.num_samples:
                offset -= shard.num_samples
                continue
            for sample in _shard_samples(shard, offset, cycle, policy):
                yield position, sample
                position += 1
            offset = 0
