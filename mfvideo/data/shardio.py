"""Reading shard and manifest bytes: local files, HTTP(S), `pipe:` commands and other fsspec URLs (`s3://`,
`gs://`, … where the user has installed the client), with read timeouts and bounded retries.

`open_shard(url, policy, size)` gives a buffered binary stream. A read that fails (an error, an early end, or no
byte for `policy.timeout` seconds) closes the source and opens it again at the byte where it stopped — an HTTP
Range request (the bytes already read are skipped when the server ignores it), a seek, or for `pipe:` the command
run again with those bytes skipped — after `policy.backoff` seconds, doubling up to `MAX_BACKOFF`. So whoever reads
the stream (the tar parser) sees one unbroken byte sequence, and a sample position means the same sample whatever
was retried. `policy.retries` failed attempts in a row without a byte of progress raise ShardReadError, naming the
shard, the byte, the attempts and the last error: a source that stops answering fails after at most
`(retries + 1) × timeout + Σ backoff` seconds.

A source that ends before its `size` (the manifest's `bytes`, when given) counts as a failed read, so truncated
responses are retried too. The timeout is the socket timeout for HTTP and a wait on the pipe for `pipe:` (the
command is killed on retry); local reads and fsspec back ends keep their own (a stalled NFS mount blocks in the
kernel: mount it `soft` with `timeo`, or serve the shards over HTTP).

Training and testing take the policy from the recipe (`data.read_timeout`, `data.read_retries`, `data.read_backoff`,
see `mfvideo.common.read_policy`); callers without one get `ReadPolicy.from_env()`: MFVIDEO_READ_TIMEOUT
(seconds, default 60), MFVIDEO_READ_RETRIES (default 6) and MFVIDEO_READ_BACKOFF (seconds before the first retry,
default 1).
"""

from __future__ import annotations

import http.client
import io
import logging
import os
import select
import signal
import subprocess
import time
import urllib.error
import urllib.request
from typing import Optional, Protocol
from urllib.parse import urlparse
from urllib.request import url2pathname

from mfvideo.common.read_policy import ReadPolicy

logger = logging.getLogger(__name__)

_BUFFER = 1 << 20
# HTTP statuses worth another attempt (timeouts, rate limits, server trouble); any other 4xx is final.
_RETRIED_STATUS = {408, 425, 429, 500, 502, 503, 504}


class ShardReadError(IOError):
    """A shard (or manifest) could not be read within the retries; the message names it and the byte."""


class _FinalError(IOError):
    """A failure that another attempt cannot fix (404, a local file that is gone)."""


class _Source(Protocol):
    def readinto(self, buffer: memoryview) -> int: ...

    def close(self) -> None: ...


class _LocalSource:
    def __init__(self, path: str, offset: int):
        try:
            self.handle = open(path, "rb", buffering=0)
        except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
            raise _FinalError(str(err)) from err
        self.handle.seek(offset)

    def readinto(self, buffer: memoryview) -> int:
        return self.handle.readinto(buffer)

    def close(self) -> None:
        self.handle.close()


class _HttpSource:
    def __init__(self, url: str, offset: int, timeout: float):
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        self.response: Optional[http.client.HTTPResponse] = None
        try:
            self.response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 416 and offset:  # nothing left after `offset`: the end
                return
            if err.code in _RETRIED_STATUS:
                raise
            raise _FinalError(f"HTTP {err.code} {err.reason}") from err
        if offset and self.response.status != 206:  # the server sent the whole file: skip what was read
            _skip(self, offset)

    def readinto(self, buffer: memoryview) -> int:
        if self.response is None:
            return 0
        data = self.response.read1(len(buffer))  # what has arrived: bytes read before a stall must count
        if not data and self.response.length:  # read1 reports a connection closed early as an end
            raise http.client.IncompleteRead(b"", self.response.length)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.response is not None:
            self.response.close()


