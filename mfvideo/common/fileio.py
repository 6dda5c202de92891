"""Crash-safe file writes shared by the shard writer and the checkpointer, and an exclusive lock for one writer."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Iterator


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (the directory entry, not only the file, must reach the disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old content or the new, never a truncated file, even after kill -9 or power loss."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class PathEscape(ValueError):
    """A name taken from input that would put a file outside its folder; the message names where it came from."""


def plain_name(name: str, what: str) -> str:
    """`name` if it names a file of its own inside a folder: not empty, no path separator, not `.` or `..`;
    PathEscape naming `what` (the option, field or line it came from) otherwise."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise PathEscape(f"{what} is {name!r}: it must be a plain file name, without a path, '.' or '..'")
    return name


def inside(base: Path, relative: str, what: str) -> Path:
    """`base / relative`, which must stay inside `base` once `..` and symbolic links are resolved; PathEscape naming
    `what` otherwise."""
    root = Path(base).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise PathEscape(f"{what} is {relative!r}: it leads outside {base} (to {target})")
    return target


class LockHeld(RuntimeError):
    """Another live process holds the lock; the message names its host, pid and start time."""


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"host {holder['host']}, pid {holder['pid']}, since {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


@contextlib.contextmanager
def hold_lock(path: Path, what: str) -> Iterator[None]:
    """Exclusive lock on `path` for as long as the block runs, for one writer of `what` at a time.

    The kernel lock (flock) goes away with the process, so a job killed even by SIGKILL leaves nothing that blocks
    the next one; the file holds the holder's host, pid and start time only to name it. A second process fails at
    once with LockHeld. On network file systems flock needs NFSv4 (or Lustre mounted with `-o flock`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(
                f"{what} is being written by another job ({_holder(path)}; lock file {path}): wait for "
                f"it to end or stop it"
            ) from None
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)  # the holder we waited on removed the file as it finished: lock the new one
    try:
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode() + b"\n")
        yield
    finally:
        path.unlink(missing_ok=True)  # before the unlock: whoever opened the old file and locks it next sees it gone
        os.close(fd)
