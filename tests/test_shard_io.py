"""Shards read over a loopback HTTP server that stalls, drops connections and comes back, through `pipe:` commands
that fail, and from local files whose size is not the manifest's: bounded retries, clear errors, and exactly the
samples of an uninterrupted read."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from loader_helpers import build_train_loader
from mfvideo.data.shardio import ReadPolicy, ShardReadError
from mfvideo.data.shardlist import SlotPlan, list_shards
from mfvideo.data.tarstream import iter_shard, samples_from
from stream_helpers import demo_shards
from test_stream_loader import data_cfg, mask_cfg


class FaultyServer:
    """Files of `root` over HTTP/1.0 on 127.0.0.1 with byte ranges. `faults[n]` says what request n gets: absent or
    None, the file; ("cut", k): headers for the whole range and k bytes, then the connection closes; ("stall", k):
    headers and k bytes, then silence; "silent": nothing at all (the connection is accepted). Silence lasts until
    the server stops. `honour_range=False` answers every request with the whole file."""

    def __init__(self, root: Path, faults: dict | None = None, honour_range: bool = True):
        self.root, self.faults, self.honour_range = root, faults or {}, honour_range
        self.requests: list[tuple[str, str | None]] = []
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                number = len(server.requests)
                server.requests.append((self.path, self.headers.get("Range")))
                fault = server.faults.get(number)
                if fault == "silent":
                    server.release.wait(60)
                    return
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") and server.honour_range else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if fault is None:
                    self.wfile.write(data[start:])
                    return
                kind, count = fault
                self.wfile.write(data[start : start + count])
                self.wfile.flush()
                if kind == "stall":
                    server.release.wait(60)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(root: Path, faults: dict | None = None, honour_range: bool = True) -> FaultyServer:
        servers.append(FaultyServer(root, faults, honour_range))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def shards() -> Path:
    return Path(demo_shards()).parent


def _http_pattern(server: FaultyServer, shards: Path) -> str:
    count = len(json.loads((shards / "manifest.json").read_text())["shards"])
    return f"{server.url}/demo-{{000000..{count - 1:06d}}}.tar"


def _samples(pattern: str, start: int, policy: ReadPolicy, manifest: str | None = None) -> list[tuple]:
    """(position, key, parts) for one cycle of all the pattern's shards, from `start` on."""
    plan = SlotPlan(tuple(list_shards(pattern, manifest, policy)), quota_clips=0)
    stream = samples_from(plan, start, policy)
    out = [
        (position, sample.key, sample.parts)
        for position, sample in (next(stream) for _ in range(plan.cycle_samples - start))
    ]
    stream.close()
    return out


QUICK = ReadPolicy(timeout=0.5, retries=2, backoff=0.1)


def test_stalled_server_fails_after_bounded_retries_naming_the_shard(shards, serve):
    server = serve(shards, faults={0: ("stall", 5000), 1: "silent", 2: "silent", 3: "silent"})
    url = f"{server.url}/demo-000001.tar"
    started = time.monotonic()
    with pytest.raises(ShardReadError) as caught:
        list(iter_shard(url, QUICK))
    elapsed = time.monotonic() - started
    # the first read stalls after 5000 bytes, two retries get nothing: 3 timeouts and backoffs of 0.1 + 0.2 s
    assert 3 * 0.5 + 0.3 <= elapsed < 3 * 0.5 + 0.3 + 2.0
    assert server.requests == [("/demo-000001.tar", None)] + [("/demo-000001.tar", "bytes=5000-")] * 2
    message = str(caught.value)
    assert f"cannot read '{url}' at byte 5000: 3 attempt(s) in a row failed" in message
    assert "TimeoutError" in message and "read timeout 0.5 s, 2 retries" in message


@pytest.mark.parametrize("honour_range", [True, False])
def test_server_back_within_the_retry_window_gives_the_samples_of_an_uninterrupted_read(shards, serve, honour_range):
    # request 0 is the manifest; reading from position 10 starts in the second shard (request 1), whose
    # connection drops after 20000 bytes, then is accepted and left silent once, then served again
    server = serve(shards, faults={1: ("cut", 20000), 2: "silent"}, honour_range=honour_range)
    local = _samples(demo_shards(), 10, QUICK)
    remote = _samples(_http_pattern(server, shards), 10, QUICK)
    assert [(p, k) for p, k, _ in remote] == [(p, k) for p, k, _ in local] and len(local) == 43
    assert remote == local
    assert server.requests[1][1] is None and server.requests[2][1] == server.requests[3][1] == "bytes=20000-"