class _PipeSource:
    """`pipe:COMMAND`: the command's stdout; a wait longer than `timeout` for its next bytes is a failure, and a
    non-zero exit status at the end too (curl -f, aws s3 cp … - report failed transfers so)."""

    def __init__(self, command: str, offset: int, timeout: float):
        self.command, self.timeout = command, timeout
        self.process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, start_new_session=True)
        self.fd = self.process.stdout.fileno()
        if offset:
            _skip(self, offset)

    def readinto(self, buffer: memoryview) -> int:
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        if not ready:
            raise TimeoutError(f"no output from {self.command!r} for {self.timeout} s")
        count = os.readv(self.fd, [buffer])
        if count == 0:
            try:
                status = self.process.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"{self.command!r} closed its output but did not exit") from None
            if status != 0:
                raise OSError(f"{self.command!r} exited with status {status}")
        return count

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # the shell and what it started (curl, aws, …)
            except ProcessLookupError:
                pass  # it exited in between
        self.process.stdout.close()
        self.process.wait()


class _FsspecSource:
    def __init__(self, url: str, offset: int):
        import fsspec

        self.handle = fsspec.open(url, "rb").open()
        self.handle.seek(offset)

    def readinto(self, buffer: memoryview) -> int:
        data = self.handle.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.handle.close()


def _skip(source: _Source, count: int) -> None:
    scratch = memoryview(bytearray(min(count, _BUFFER)))
    while count:
        got = source.readinto(scratch[: min(count, len(scratch))])
        if not got:
            raise OSError(f"ended while skipping to byte {count}")
        count -= got


def _open_source(url: str, offset: int, timeout: float) -> _Source:
    if url.startswith("pipe:"):
        return _PipeSource(url[len("pipe:") :], offset, timeout)
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        return _HttpSource(url, offset, timeout)
    if scheme == "file":
        return _LocalSource(url2pathname(urlparse(url).path), offset)
    if scheme == "" or len(scheme) == 1:  # a path (or a Windows drive letter)
        return _LocalSource(url, offset)
    return _FsspecSource(url, offset)


class _RetryingReader(io.RawIOBase):
    """One unbroken byte stream over a source reopened at the current byte after each failure (module docstring)."""

    def __init__(self, url: str, policy: ReadPolicy, size: Optional[int]):
        self.url, self.policy, self.size = url, policy, size
        self.offset = 0
        self.source: Optional[_Source] = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer = memoryview(buffer).cast("B")
        failures, started = 0, time.monotonic()
        if self.size is not None and self.offset >= self.size:
            return 0
        while True:
            try:
                if self.source is None:
                    self.source = _open_source(self.url, self.offset, self.policy.timeout)
                count = self.source.readinto(buffer)
                if count == 0 and self.size is not None and self.offset < self.size:
                    raise OSError(f"ended at byte {self.offset} of the {self.size} the manifest lists")
                self.offset += count
                return count
            except (OSError, http.client.HTTPException) as err:
                self._drop_source()
                failures += 1
                if isinstance(err, _FinalError) or failures > self.policy.retries:
                    raise ShardReadError(
                        f"cannot read {self.url!r} at byte {self.offset}"
                        f"{'' if self.size is None else f' of {self.size}'}: {failures} attempt(s) in a row failed "
                        f"over {time.monotonic() - started:.1f} s, the last with {type(err).__name__}: {err} "
                        f"({self.policy.describe()})"
                    ) from err
                delay = self.policy.delay(failures)
                logger.warning(
                    "reading %r failed at byte %d (%s: %s); retry %d of %d in %.1f s",
                    self.url,
                    self.offset,
                    type(err).__name__,
                    err,
                    failures,
                    self.policy.retries,
                    delay,
                )
                time.sleep(delay)

    def _drop_source(self) -> None:
        source, self.source = self.source, None
        if source is not None:
            try:
                source.close()
            except (OSError, http.client.HTTPException):
                pass  # a broken connection or pipe may fail to close; it is abandoned either way

    def close(self) -> None:
        self._drop_source()
        super().close()


def open_shard(url: str, policy: ReadPolicy, size: Optional[int] = None) -> io.BufferedReader:
    """A buffered binary stream over `url` (a path, `file://`, `http(s)://`, `pipe:COMMAND` or an fsspec URL) that
    retries failed reads as the module docstring says; `size` (bytes, from the manifest) makes an early end a
    failure."""
    return io.BufferedReader(_RetryingReader(url, policy, size), buffer_size=_BUFFER)


def read_bytes(url: str, policy: ReadPolicy) -> bytes:
    """The whole content of `url` (a manifest), read with the same retries."""
    with open_shard(url, policy) as stream:
        return stream.read()
