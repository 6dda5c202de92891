"""`python -m mfvideo.engine.universal ARGS`: DeepSpeed's `ds_to_universal` with its arguments, every checkpoint
file it reads loaded weights-only (`safe_load.refusing_pickled_code`). Exits with `REFUSED_EXIT_CODE` and the reason
on stderr when a file holds anything else."""

import runpy
import sys

from mfvideo.engine.safe_load import UnsafeCheckpoint, refusing_pickled_code

REFUSED_EXIT_CODE = 3

if __name__ == "__main__":
    try:
        with refusing_pickled_code():  # its worker processes are forked: they inherit the weights-only load
            runpy.run_module("deepspeed.checkpoint.ds_to_universal", run_name="__main__", alter_sys=True)
    except UnsafeCheckpoint as err:
        print(err, file=sys.stderr)
        sys.exit(REFUSED_EXIT_CODE)
