"""The end-to-end tests' training pieces, in one place: the commands a user runs (tools/make_shards.py,
tools/train.py, tools/test.py, under one process or a launcher), running them to success, and reading what their
runs leave (losses, evaluation outputs, shard labels). Processes start through launch_helpers (this checkout, a
clean environment, one thread each)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from launch_helpers import run_command, torchrun_command

# ------------------------------------------------------------------------------------------------ commands


def script_command(
    script: str | Path, *args: str, nproc: int = 1, launcher: Callable[..., list[str]] = torchrun_command
) -> list[str]:
    """`script` with `args`: run by this Python when `nproc` is 1, else by `launcher(nproc, script, *args)`
    (launch_helpers' torchrun_command or deepspeed_command)."""
    return [sys.executable, str(script), *args] if nproc == 1 else launcher(nproc, str(script), *args)


def make_shards_command(source: str, out: Path, *args: str) -> list[str]:
    """tools/make_shards.py making `source`'s shards (`demo`, `ava`, ...; for `demo-ava`, its files) in `out`."""
    return script_command("tools/make_shards.py", source, "--out", str(out), *args)


def train_command(
    recipe: Path, out: Path, *overrides: str, nproc: int = 1, launcher: Callable[..., list[str]] = torchrun_command
) -> list[str]:
    """tools/train.py on `recipe` writing to `out`, with `overrides` after it; `nproc` processes (see
    script_command)."""
    return script_command(
        "tools/train.py", str(recipe), f"train.output_dir={out}", *overrides, nproc=nproc, launcher=launcher
    )


def tools_test_command(recipe: Path, weights: Path, out: Path, nproc: int = 1) -> list[str]:
    """tools/test.py on `recipe` with `weights` as model.init, writing to `out`/test; `nproc` processes under
    torchrun. (Not named test_*: pytest would collect it in every module that imports it.)"""
    return script_command("tools/test.py", str(recipe), f"model.init={weights}", f"train.output_dir={out}", nproc=nproc)


# --------------------------------------------------------------------------------------------- running them


def run_to_success(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """`cmd` through launch_helpers.run_command (same keyword arguments), asserted to exit 0, showing the end of its
    stderr otherwise."""
    proc = run_command(cmd, **kwargs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def assert_stops_before_any_work(cmd: list[str], phrases: list[str], out: Path) -> None:
    """`cmd` exits 2 naming every one of `phrases` on stderr, without a traceback and without creating `out`."""
    proc = run_command(cmd)
    assert proc.returncode == 2, (cmd, proc.stderr[-2000:])
    for phrase in phrases:
        assert phrase in proc.stderr, (phrase, cmd, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and not out.exists()


def make_demo_shards(out: Path, num_videos: int, max_count: int, *args: str, seed: int | None = None) -> Path:
    """`tools/make_shards.py demo`: `num_videos` 64×64 videos in shards of at most `max_count`, made with `seed`
    (the tool's default, 0, when None) and the other options `args`; returns `out`."""
    seeded = ["--seed", str(seed)] if seed is not None else []
    run_to_success(
        make_shards_command(
            "demo",
            out,
            "--num-videos",
            str(num_videos),
            "--width",
            "64",
            "--height",
            "64",
            "--max-count",
            str(max_count),
            *seeded,
            *args,
            "--no-progress",
        )
    )
    return out


def train_to_end(recipe: Path, out: Path, *overrides: str, nproc: int = 1) -> Path:
    """tools/train.py (train_command) run to its end, asserted to exit 0; returns `out`, its output folder."""
    run_to_success(train_command(recipe, out, *overrides, nproc=nproc))
    return out


# ------------------------------------------------------------------------------------------ what runs leave


def losses_by_step(out: Path) -> dict[int, float]:
    """optimizer step -> training loss, from the run folder `out`'s metrics.jsonl (steps that logged no loss, such as
    a probe at step 0, left out)."""
    from mfvideo.engine.monitor import read_metrics

    return {step: record["loss"] for step, record in read_metrics(out).items() if "loss" in record}


def evaluation_outputs(folder: Path) -> tuple[dict, list[dict]]:
    """An evaluation's metrics.json and its predictions.jsonl rows (tools/test.py's `out`/test, tools/probe.py's
    `out`/probe)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    return metrics, [json.loads(line) for line in (folder / "predictions.jsonl").open()]


def shard_labels(pattern: str) -> dict[str, int]:
    """key -> label of every sample of the shards `pattern` (a folder, or a brace pattern), in shard order."""
    from mfvideo.data.shardlist import list_shards
    from mfvideo.data.tarstream import iter_shard

    return {
        key: json.loads(parts["json"])["label"]
        for shard in list_shards(pattern)
        for key, parts in iter_shard(shard.url)
    }


# ------------------------------------------------------------------------------------------ inputs made here


def linked_shards(split: Path, to: Path) -> Path:
    """A new folder `to` of links to `split`'s shards, without a manifest."""
    to.mkdir()
    for shard in split.glob("*.tar"):
        (to / shard.name).symlink_to(shard)
    return to


def relabelled_copy(split: Path, to: Path, classes: list[str]) -> Path:
    """`split`'s shards (linked) under its manifest, changed to list `classes` ([]: an unlabelled split)."""
    linked_shards(split, to)
    manifest = json.loads((split / "manifest.json").read_text())
    (to / "manifest.json").write_text(json.dumps(dict(manifest, classes=classes)))
    return to


def save_fresh_weights(model_recipe, num_frames: int, crop_size: int, path: Path, seed: int = 0) -> Path:
    """The weights of the model `model_recipe` describes, freshly built with torch seeded by `seed` (as tools/train.py
    builds it under train.seed), saved in the layout of a run's model.pt; returns `path`."""
    import torch

    from mfvideo.tasks import build_model

    torch.manual_seed(seed)
    model = build_model(model_recipe, num_frames, crop_size)
    torch.save({"model": model.state_dict()}, path)
    return path
