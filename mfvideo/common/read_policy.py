"""How shards and manifests are read, wherever they are: the read timeout, the retries and the backoff
(`mfvideo.data.shardio` reads with it). Here, below the recipe schema, so that the schema's defaults are these."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Mapping

MAX_BACKOFF = 60.0  # seconds: the longest wait between two attempts


@dataclass(frozen=True)
class ReadPolicy:
    timeout: float = 60.0  # seconds without a byte before a read counts as failed
    retries: int = 6  # failed attempts in a row (without progress) that are retried before giving up
    backoff: float = 1.0  # seconds before the first retry; doubles with each further one, up to MAX_BACKOFF

    ENVIRONMENT = {
        "timeout": "MFVIDEO_READ_TIMEOUT",
        "retries": "MFVIDEO_READ_RETRIES",
        "backoff": "MFVIDEO_READ_BACKOFF",
    }

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"read timeout must be > 0 seconds, got {self.timeout}")
        if self.retries < 0:
            raise ValueError(f"read retries must be >= 0, got {self.retries}")
        if self.backoff < 0:
            raise ValueError(f"read backoff must be >= 0 seconds, got {self.backoff}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "ReadPolicy":
        """The defaults, replaced by those of MFVIDEO_READ_TIMEOUT, _RETRIES, _BACKOFF that are set."""
        values = {}
        for field in fields(cls):
            name = cls.ENVIRONMENT[field.name]
            if name in environ:
                try:
                    values[field.name] = type(field.default)(environ[name])
                except ValueError:
                    raise ValueError(f"{name}={environ[name]!r} is not a {type(field.default).__name__}") from None
        try:
            return cls(**values)
        except ValueError as err:
            names = ", ".join(cls.ENVIRONMENT[key] for key in values)
            raise ValueError(f"{err} (set in the environment: {names})") from None

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        return min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF)

    def describe(self) -> str:
        return f"read timeout {self.timeout} s, {self.retries} retries, first backoff {self.backoff} s"
