"""Preemption by a scheduler: which signals mean "stop soon", and the exit code that asks for a requeue.

Slurm preempts a job (and `scancel`s it) with SIGTERM to every process of the job, then SIGKILL after a grace
period; `#SBATCH --signal=USR1@120` sends SIGUSR1 120 s before the time limit. The trainer (`mfvideo.engine.trainer`)
watches both: every rank finishes its current optimizer step, all ranks agree (the flag rides on the step's
existing all-reduce), write one checkpoint and exit with `REQUEUE_EXIT_CODE`, so that a wrapper requeues the job and
the next run resumes exactly. Loader workers ignore these signals from anyone but their parent
(`leave_preemption_to_parent`): the process that owns them decides when they stop, so a signal sent to the whole
process group cannot kill a worker in the middle of a step.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Optional

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# EX_TEMPFAIL of sysexits.h: "a temporary failure; the user is invited to retry". Distinct from a crash (1), a
# recipe error (2), `timeout`'s 124 and a death by signal (128 + n).
REQUEUE_EXIT_CODE = 75


def requeue_until_started() -> None:
    """Until the trainer installs its `PreemptionWatch`: a preemption signal ends the process at once with
    `REQUEUE_EXIT_CODE` (raised as SystemExit wherever the process is). Before the first step there is nothing to
    save, and the requeued job starts the same way."""

    def stop(signum: int, frame: Optional[FrameType]) -> None:
        raise SystemExit(REQUEUE_EXIT_CODE)

    for signum in PREEMPTION_SIGNALS:
        signal.signal(signum, stop)


class PreemptionWatch:
    """Records the first preemption signal this process receives, from `install()` until `restore()`. The handler
    only stores the signal's number (nothing else is safe inside a handler); the training loop reads it at step
    boundaries."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.received is None:
            self.received = signum

    def install(self) -> "PreemptionWatch":
        for signum in PREEMPTION_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "no signal"


def leave_preemption_to_parent(worker_id: int) -> None:
    """`worker_init_fn` of data-loader workers: ignore SIGUSR1, and a SIGTERM unless it comes from the worker's
    parent (the loader stops a worker that does not finish in time with SIGTERM, and it must still work)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # Blocked here, before any other thread starts, so SIGTERM reaches only the thread that waits for it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(
        target=_exit_on_sigterm_from, args=(os.getppid(),), name="sigterm-from-parent", daemon=True
    ).start()


def _exit_on_sigterm_from(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)
