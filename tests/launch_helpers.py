"""Launching mfvideo in child processes the way a user would: a clean environment, one thread each."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child_env() -> dict:
    """This checkout first on the path; no launcher variables inherited from an outer distributed job."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env
