"""`tools/extract.py CKPT SHARDS --out DIR`: pooled backbone features of every video of a split, for other projects
(retrieval, clustering, a linear head elsewhere).

Each video is cut into the classification test's views (`data.test_clips` × `data.test_crops`, the record's
geometry) and each view embedded by the frozen backbone (`model.features`: the mean of its non-cls output tokens).
Every process embeds its share of the videos (the test loader's split: every video once over all ranks), writes it
as a part (`features.part<rank>.npy`, `index.part<rank>.jsonl`), and rank 0 merges the parts in video order into
`features.npy` (float32 N×D, the mean over the views; N×V×D in view order with `--per-view`) and `index.jsonl` (one
row per video, the same order: `key`, `label` (−1 for an unlabelled sample), `shard`), then removes the parts. So any
number of processes writes the same files.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from mfvideo.app.inference import CheckpointError, load_model
from mfvideo.common.fileio import write_atomic
from mfvideo.common.log import setup_logging
from mfvideo.data.collate import SOURCES, VIEWS, Collate
from mfvideo.data.decode import check_decoder
from mfvideo.data.loader import build_test_loader, read_policy
from mfvideo.data.stream import Placement, ShardSplit
from mfvideo.engine.distributed import init_distributed
from mfvideo.tasks import Views

log = logging.getLogger("mfvideo.extract")


def _part_paths(out_dir: Path, rank: int) -> tuple[Path, Path]:
    return out_dir / f"features.part{rank:03d}.npy", out_dir / f"index.part{rank:03d}.jsonl"


def extract_features(
    checkpoint: str,
    shards: str,
    out_dir: str | Path,
    recipe: Optional[str] = None,
    overrides: Sequence[str] = (),
    per_view: bool = False,
    manifest: Optional[str] = None,
    local_rank: Optional[int] = None,
) -> Path:
    """Write `features.npy` and `index.jsonl` for the videos of `shards` to `out_dir` (module docstring); returns
    the features file. CheckpointError (before any process group) for a checkpoint that cannot be used."""
    loaded = load_model(checkpoint, recipe, overrides, device="cpu")
    if not hasattr(loaded.model, "features"):
        raise CheckpointError(f"{checkpoint}: its {loaded.recipe.model.task} model has no pooled features")
    # The recipe's decoder is the training machine's choice: say before any work if it cannot run here.
    check_decoder(loaded.recipe.data.decoder, loaded.recipe.data.decode_device)
    info = init_distributed(local_rank)
    setup_logging(rank=info.rank, world_size=info.world_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded.to(info.device)
    data = loaded.recipe.data
    views = Views(data.test_clips, data.test_crops)
    batching = loaded.feature_batching(views)
    batching = replace(batching, collate=Collate((VIEWS, SOURCES)))
    loader = build_test_loader(
        data,
        ShardSplit(shards, manifest, read_policy(data)),
        batching,
        loaded.recipe.train.micro_batch_size,
        Placement(info.rank, info.world_size, data.num_workers),
    )
    log.info(
        "extracting %s features of %s: %d temporal view(s) × %d crop(s) per video, %d process(es)",
        checkpoint,
        shards,
        views.clips,
        views.crops,
        info.world_size,
    )
    videos: dict[int, dict] = {}
    for batch, pooled in loaded.run(loader, (), lambda b: loaded.model.features(b["video"]).to("cpu", torch.float32)):
        for row, (index, view) in enumerate(zip(batch["video_index"].tolist(), batch["view"].tolist())):
            video = videos.setdefault(
                index,
                {
                    "key": batch["key"][row],
                    "label": int(batch["sample_label"][row]),
                    "shard": batch["shard"][row],
                    "views": {},
                },
            )
            video["views"].setdefault(view, pooled[row])  # slots short of data repeat views: the first counts
    num_views = views.clips * views.crops
    order = sorted(videos)
    stacked = [torch.stack([videos[i]["views"][v] for v in range(num_views)]) for i in order]
    features = torch.stack(stacked) if stacked else torch.zeros(0, num_views, 0)
    part_features, part_index = _part_paths(out_dir, info.rank)
    np.save(part_features, features.numpy())
    part_index.write_text(
        "".join(
            json.dumps(
                {"video_index": i, "key": videos[i]["key"], "label": videos[i]["label"], "shard": videos[i]["shard"]}
            )
            + "\n"
            for i in order
        )
    )
    dist.barrier()
    if info.is_main:
        _merge(out_dir, info.world_size, per_view)
    dist.barrier()
    return out_dir / "features.npy"


def _merge(out_dir: Path, world_size: int, per_view: bool) -> None:
    parts, rows = [], []
    for rank in range(world_size):
        features_path, index_path = _part_paths(out_dir, rank)
        part = np.load(features_path)
        index = [json.loads(line) for line in index_path.read_text().splitlines()]
        if len(index) != len(part):
            raise RuntimeError(f"part {rank}: {len(part)} feature rows but {len(index)} index rows")
        parts += list(part)
        rows += index
    order = sorted(range(len(rows)), key=lambda n: rows[n]["video_index"])
    seen = [rows[n]["video_index"] for n in order]
    if len(set(seen)) != len(seen):
        raise RuntimeError("a video was embedded by two processes: the loaders disagree on the split")
    features = np.stack([parts[n] for n in order]) if order else np.zeros((0, 0), np.float32)
    if not per_view and len(features):
        features = features.mean(axis=1)
    tmp = out_dir / "features.npy.tmp"
    with open(tmp, "wb") as file:
        np.save(file, features.astype(np.float32))
    os.replace(tmp, out_dir / "features.npy")
    write_atomic(
        out_dir / "index.jsonl",
        "".join(json.dumps({key: rows[n][key] for key in ("key", "label", "shard")}) + "\n" for n in order).encode(),
    )
    for rank in range(world_size):
        for path in _part_paths(out_dir, rank):
            path.unlink()
    log.info("%d videos, features %s: %s", len(order), tuple(features.shape), out_dir / "features.npy")
