#!/usr/bin/env python
"""Train (pretrain or fine-tune) with a recipe: `deepspeed tools/train.py RECIPE [section.key=value ...]` (or
torchrun, or plain python).

Re-running with the same output folder resumes from its latest checkpoint.
"""

import argparse

from mfvideo.common.preemption import requeue_until_started


def main() -> None:
    requeue_until_started()  # first: a SIGTERM from here on exits 75 (requeue), also while the rest loads
    from mfvideo.app.run import run_training

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/k400_mvit_s_pt.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the deepspeed launcher")
    args = parser.parse_args()
    run_training(args.recipe, args.overrides, args.local_rank)


if __name__ == "__main__":
    main()
