#!/usr/bin/env python
"""Multi-view test of trained weights: `python tools/test.py RECIPE model.init=WEIGHTS [section.key=value ...]`
(also under torchrun or deepspeed). Writes metrics.json and predictions.jsonl to <train.output_dir>/test/.
"""

import argparse

from mfvideo.common.preemption import requeue_until_started


def main() -> None:
    requeue_until_started()  # first: a SIGTERM from here on exits 75 (requeue), also while the rest loads
    from mfvideo.app.run import run_test

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/k400_mvit_s_ft.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. model.init=…/model.pt")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the deepspeed launcher")
    args = parser.parse_args()
    run_test(args.recipe, args.overrides, args.local_rank)


if __name__ == "__main__":
    main()
