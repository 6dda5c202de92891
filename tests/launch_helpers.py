"""Launching mfvideo in child processes the way a user would: a clean environment, one thread each."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child_env() -> dict:
    """This checkout first on the path; no launcher variables inherited from an outer distributed job."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def run_command(
    cmd: list[str], timeout: float = 600, extra_env: dict | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """`cmd` run to its end from the checkout's root in `child_env()` (plus `extra_env`), output captured as text."""
    return subprocess.run(
        cmd,
        env={**child_env(), **(extra_env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def torchrun_command(nproc: int, *args: str) -> list[str]:
    """torchrun with `nproc` processes on this machine (a free port) running `args` (the script first)."""
    from mfvideo.engine.distributed import free_port

    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        *args,
    ]


def deepspeed_command(nproc: int, *args: str) -> list[str]:
    """The `deepspeed` launcher with `nproc` processes (CPU: one per 'accelerator') running `args` (the script
    first). It passes --local_rank to the script and keeps its workers in its process group, so that one signal to
    the group reaches them all, as a scheduler's does (torchrun starts each worker in a session of its own)."""
    from mfvideo.engine.distributed import free_port

    return [
        str(Path(sys.executable).parent / "deepspeed"),
        "--num_gpus",
        str(nproc),
        "--master_port",
        str(free_port()),
        *args,
    ]


def signal_after_step(
    command: list[str], output_dir: Path, step: int, signum: int, timeout: float = 300
) -> subprocess.Popen:
    """Start `tools/train.py`-style `command` in its own process group, wait until `output_dir`'s metrics.jsonl logs
    `step`, then send `signum` to the whole group (loader workers included, as a scheduler does). Returns the
    process (stderr piped as text; call communicate() or wait())."""
    from mfvideo.engine.monitor import read_metrics

    job = subprocess.Popen(
        command,
        env=child_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while max(read_metrics(output_dir), default=0) < step:
        assert job.poll() is None and time.monotonic() < deadline, "training ended before it could be signalled"
        time.sleep(0.05)
    os.killpg(job.pid, signum)
    return job
