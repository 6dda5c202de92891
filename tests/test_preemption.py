"""Loader workers under a scheduler's signals: only their parent stops them (the trainer side is in
tests/test_train_demo.py)."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import time

from mfvideo.common.preemption import leave_preemption_to_parent


def _worker(ready) -> None:
    leave_preemption_to_parent(0)
    ready.set()
    time.sleep(60)


def test_a_worker_outlives_a_scheduler_signal_and_stops_on_its_parents_sigterm():
    context = multiprocessing.get_context("fork")  # how the loader starts its workers on Linux
    ready = context.Event()
    worker = context.Process(target=_worker, args=(ready,), daemon=True)
    worker.start()
    try:
        assert ready.wait(30)
        for signum in (signal.SIGTERM, signal.SIGUSR1):  # sent by another process, as Slurm does
            subprocess.run(["kill", f"-{signum.name[3:]}", str(worker.pid)], check=True)
        worker.join(1.0)
        assert worker.is_alive()
        worker.terminate()  # SIGTERM from the parent: what the loader does to a worker that does not finish
        worker.join(10)
        assert worker.exitcode == 0
    finally:
        if worker.is_alive():
            worker.kill()