def test_truncated_remote_shard_is_an_error_naming_its_size(shards, serve, tmp_path):
    copy = tmp_path / "demo"
    shutil.copytree(shards, copy)
    data = (copy / "demo-000002.tar").read_bytes()
    (copy / "demo-000002.tar").write_bytes(data[: len(data) // 2 // 512 * 512])  # whole tar blocks, no end marker
    server = serve(copy)
    policy = ReadPolicy(timeout=1.0, retries=1, backoff=0.0)
    (shard,) = [s for s in list_shards(_http_pattern(server, copy), None, policy) if s.url.endswith("000002.tar")]
    with pytest.raises(
        ShardReadError,
        match=rf"demo-000002.tar' at byte {len(data) // 2 // 512 * 512} of "
        rf"{len(data)}: 2 attempt\(s\).*the {len(data)} the manifest lists",
    ):
        list(iter_shard(shard.url, policy, shard.bytes))


def test_missing_remote_shard_fails_at_once(shards, serve):
    server = serve(shards)
    with pytest.raises(ShardReadError, match=r"demo-000099.tar' at byte 0: 1 attempt\(s\).*HTTP 404"):
        list(iter_shard(f"{server.url}/demo-000099.tar", QUICK))
    assert len(server.requests) == 1


def test_pipe_command_that_fails_once_is_rerun_and_skips_what_was_read(shards, tmp_path):
    flag = tmp_path / "failed-once"
    shard = shards / "demo-000003.tar"
    command = f"pipe:if [ -e {flag} ]; then cat {shard}; else touch {flag}; head -c 30000 {shard}; exit 1; fi"
    assert list(iter_shard(command, QUICK)) == list(iter_shard(str(shard), QUICK))
    assert flag.exists()
    started = time.monotonic()
    with pytest.raises(ShardReadError, match=r"at byte 3000: 3 attempt\(s\).*no output from"):
        list(iter_shard(f"pipe:head -c 3000 {shard}; sleep 30", QUICK))
    assert time.monotonic() - started < 3 * 0.5 + 0.3 + 2.0


def test_local_shard_of_another_size_than_its_manifest_is_an_error_at_start(shards, tmp_path):
    copy = tmp_path / "demo"
    shutil.copytree(shards, copy)
    with open(copy / "demo-000004.tar", "ab") as handle:
        handle.write(b"\0" * 512)
    expected = json.loads((copy / "manifest.json").read_text())["shards"][4]["bytes"]
    message = rf"demo-000004.tar' has {expected + 512} bytes but manifest .*manifest.json' lists {expected}"
    with pytest.raises(ValueError, match=message):
        list_shards(str(copy))
    with pytest.raises(ValueError, match=message):
        build_train_loader(
            data_cfg(str(copy / "demo-{000000..000008}.tar")), mask_cfg(), 4, 0, 1, seed=0, fields=("label", "mask")
        )


def test_read_policy_from_the_environment():
    assert ReadPolicy.from_env({}) == ReadPolicy(timeout=60.0, retries=6, backoff=1.0)
    assert ReadPolicy.from_env({"MFVIDEO_READ_TIMEOUT": "2.5", "MFVIDEO_READ_RETRIES": "0"}) == ReadPolicy(
        timeout=2.5, retries=0, backoff=1.0
    )
    with pytest.raises(ValueError, match="MFVIDEO_READ_RETRIES='two' is not a int"):
        ReadPolicy.from_env({"MFVIDEO_READ_RETRIES": "two"})
    with pytest.raises(
        ValueError,
        match=r"timeout must be > 0 seconds, got 0.0 \(set in the environment: "
        r"MFVIDEO_READ_TIMEOUT\)",
    ):
        ReadPolicy.from_env({"MFVIDEO_READ_TIMEOUT": "0"})


def test_the_recipes_read_policy_reaches_the_reader(shards, serve):
    """data.read_timeout / read_retries / read_backoff, not the environment's defaults, decide how the loader reads:
    a server that never answers fails after 2 attempts of 0.3 s and one backoff of 0.1 s."""
    server = serve(shards, faults={0: "silent", 1: "silent"})
    cfg = data_cfg(_http_pattern(server, shards), read_timeout=0.3, read_retries=1, read_backoff=0.1)
    started = time.monotonic()
    expected = r"manifest.json.*2 attempt\(s\) in a row failed.*read timeout 0.3 s, 1 retries, first backoff 0.1 s"
    with pytest.raises(OSError, match=expected):
        build_train_loader(cfg, mask_cfg(), 4, 0, 1, seed=0, fields=("label", "mask"))
    assert time.monotonic() - started < 0.3 * 2 + 0.1 + 2.0


@pytest.mark.slow
def test_training_batches_over_a_flaky_server_equal_those_from_local_files(shards, serve):
    """The loader as training builds it, with the recipe's read policy: a dropped connection and a silent retry
    mid-epoch change no batch."""
    server = serve(shards, faults={4: ("cut", 30000), 5: "silent", 8: ("cut", 1000)})
    quick = dict(read_timeout=0.5, read_backoff=0.1, read_retries=2)
    local = list(build_train_loader(data_cfg(demo_shards()), mask_cfg(), 4, 0, 1, seed=0, fields=("label", "mask")))
    remote = list(
        build_train_loader(
            data_cfg(_http_pattern(server, shards), **quick), mask_cfg(), 4, 0, 1, seed=0, fields=("label", "mask")
        )
    )
    assert len(remote) == len(local) == 53 // 4
    for ours, theirs in zip(remote, local):
        assert ours["key"] == theirs["key"]
        assert torch.equal(ours["video"], theirs["video"]) and torch.equal(ours["mask"], theirs["mask"])
    assert sum(1 for _, byte_range in server.requests if byte_range) == 3  # the faults were hit and retried


def test_fsspec_urls_read_the_same_samples(shards):
    import fsspec

    memory = fsspec.filesystem("memory")
    for path in shards.iterdir():
        memory.pipe(f"/shard-io-test/{path.name}", path.read_bytes())
    try:
        count = len(json.loads((shards / "manifest.json").read_text())["shards"])
        remote = _samples(f"memory://shard-io-test/demo-{{000000..{count - 1:06d}}}.tar", 20, QUICK)
    finally:
        memory.rm("/shard-io-test", recursive=True)
    assert remote == _samples(demo_shards(), 20, QUICK)
