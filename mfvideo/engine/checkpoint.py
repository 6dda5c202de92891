"""Atomic, resumable checkpoints on top of DeepSpeed's sharded save.

Layout under `<output_dir>/checkpoints/`: one folder per step (`step_00001234/`) holding DeepSpeed's model and
optimizer shards plus `rank_<r>.pt` (that rank's data-pipeline state and RNG streams) and `layout.json` (the world
size, micro-batch and loader workers the data positions are valid for), and a `latest` file
naming the last *complete* folder. `latest` is replaced atomically only after every rank finished writing,
so a job killed mid-save resumes from the previous checkpoint; folders newer than `latest` are debris. A `best`
file names the checkpoint whose validation was best so far; pruning keeps it beside the last `keep_last`.
A resume on another world size converts the latest folder once into DeepSpeed's universal form, `step_…/universal/`
(built under a temporary name, then renamed), which every rank loads with `checkpoint.load_universal`; the per-rank
data positions and RNG streams do not carry over to another world size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from mfvideo.common.fileio import write_atomic
from mfvideo.engine.safe_load import UnsafeCheckpoint, refusing_pickled_code
from mfvideo.engine.universal import REFUSED_EXIT_CODE

log = logging.getLogger(__name__)
LATEST = "latest"
BEST = "best"
LAYOUT = "layout.json"
WORLD_SIZE = "world size"  # the layout entry a resume may change (through a universal checkpoint)
UNIVERSAL = "universal"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    return int(tag.removeprefix("step_"))


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].copy()),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,  # this rank's device
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy(), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _tag_named_by(marker: Path) -> str | None:
    if not marker.is_file():
        return None
    tag = marker.read_text().strip()
    return tag if (marker.parent / tag).is_dir() else None


def latest_tag(directory: Path) -> str | None:
    return _tag_named_by(directory / LATEST)


def best_tag(directory: Path) -> str | None:
    return _tag_named_by(directory / BEST)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a quota, a file-size limit); names the folder and the free
    space. The previous checkpoint is left as `latest`."""


def _free_space(directory: Path) -> str:
    try:
        return f"{shutil.disk_usage(directory).free / 2**30:.2f} GiB free there"
    except OSError as err:
        return f"free space unknown: {err}"


@contextlib.contextmanager
def _deferred_write_errors(engine) -> Iterator[list]:
    """DeepSpeed's file writes inside the block keep going past a failed one, its error kept in the list yielded:
    DeepSpeed's save ends in a barrier, which a rank that raised mid-save would leave every other rank waiting at."""
    deferred: list = []
    write = engine.checkpoint_engine.save

    def save_or_defer(state_dict, path):
        try:
            return write(state_dict, path)
        except (OSError, RuntimeError) as err:
            deferred.append(err)
            return None

    engine.checkpoint_engine.save = save_or_defer
    try:
        yield deferred
    finally:
        engine.checkpoint_engine.save = write


