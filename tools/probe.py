#!/usr/bin/env python
"""Frozen-backbone probe of a checkpoint (k-NN and linear): `python tools/probe.py RECIPE model.init=WEIGHTS
[data.probe_train=SHARDS data.probe_val=SHARDS] [section.key=value ...]` (also under torchrun or deepspeed). The
labelled splits default to data.train and data.val. Writes metrics.json and predictions.jsonl to
<train.output_dir>/probe/.
"""

import argparse

from mfvideo.app.probe import run_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/k400_mvit_s_pt.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. model.init=…/model.pt")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the deepspeed launcher")
    args = parser.parse_args()
    run_probe(args.recipe, args.overrides, args.local_rank)


if __name__ == "__main__":
    main()
