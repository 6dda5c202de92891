"""Deterministic, resumable shard writing, on one machine or split over many.

Items are taken in list order in blocks of `max_count`: the samples of a block fill one shard, split further
before the member bytes would pass `max_size`, and no shard spans two blocks. Shard boundaries therefore depend on
the items alone, never on how many machines write them: `part` i of N writes whole blocks of its contiguous share
of the list into `.parts/<i>-of-<N>/` under the output, and `merge_parts` renames the parts' shards into one
sequence and joins their manifests and rejects, byte-identical to a one-machine run.

Workers may run ahead; results are consumed in order. A shard is written to `<file>.tmp`, fsync'd and renamed,
then a done record (`.partial/<file>.json`: sha256, counts, the index of the next item, rejects so far) is
written the same way. A rerun with the same arguments keeps every shard whose record and sha256 agree and
restarts at the item after the last one; the finished result is identical to an uninterrupted run. A job holds
the lock file `.lock` of the directory it writes for as long as it runs, so a second job into it stops at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

from tqdm import tqdm

from mfvideo.common.fileio import PathEscape, fsync_dir, hold_lock, inside, plain_name, write_atomic
from mfvideo.shards.items import EncodeOptions, Item, ItemList, Reject, Sample, assign_keys
from mfvideo.shards.produce import produce

FORMAT_VERSION = 1
_PARTIAL_DIR = ".partial"
_PARTS_DIR = ".parts"
_MERGED_PARTS_DIR = ".parts.merged"
_LOCK_FILE = ".lock"
_TAR_BLOCK = 512

log = logging.getLogger(__name__)


class Source(Protocol):
    """A dataclass whose fields are its arguments (recorded in the manifest) and that lists its items."""

    name: str

    def list_items(self) -> ItemList: ...


@dataclass(frozen=True)
class Part:
    """Part `index` (0-based) of `count`: a contiguous share of the item blocks, written by one machine."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"part {self.index}/{self.count}: need 0 <= index < count")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def folder(self) -> str:
        return f"{self.index}-of-{self.count}"

    def items(self, num_items: int, max_count: int) -> range:
        """Item indices of this part: whole blocks of `max_count` items, the blocks dealt evenly in order."""
        blocks = -(-num_items // max_count)
        first, end = self.index * blocks // self.count, (self.index + 1) * blocks // self.count
        return range(first * max_count, min(end * max_count, num_items))


@dataclass(frozen=True)
class ShardOptions:
    out: Path  # the split's directory, e.g. shards/k400/train
    name: str | None = None  # shard file prefix; default: basename of `out`
    max_count: int = 1000  # items per block; a block's samples fill one shard
    max_size: int = 1 << 30  # bytes of members per shard (a larger single sample gets a shard alone)
    short_side: int | None = None  # re-encode to H.264 with this short side; None copies the original bytes
    workers: int = 1
    overwrite: bool = False  # delete an existing, different output instead of refusing
    progress: bool = True
    part: Part | None = None  # write only this part, under out/.parts/ (then merge_parts)

    def __post_init__(self) -> None:
        if self.name is not None:
            plain_name(self.name, "--name")  # shards are written as <out>/<name>-NNNNNN.tar
        for name in ("max_count", "max_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"ShardOptions.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def shard_name(self) -> str:
        return self.name or Path(self.out).resolve().name


@dataclass(frozen=True)
class ShardRecord:
    file: str
    num_samples: int
    bytes: int
    sha256: str
    next_item: int  # first item index not covered by this shard
    rejects: list[dict]  # rejects among the items this shard covers


@dataclass(frozen=True)
class Summary:
    out: Path
    num_samples: int
    num_shards: int
    num_rejects: int
    resumed_shards: int


class OutputMismatch(RuntimeError):
    """The output directory holds shards made with other arguments."""


class MergeError(RuntimeError):
    """The parts under an output cannot be merged (missing, unfinished or inconsistent); the message says which."""


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

    def __init__(self, options: ShardOptions, directory: Path, records: list[ShardRecord]):
        self.options = options
        self.directory = directory
        self.records = records
        self.open: _OpenShard | None = None
        self.pending_rejects: list[dict] = []

    def _file(self, index: int) -> str:
        return f"{self.options.shard_name}-{index:06d}.tar"

    def add(self, item_index: int, result: Sample | Reject) -> None:
        if isinstance(result, Reject):
            self.pending_rejects.append(result.as_json())
        else:
            size = _sample_bytes(result)
            if self.open is not None and self.open.member_bytes + size > self.options.max_size:
                self.close_shard(next_item=item_index)
            if self.open is None:
                self.open = _OpenShard(self.directory, self._file(len(self.records)))
            self.open.add(result, size)
        if self.open is not None and (item_index + 1) % self.options.max_count == 0:  # the block ends
            self.close_shard(next_item=item_index + 1)

    def close_shard(self, next_item: int) -> None:
        size, sha = self.open.finalize()
        record = ShardRecord(
            file=self.open.final.name,
            num_samples=self.open.num_samples,
            bytes=size,
            sha256=sha,
            next_item=next_item,
            rejects=self.pending_rejects,
        )
        write_atomic(self.directory / _PARTIAL_DIR / (record.file + ".json"), _json_bytes(dataclasses.asdict(record)))
        self.records.append(record)
        self.open, self.pending_rejects = None, []

    def abandon(self) -> None:
        if self.open is not None:
            self.open.discard()
            self.open = None


def _manifest(fingerprint: dict, classes: list[str], shards: list[dict]) -> dict:
    """The manifest of a split (or of one part) from its arguments, classes and shard entries."""
    return {
        "format_version": FORMAT_VERSION,
        "name": fingerprint["name"],
        "source": fingerprint["source"],
        "created_with": fingerprint,
        "classes": classes,
        "num_samples": sum(shard["num_samples"] for shard in shards),
        "shards": shards,
    }


def _shard_entry(record: ShardRecord) -> dict:
    return {"file": record.file, "num_samples": record.num_samples, "bytes": record.bytes, "sha256": record.sha256}


def created_with(source: Source, options: ShardOptions) -> dict:
    """Every argument that shapes the output (not --out, --workers or --overwrite, which do not)."""
    args = {
        "source": source.name,
        "source_args": dataclasses.asdict(source),
        "name": options.shard_name,
        "max_count": options.max_count,
        "max_size": options.max_size,
        "short_side": options.short_side,
    }
    return json.loads(json.dumps(args, default=str))  # paths as strings, as they read back from JSON


def _load_records(directory: Path, fingerprint: dict) -> list[ShardRecord]:
    """Finished shards of an interrupted run with the same arguments, verified by sha256, in order."""
    partial = directory / _PARTIAL_DIR
    args_file = partial / "created_with.json"
    if not args_file.exists():
        return []
    if json.loads(args_file.read_text()) != fingerprint:
        raise OutputMismatch(
            f"{directory} holds an unfinished run with other arguments "
            f"(see {args_file}); pass --overwrite or choose another --out"
        )
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
        shard_path = directory / shard["file"]
        if not shard_path.exists() or file_sha256(shard_path) != shard["sha256"]:
            raise OutputMismatch(
                f"{shard_path} is missing or does not match its sha256 in {path}; pass --overwrite to rebuild"
            )
    return manifest


def _finished(directory: Path, manifest: dict) -> Summary:
    rejects = (directory / "rejects.jsonl").read_text().count("\n")
    log.info(
        "%s is already complete: %d samples in %d shards", directory, manifest["num_samples"], len(manifest["shards"])
    )
    return Summary(directory, manifest["num_samples"], len(manifest["shards"]), rejects, len(manifest["shards"]))


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
    return tqdm(
        results, total=total, initial=initial, unit="item", disable=not enabled, smoothing=0.1, dynamic_ncols=True
    )


def make_shards(source: Source, options: ShardOptions) -> Summary:
    """Write `source` as WebDataset shards + manifest.json + rejects.jsonl under `options.out` (see shards/README.md),
    or with `options.part` only that part, under `out/.parts/` (then `merge_parts`).

    With `workers > 1` the workers are spawned processes: call this from under `if __name__ == "__main__":`.
    Raises SourceError for bad annotation files, OutputMismatch for an output made with other arguments and
    LockHeld while another job writes the same directory."""
    out = Path(options.out)
    fingerprint = created_with(source, options)
    if options.part is None:
        out.mkdir(parents=True, exist_ok=True)
        with hold_lock(out / _LOCK_FILE, str(out)):
            if options.overwrite:
                _clear_output(out, options.shard_name)
            done = _existing_manifest(out, fingerprint)
            return _finished(out, done) if done is not None else _write(source, options, out, fingerprint)
    merged = None if options.overwrite else _existing_manifest(out, fingerprint)
    if merged is not None:  # the parts were merged already
        return _finished(out, merged)
    directory = out / _PARTS_DIR / options.part.folder
    directory.mkdir(parents=True, exist_ok=True)
    with hold_lock(directory / _LOCK_FILE, f"part {options.part} of {out}"):
        if options.overwrite:
            _clear_output(directory, options.shard_name)
        done = _existing_manifest(directory, fingerprint)
        return _finished(directory, done) if done is not None else _write(source, options, directory, fingerprint)


def _write(source: Source, options: ShardOptions, directory: Path, fingerprint: dict) -> Summary:
    """Shards, rejects.jsonl and manifest.json of the whole list or of `options.part`, into `directory`."""
    name = options.shard_name
    listing = source.list_items()
    keys = assign_keys(listing.items)
    share = options.part.items(len(listing.items), options.max_count) if options.part else range(len(listing.items))
    records = _load_records(directory, fingerprint)
    _remove_unrecorded(directory, name, records)
    (directory / _PARTIAL_DIR).mkdir(exist_ok=True)
    write_atomic(directory / _PARTIAL_DIR / "created_with.json", _json_bytes(fingerprint))
    start = records[-1].next_item if records else share.start
    resumed = len(records)
    if records:
        log.info(
            "resuming %s: %d finished shards kept, restarting at item %d of %d..%d",
            directory,
            len(records),
            start,
            share.start,
            share.stop - 1,
        )

    shards = _ShardSequence(options, directory, records)
    tasks = list(zip(listing.items, keys))[start : share.stop]
    encode = EncodeOptions(short_side=options.short_side)
    try:
        results = _results(tasks, source.name, encode, options.workers)
        for offset, result in enumerate(_progress(results, len(share), start - share.start, options.progress)):
            shards.add(start + offset, result)
        if shards.open is not None:
            shards.close_shard(next_item=share.stop)
    except BaseException:
        shards.abandon()
        raise

    # The listing's rejects go first, with the first part, so that merged parts give a one-machine run's file.
    first_part = options.part is None or options.part.index == 0
    listed = [reject.as_json() for reject in listing.rejects] if first_part else []
    rejects = listed + [reject for record in shards.records for reject in record.rejects] + shards.pending_rejects
    write_atomic(directory / "rejects.jsonl", b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in rejects))
    manifest = _manifest(fingerprint, listing.classes, [_shard_entry(r) for r in shards.records])
    if options.part is not None:
        manifest["part"] = {
            "index": options.part.index,
            "count": options.part.count,
            "first_item": share.start,
            "end_item": share.stop,
            "num_items": len(listing.items),
        }
    write_atomic(directory / "manifest.json", _json_bytes(manifest))
    shutil.rmtree(directory / _PARTIAL_DIR)
    return Summary(directory, manifest["num_samples"], len(shards.records), len(rejects), resumed)


def _finished_parts(out: Path) -> list[tuple[Part, Path, dict]]:
    """Every part under `out/.parts`, in order, each finished, all of one split and covering its items once."""
    root = out / _PARTS_DIR
    folders = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        match = re.fullmatch(r"(\d+)-of-(\d+)", folder.name)
        if not match:
            raise MergeError(f"{folder} is not a part folder (<index>-of-<count>); remove it")
        folders[Part(int(match.group(1)), int(match.group(2)))] = folder
    if not folders:
        raise MergeError(f"{out} has no parts to merge: write them first with --part i/N")
    counts = sorted({part.count for part in folders})
    if len(counts) > 1:
        raise MergeError(f"{root} holds parts of splits into {counts} parts; remove the folders of all but one")
    parts = [Part(index, counts[0]) for index in range(counts[0])]
    missing = [str(part) for part in parts if not (folders.get(part, root / part.folder) / "manifest.json").exists()]
    if missing:
        raise MergeError(f"cannot merge {out}: part(s) {', '.join(missing)} not finished; run them (again) first")
    found = [(part, folders[part], json.loads((folders[part] / "manifest.json").read_text())) for part in parts]
    expected_first = 0
    for part, folder, manifest in found:
        if manifest["created_with"] != found[0][2]["created_with"]:
            raise MergeError(
                f"part {part} ({folder}) was made with other arguments than part {found[0][0]}; "
                f"run it again with the same arguments and --overwrite"
            )
        if manifest["part"]["first_item"] != expected_first:
            raise MergeError(
                f"part {part} ({folder}) starts at item {manifest['part']['first_item']}, expected "
                f"{expected_first}: the parts list different items; run them again"
            )
        expected_first = manifest["part"]["end_item"]
    if expected_first != found[-1][2]["part"]["num_items"]:
        raise MergeError(f"the parts of {out} end at item {expected_first} of {found[-1][2]['part']['num_items']}")
    return found


def _check_part_names(parts: list, name: str) -> None:
    """MergeError naming the manifest and field of the first name in the parts' manifests that would put a file
    outside its folder: the shard prefix (`created_with.name`) and each shard's `file`."""
    try:
        plain_name(name, f"{parts[0][1] / 'manifest.json'} field 'created_with.name'")
        for _, folder, manifest in parts:
            for number, entry in enumerate(manifest["shards"]):
                field = f"{folder / 'manifest.json'} field 'shards[{number}].file'"
                inside(folder, plain_name(entry["file"], field), field)
    except PathEscape as err:
        raise MergeError(f"{err}; nothing was moved") from None


def merge_parts(out: Path, overwrite: bool = False) -> Summary:
    """Join the finished parts under `out/.parts` into the split `out`: shards renamed into one sequence (their
    bytes and sha256 unchanged; sizes checked against the parts' manifests), rejects and manifest joined, the parts
    removed. The result is byte-identical to a one-machine run; merging again after an interruption completes it.
    Raises MergeError, OutputMismatch (`out` holds another split; `overwrite` replaces it) or LockHeld."""
    out = Path(out)
    if not out.is_dir():
        raise MergeError(f"{out} does not exist: write the parts first with --part i/N --out {out}")
    with hold_lock(out / _LOCK_FILE, str(out)), contextlib.ExitStack() as part_locks:
        shutil.rmtree(out / _MERGED_PARTS_DIR, ignore_errors=True)
        if not (out / _PARTS_DIR).exists() and (out / "manifest.json").exists():
            return _finished(out, json.loads((out / "manifest.json").read_text()))
        parts = _finished_parts(out)
        for part, folder, _ in parts:
            part_locks.enter_context(hold_lock(folder / _LOCK_FILE, f"part {part} of {out}"))
        fingerprint = parts[0][2]["created_with"]
        name = fingerprint["name"]
        _check_part_names(parts, name)  # names from the parts' manifests: nothing may move outside `out`
        if overwrite:
            _clear_output(out, name)
        existing = out / "manifest.json"
        if existing.exists() and json.loads(existing.read_text()).get("created_with") != fingerprint:
            raise OutputMismatch(
                f"{existing} was made with other arguments than the parts; pass --overwrite to replace it"
            )
        if (out / _PARTIAL_DIR).exists():
            raise MergeError(
                f"{out} holds an unfinished one-machine run ({out / _PARTIAL_DIR}); finish it, or "
                f"merge with --overwrite to replace it"
            )
        moves, shards = [], []
        for part, folder, manifest in parts:
            for entry in manifest["shards"]:
                source, target = folder / entry["file"], out / f"{name}-{len(shards):06d}.tar"
                where = source if source.exists() else target  # already moved by an interrupted merge
                if not where.exists() or where.stat().st_size != entry["bytes"]:
                    raise MergeError(
                        f"shard {entry['file']} of part {part} is missing or not {entry['bytes']} bytes "
                        f"(looked at {source} and {target}); run part {part} again with --overwrite"
                    )
                moves.append((source, target))
                shards.append({**entry, "file": target.name})
        for source, target in moves:
            if source.exists():
                os.replace(source, target)
        fsync_dir(out)
        write_atomic(out / "rejects.jsonl", b"".join((folder / "rejects.jsonl").read_bytes() for _, folder, _ in parts))
        manifest = _manifest(fingerprint, parts[0][2]["classes"], shards)
        write_atomic(existing, _json_bytes(manifest))
        os.replace(out / _PARTS_DIR, out / _MERGED_PARTS_DIR)  # at once: a rerun never sees half of the parts
        shutil.rmtree(out / _MERGED_PARTS_DIR)
        num_rejects = (out / "rejects.jsonl").read_text().count("\n")
        return Summary(out, manifest["num_samples"], len(shards), num_rejects, 0)
