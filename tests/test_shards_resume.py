"""kill -9 in the middle of a real make_shards run, then the same command again: the result is byte-identical."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from test_shards import digests

REPO = Path(__file__).resolve().parent.parent
DEMO_ARGS = ["demo", "--num-videos", "160", "--width", "48", "--height", "48", "--max-count", "4", "--no-progress"]


def _run(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_shards.py"), *DEMO_ARGS, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


@pytest.mark.slow
def test_kill_then_rerun_resumes_to_identical_shards(tmp_path):
    reference = tmp_path / "reference" / "train"
    _run(reference)

    out = tmp_path / "killed" / "train"
    first_shard = out / "train-000000.tar"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "make_shards.py"), *DEMO_ARGS, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not first_shard.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.3)  # let it get a few shards further, so a half-written one is likely open
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"

    finals = sorted(out.glob("train-*.tar"))
    assert finals, "no shard was finished before the kill"
    for shard in finals:  # every file under a final name is a complete tar
        with tarfile.open(shard) as tar:
            assert len(tar.getmembers()) == 8
    kept = {shard.name: shard.stat().st_ino for shard in finals}

    result = _run(out)
    resumed = int(re.search(r"\((\d+) found finished\)", result.stderr).group(1))
    assert resumed >= max(1, len(kept) - 1)  # the last rename may have beaten its done record to the kill
    assert digests(out) == digests(reference)
    assert not (out / ".partial").exists()
    still_there = {name: (out / name).stat().st_ino for name in kept}
    assert sum(still_there[name] == inode for name, inode in kept.items()) >= len(kept) - 1  # finished shards kept
