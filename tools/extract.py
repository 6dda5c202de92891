#!/usr/bin/env python
"""Pooled backbone features of every video of a split: `python tools/extract.py CKPT SHARDS --out DIR` (also under
torchrun): DIR/features.npy (N×D, the mean over the test views; N×V×D with --per-view) and DIR/index.jsonl (key,
label, shard per row). The same files for any number of processes. Exit code 2 for a checkpoint that cannot be used.
"""

import argparse
import sys

from mfvideo.app.extract import extract_features
from mfvideo.app.inference import CheckpointError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", help="model.pt of any mfvideo task (MaskFeat included), or imported weights")
    parser.add_argument("shards", help="a split folder made by tools/make_shards.py, or a shard pattern")
    parser.add_argument("--out", required=True, help="folder for features.npy and index.jsonl")
    parser.add_argument("--per-view", action="store_true", help="keep each view's features (N×V×D)")
    parser.add_argument("--manifest", help="the split's manifest.json when it is not beside the shards")
    parser.add_argument("--recipe", help="recipe describing the model (default: the checkpoint's record)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the deepspeed launcher")
    args = parser.parse_args()
    try:
        print(
            extract_features(
                args.checkpoint,
                args.shards,
                args.out,
                args.recipe,
                args.set,
                args.per_view,
                args.manifest,
                args.local_rank,
            )
        )
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"extract: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
