"""make_shards as cluster jobs run it: one split built in parts on several machines and merged, and a second job
into a folder another job is writing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from launch_helpers import REPO, child_env
from mfvideo.shards.cli import main as cli_main
from shards_helpers import make_kinetics
from test_shards import digests


def _kinetics_args(data: dict, *extra: str) -> list[str]:
    return ["kinetics", "--videos", str(data["videos"]), "--csv", str(data["csv"]), "--no-progress", *extra]


@pytest.mark.parametrize(
    "limits, parts, order",
    [
        (["--max-count", "2"], 2, [1, 0]),  # 3 blocks of 2 inputs, with 2 rejects among them
        (["--max-count", "2"], 4, [3, 0, 2, 1]),  # more parts than blocks: one part is empty
        (["--max-count", "3", "--max-size", "1"], 2, [0, 1]),  # every sample alone: shards renumbered at the merge
    ],
)
def test_parts_merged_are_byte_identical_to_one_machine_run(tmp_path, limits, parts, order):
    data = make_kinetics(tmp_path / "k700")
    whole, split = tmp_path / "whole" / "train", tmp_path / "split" / "train"
    assert cli_main(_kinetics_args(data, *limits, "--out", str(whole))) == 0
    for index in order:
        assert cli_main(_kinetics_args(data, *limits, "--out", str(split), "--part", f"{index}/{parts}")) == 0
    assert not (split / "manifest.json").exists()
    assert cli_main(["merge", "--out", str(split)]) == 0
    assert digests(split) == digests(whole)
    assert sorted(p.name for p in split.iterdir()) == sorted(p.name for p in whole.iterdir())  # no .parts, .lock
    assert len((split / "rejects.jsonl").read_text().splitlines()) == 2
    # a part or the merge run again after the merge find the split complete and write nothing
    assert cli_main(_kinetics_args(data, *limits, "--out", str(split), "--part", f"0/{parts}")) == 0
    assert cli_main(["merge", "--out", str(split)]) == 0
    assert digests(split) == digests(whole) and not (split / ".parts").exists()


def test_interrupted_merge_completes_when_run_again(tmp_path, monkeypatch):
    import mfvideo.shards.writer as writer

    data = make_kinetics(tmp_path / "k700")
    limits = ["--max-count", "3", "--max-size", "1"]
    whole, split = tmp_path / "whole" / "train", tmp_path / "split" / "train"
    assert cli_main(_kinetics_args(data, *limits, "--out", str(whole))) == 0
    for index in range(2):
        assert cli_main(_kinetics_args(data, *limits, "--out", str(split), "--part", f"{index}/2")) == 0

    def interrupt(*args):  # every shard is renamed into place; the job dies before rejects and manifest
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "write_atomic", interrupt)
    assert cli_main(["merge", "--out", str(split)]) == 130
    monkeypatch.undo()
    assert sorted(p.name for p in split.glob("*.tar")) == sorted(p.name for p in whole.glob("*.tar"))
    assert cli_main(["merge", "--out", str(split)]) == 0
    assert digests(split) == digests(whole) and not (split / ".parts").exists()


def test_merge_names_missing_and_mixed_parts(tmp_path, capsys):
    data = make_kinetics(tmp_path / "k700")
    out = tmp_path / "train"
    for part in ("0/3", "2/3"):
        assert cli_main(_kinetics_args(data, "--max-count", "2", "--out", str(out), "--part", part)) == 0
    capsys.readouterr()
    assert cli_main(["merge", "--out", str(out)]) == 2
    assert "part(s) 1/3 not finished" in capsys.readouterr().err
    assert cli_main(_kinetics_args(data, "--max-count", "2", "--out", str(out), "--part", "0/2")) == 0
    capsys.readouterr()
    assert cli_main(["merge", "--out", str(out)]) == 2
    assert "splits into [2, 3] parts" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()


def _verify(out: Path) -> int:
    """Every shard the manifest lists matches its size and sha256 and reads as a whole tar; the sample count."""
    manifest = json.loads((out / "manifest.json").read_text())
    for shard in manifest["shards"]:
        path = out / shard["file"]
        assert path.stat().st_size == shard["bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        with tarfile.open(path) as tar:
            assert len(tar.getmembers()) == 2 * shard["num_samples"]
    return manifest["num_samples"]


@pytest.mark.slow
def test_second_job_into_a_folder_being_written_exits_2_naming_the_holder(tmp_path):
    out = tmp_path / "train"
    command = [
        sys.executable,
        str(REPO / "tools" / "make_shards.py"),
        "demo",
        "--num-videos",
        "40",
        "--width",
        "48",
        "--height",
        "48",
        "--max-count",
        "4",
        "--no-progress",
        "--out",
        str(out),
    ]
    first = subprocess.Popen(command, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while f'"pid": {first.pid}' not in _read(out / ".lock") and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(first.pid, signal.SIGSTOP)  # holds the lock, mid-run, for as long as the second job needs
        assert not (out / "manifest.json").exists(), "the first job finished before the second could start"
        second = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2
    assert f"is being written by another job (host {os.uname().nodename}, pid {first.pid}, since " in second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert _verify(out) == 40
    assert not (out / ".lock").exists()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