def save(
    engine,
    directory: Path,
    step: int,
    client_state: dict,
    rank_state: dict,
    keep_last: int,
    layout: dict,
    best: bool = False,
) -> None:
    """Collective: every rank must call it. Returns once `latest` (and with `best`, `best`) names the new
    checkpoint; when any rank cannot write its part, every rank raises CheckpointWriteError with the failing ranks'
    messages (the ranks exchange their outcome, so none waits for a rank that gave up)."""
    tag = tag_for(step)
    error = None
    try:
        with _deferred_write_errors(engine) as deferred:
            engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False)
        if deferred:
            raise deferred[0]
        torch.save(rank_state, directory / tag / f"rank_{dist.get_rank()}.pt")
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError("unexpected pos …")
        error = (
            f"cannot write checkpoint {directory / tag} on rank {dist.get_rank()} ({_free_space(directory)}): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        )
    errors: list = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    failed = [message for message in errors if message]
    if failed:
        raise CheckpointWriteError(
            f"{'; '.join(failed)}; the last complete checkpoint is {latest_tag(directory) or 'none yet'}"
        )
    if dist.get_rank() == 0:
        (directory / tag / LAYOUT).write_text(json.dumps(layout, indent=1))
        for path in (directory / tag).rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        write_atomic(directory / LATEST, tag.encode())
        if best:
            write_atomic(directory / BEST, tag.encode())
        _prune(directory, keep_last)
        log.info("checkpoint %s written", directory / tag)
    dist.barrier()


def saved_layout(directory: Path) -> dict | None:
    """The layout the latest checkpoint was written with (see `save`), or None when there is no checkpoint."""
    tag = latest_tag(directory)
    if tag is None:
        return None
    marker = directory / tag / LAYOUT
    return (
        json.loads(marker.read_text())
        if marker.is_file()
        else {WORLD_SIZE: len(list((directory / tag).glob("rank_*.pt")))}
    )  # a checkpoint from before layout.json


def layout_changes(directory: Path, layout: dict) -> list[str]:
    """Each value of `layout` (name -> value now) that differs from the one the latest checkpoint was written with,
    as a sentence naming both; [] when there is no checkpoint. Read before any process group exists."""
    saved = saved_layout(directory)
    if saved is None:
        return []
    tag = latest_tag(directory)
    return [
        f"{name} is {value} but checkpoint {directory / tag} was written with {saved[name]}: resume with "
        f"{saved[name]} (the saved data positions hold for that layout only) or use a new train.output_dir"
        for name, value in layout.items()
        if name in saved and saved[name] != value
    ]


def _prune(directory: Path, keep_last: int) -> None:
    tags = sorted(p.name for p in directory.glob("step_*") if p.is_dir())
    pinned = {latest_tag(directory), best_tag(directory)} - {None}
    keep = set(tags[-keep_last:]) | pinned if keep_last > 0 else set(tags)
    for name in tags:
        if name not in keep:
            shutil.rmtree(directory / name, ignore_errors=True)


def convert_to_universal(checkpoint_dir: Path) -> Path:
    """`checkpoint_dir/universal`, made from the DeepSpeed checkpoint in `checkpoint_dir` by `ds_to_universal` unless
    it is already there (a job that stopped again before its first save on the new world size). Built under a
    temporary folder and renamed, so a job killed mid-conversion leaves no half-written universal checkpoint."""
    target = checkpoint_dir / UNIVERSAL
    if target.is_dir():
        return target
    scratch = checkpoint_dir / f".{UNIVERSAL}.partial"
    shutil.rmtree(scratch, ignore_errors=True)  # debris of a conversion that was killed
    scratch.mkdir()
    # ds_to_universal writes `latest_universal` beside its output folder: inside the scratch folder, removed with it.
    # --inject_missing_state: a purely data-parallel model (no tensor or pipeline slicing) needs no conversion hints
    # but the format version, which DeepSpeed's own save does not record.
    command = [
        sys.executable,
        "-m",
        "mfvideo.engine.universal",
        "--input_folder",
        str(checkpoint_dir),
        "--output_folder",
        str(scratch / UNIVERSAL),
        "--inject_missing_state",
        "--num_extract_workers",
        "1",
        "--num_merge_workers",
        "1",
    ]
    log.info("converting %s to a universal checkpoint: %s", checkpoint_dir, " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == REFUSED_EXIT_CODE:
        raise UnsafeCheckpoint(done.stderr.strip().splitlines()[-1])
    if done.returncode != 0:
        raise RuntimeError(
            f"converting {checkpoint_dir} to a universal checkpoint failed (exit {done.returncode}):\n"
            f"{done.stdout[-2000:]}{done.stderr[-4000:]}"
        )
    os.replace(scratch / UNIVERSAL, target)
    shutil.rmtree(scratch)
    return target


def load(engine, directory: Path, universal: bool = False) -> tuple[dict, dict | None] | None:
    """(client_state, this rank's state) of the latest complete checkpoint, or None when there is none. With
    `universal` (the engine was built with `checkpoint.load_universal`: the world size changed), rank 0 converts the
    checkpoint to its universal form first, every rank loads that, and this rank's state is None: the saved data
    positions and RNG streams belong to ranks of another world."""
    tag = latest_tag(directory)
    if tag is None:
        return None
    if dist.get_rank() == 0:
        for debris in directory.glob("step_*"):
            if debris.is_dir() and debris.name > tag:
                log.warning("removing incomplete checkpoint %s (newer than %s)", debris, tag)
                shutil.rmtree(debris, ignore_errors=True)
    failure: list = [None]
    if universal and dist.get_rank() == 0:
        try:
            convert_to_universal(directory / tag)
        except (OSError, RuntimeError, UnsafeCheckpoint) as err:
            failure = [(isinstance(err, UnsafeCheckpoint), str(err))]
    if universal:
        dist.broadcast_object_list(failure, src=0)  # every rank stops with rank 0's reason, none waits forever
        if failure[0] is not None:
            refused, reason = failure[0]
            raise (UnsafeCheckpoint if refused else RuntimeError)(reason)
    dist.barrier()
    with refusing_pickled_code():  # DeepSpeed's own loads included
        if universal:
            _, client_state = engine.load_checkpoint(
                str(directory / tag), tag=UNIVERSAL, load_optimizer_states=True, load_lr_scheduler_states=False
            )
            log.info("resumed from %s (universal checkpoint)", directory / tag / UNIVERSAL)
            return client_state, None
        _, client_state = engine.load_checkpoint(
            str(directory), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
        )
    rank_file = directory / tag / f"rank_{dist.get_rank()}.pt"
    if not rank_file.is_file():
        raise RuntimeError(
            f"{rank_file} is missing: the checkpoint was written by a different number of ranks "
            f"than the {dist.get_world_size()} now running; resume with the same world size"
        )
    rank_state: dict[str, Any] = torch.load(rank_file, weights_only=True)
    log.info("resumed from %s", directory / tag)
    return client_state, rank_state
