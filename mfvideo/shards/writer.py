"""Deterministic, resumable shard writing.

Items are processed in list order (workers may run ahead; results are consumed in order) and each sample goes to
the open shard until `max_count` samples or `max_size` bytes. A shard is written to `<file>.tmp`, fsync'd and
renamed, then a done record (`.partial/<file>.json`: sha256, counts, the index of the next item, rejects so far)
is written the same way. A rerun with the same arguments keeps every shard whose record and sha256 agree and
restarts at the item after the last one; the finished result is identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

from tqdm import tqdm

from mfvideo.shards.items import EncodeOptions, Item, ItemList, Reject, Sample, assign_keys
from mfvideo.shards.produce import produce
from mfvideo.fileio import fsync_dir, write_atomic

FORMAT_VERSION = 1
_PARTIAL_DIR = ".partial"
_TAR_BLOCK = 512

log = logging.getLogger(__name__)


class Source(Protocol):
    """A dataclass whose fields are its arguments (recorded in the manifest) and that lists its items."""

    name: str

    def list_items(self) -> ItemList: ...


@dataclass(frozen=True)
class ShardOptions:
    out: Path                        # the split's directory, e.g. shards/k400/train
    name: str | None = None          # shard file prefix; default: basename of `out`
    max_count: int = 1000            # samples per shard
    max_size: int = 1 << 30          # bytes of members per shard (a larger single sample gets a shard alone)
    short_side: int | None = None    # re-encode to H.264 with this short side; None copies the original bytes
    workers: int = 1
    overwrite: bool = False          # delete an existing, different output instead of refusing
    progress: bool = True

    @property
    def shard_name(self) -> str:
        return self.name or Path(self.out).resolve().name


@dataclass(frozen=True)
class ShardRecord:
    file: str
    num_samples: int
    bytes: int
    sha256: str
    next_item: int                   # first item index not covered by this shard
    rejects: list[dict]              # rejects among the items this shard covers


@dataclass(frozen=True)
class Summary:
    out: Path
    num_samples: int
    num_shards: int
    num_rejects: int
    resumed_shards: int


class OutputMismatch(RuntimeError):
    """The output directory holds shards made with other arguments."""


def _fixed_tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _member_bytes(size: int) -> int:
    return _TAR_BLOCK + -(-size // _TAR_BLOCK) * _TAR_BLOCK


def _sample_bytes(sample: Sample) -> int:
    return sum(_member_bytes(len(data)) for data in sample.files.values())


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, sort_keys=True, indent=1) + "\n").encode()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _OpenShard:
    """A tar being filled under a temporary name."""

    def __init__(self, directory: Path, file: str):
        self.final = directory / file
        self.tmp = directory / (file + ".tmp")
        self.handle = open(self.tmp, "wb")
        self.tar = tarfile.open(fileobj=self.handle, mode="w", format=tarfile.GNU_FORMAT)
        self.num_samples = 0
        self.member_bytes = 0

    def add(self, sample: Sample, member_bytes: int) -> None:
        for ext in sorted(sample.files):
            data = sample.files[ext]
            self.tar.addfile(_fixed_tarinfo(f"{sample.key}.{ext}", len(data)), io.BytesIO(data))
        self.num_samples += 1
        self.member_bytes += member_bytes

    def finalize(self) -> tuple[int, str]:
        self.tar.close()
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        return self.final.stat().st_size, file_sha256(self.final)

    def discard(self) -> None:
        self.tar.close()
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


class _ShardSequence:
    """Assigns samples to shards in arrival order and records each finished shard."""

    def __init__(self, options: ShardOptions, records: list[ShardRecord]):
        self.options = options
        self.directory = Path(options.out)
        self.records = records
        self.open: _OpenShard | None = None
        self.pending_rejects: list[dict] = []

    def _file(self, index: int) -> str:
        return f"{self.options.shard_name}-{index:06d}.tar"

    def add(self, item_index: int, result: Sample | Reject) -> None:
        if isinstance(result, Reject):
            self.pending_rejects.append(result.as_json())
            return
        size = _sample_bytes(result)
        if self.open is not None and self.open.member_bytes + size > self.options.max_size:
            self.close_shard(next_item=item_index)
        if self.open is None:
            self.open = _OpenShard(self.directory, self._file(len(self.records)))
        self.open.add(result, size)
        if self.open.num_samples >= self.options.max_count:
            self.close_shard(next_item=item_index + 1)

    def close_shard(self, next_item: int) -> None:
        size, sha = self.open.finalize()
        record = ShardRecord(file=self.open.final.name, num_samples=self.open.num_samples, bytes=size,
                             sha256=sha, next_item=next_item, rejects=self.pending_rejects)
        write_atomic(self.directory / _PARTIAL_DIR / (record.file + ".json"), _json_bytes(dataclasses.asdict(record)))
        self.records.append(record)
        self.open, self.pending_rejects = None, []

    def abandon(self) -> None:
        if self.open is not None:
            self.open.discard()
            self.open = None


def _manifest(source: Source, options: ShardOptions, classes: list[str], records: list[ShardRecord]) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "name": options.shard_name,
        "source": source.name,
        "created_with": created_with(source, options),
        "classes": classes,
        "num_samples": sum(r.num_samples for r in records),
        "shards": [{"file": r.file, "num_samples": r.num_samples, "bytes": r.bytes, "sha256": r.sha256}
                   for r in records],
    }


def created_with(source: Source, options: ShardOptions) -> dict:
    """Every argument that shapes the output (not --out, --workers or --overwrite, which do not)."""
    args = {"source": source.name, "source_args": dataclasses.asdict(source), "name": options.shard_name,
            "max_count": options.max_count, "max_size": options.max_size, "short_side": options.short_side}
    return json.loads(json.dumps(args, default=str))  # paths as strings, as they read back from JSON


def _load_records(directory: Path, fingerprint: dict) -> list[ShardRecord]:
    """Finished shards of an interrupted run with the same arguments, verified by sha256, in order."""
    partial = directory / _PARTIAL_DIR
    args_file = partial / "created_with.json"
    if not args_file.exists():
        return []
    if json.loads(args_file.read_text()) != fingerprint:
        raise OutputMismatch(f"{directory} holds an unfinished run with other arguments "
                             f"(see {args_file}); pass --overwrite or choose another --out")
    records = []
    while True:
        record_file = partial / f"{fingerprint['name']}-{len(records):06d}.tar.json"
        try:
            record = ShardRecord(**json.loads(record_file.read_text()))
        except (OSError, ValueError, TypeError):
            break
        shard = directory / record.file
        if not shard.exists() or shard.stat().st_size != record.bytes or file_sha256(shard) != record.sha256:
            break
        records.append(record)
    return records


def _clear_output(directory: Path, name: str) -> None:
    for path in directory.glob(f"{name}-*.tar*"):
        path.unlink()
    for leftover in ("manifest.json", "rejects.jsonl"):
        (directory / leftover).unlink(missing_ok=True)
    shutil.rmtree(directory / _PARTIAL_DIR, ignore_errors=True)


def _remove_unrecorded(directory: Path, name: str, records: list[ShardRecord]) -> None:
    """Temporary files and shards past the verified ones: they will be rewritten."""
    kept = {r.file for r in records}
    for path in directory.glob(f"{name}-*.tar*"):
        if path.name not in kept:
            path.unlink()
    partial = directory / _PARTIAL_DIR
    for path in partial.glob(f"{name}-*.tar.json*"):
        if path.name.endswith(".tmp") or path.name.removesuffix(".json") not in kept:
            path.unlink()


def _existing_manifest(directory: Path, fingerprint: dict) -> dict | None:
    path = directory / "manifest.json"
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("created_with") != fingerprint:
        raise OutputMismatch(f"{path} was made with other arguments; pass --overwrite or choose another --out")
    for shard in manifest["shards"]:
        if file_sha256(directory / shard["file"]) != shard["sha256"]:
            raise OutputMismatch(f"{directory / shard['file']} does not match its sha256 in {path}; "
                                 f"pass --overwrite to rebuild")
    return manifest


_WORKER_CONTEXT: tuple[str, EncodeOptions] | None = None


def _init_worker(source_name: str, encode: EncodeOptions) -> None:
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = (source_name, encode)


def _produce_task(task: tuple[Item, str]) -> Sample | Reject:
    item, key = task
    return produce(item, key, *_WORKER_CONTEXT)


def _results(tasks: list[tuple[Item, str]], source_name: str, encode: EncodeOptions, workers: int) -> Iterator:
    """Results in task order, whatever the number of workers."""
    if workers <= 1:
        _init_worker(source_name, encode)
        yield from map(_produce_task, tasks)
        return
    context = multiprocessing.get_context("spawn")  # no decoder state or threads inherited through fork
    with context.Pool(workers, initializer=_init_worker, initargs=(source_name, encode)) as pool:
        yield from pool.imap(_produce_task, tasks, chunksize=1)


def _progress(results: Iterable, total: int, initial: int, enabled: bool) -> Iterable:
    return tqdm(results, total=total, initial=initial, unit="item", disable=not enabled, smoothing=0.1,
                dynamic_ncols=True)


def make_shards(source: Source, options: ShardOptions) -> Summary:
    """Write `source` as WebDataset shards + manifest.json + rejects.jsonl under `options.out` (see shards/README.md).

    With `workers > 1` the workers are spawned processes: call this from under `if __name__ == "__main__":`.
    Raises SourceError for bad annotation files and OutputMismatch for an output made with other arguments."""
    directory = Path(options.out)
    directory.mkdir(parents=True, exist_ok=True)
    fingerprint = created_with(source, options)
    name = options.shard_name
    if options.overwrite:
        _clear_output(directory, name)
    done = _existing_manifest(directory, fingerprint)
    if done is not None:
        rejects = (directory / "rejects.jsonl").read_text().count("\n")
        log.info("%s is already complete: %d samples in %d shards", directory, done["num_samples"], len(done["shards"]))
        return Summary(directory, done["num_samples"], len(done["shards"]), rejects, len(done["shards"]))

    listing = source.list_items()
    keys = assign_keys(listing.items)
    records = _load_records(directory, fingerprint)
    _remove_unrecorded(directory, name, records)
    (directory / _PARTIAL_DIR).mkdir(exist_ok=True)
    write_atomic(directory / _PARTIAL_DIR / "created_with.json", _json_bytes(fingerprint))
    start = records[-1].next_item if records else 0
    resumed = len(records)
    if records:
        log.info("resuming %s: %d finished shards kept, restarting at item %d of %d",
                 directory, len(records), start, len(listing.items))

    shards = _ShardSequence(options, records)
    tasks = list(zip(listing.items, keys))[start:]
    encode = EncodeOptions(short_side=options.short_side)
    try:
        results = _results(tasks, source.name, encode, options.workers)
        for offset, result in enumerate(_progress(results, len(listing.items), start, options.progress)):
            shards.add(start + offset, result)
        if shards.open is not None:
            shards.close_shard(next_item=len(listing.items))
    except BaseException:
        shards.abandon()
        raise

    rejects = [reject for record in shards.records for reject in record.rejects] + shards.pending_rejects
    write_atomic(directory / "rejects.jsonl",
                  b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in rejects))
    manifest = _manifest(source, options, listing.classes, shards.records)
    write_atomic(directory / "manifest.json", _json_bytes(manifest))
    shutil.rmtree(directory / _PARTIAL_DIR)
    return Summary(directory, manifest["num_samples"], len(shards.records), len(rejects), resumed)
