"""Reading checkpoint files without running code from them.

A PyTorch checkpoint is a pickle, and a pickle may call any function while it loads: whoever can write a run folder
could run code in the next job that resumes from it. mfvideo's own files are read with `weights_only=True`.
DeepSpeed reads its files (`mp_rank_*_model_states.pt`, `*_optim_states.pt`, the universal checkpoint's, and those
`zero_to_fp32` consolidates) with `weights_only=False`, deep inside its own code. `refusing_pickled_code()` makes every
`torch.load` inside it a weights-only load that admits, besides tensors and plain containers, exactly the types
DeepSpeed's checkpoint files hold (`allowed_types()`); anything else is refused with `UnsafeCheckpoint`, naming the file
and the object it would have built.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
from collections.abc import Iterator

import torch


def allowed_types() -> list:
    """What DeepSpeed 0.19's ZeRO-1/2/3 checkpoints pickle besides tensors and containers (found by loading them):
    its loss scalers' state, the ZeRO stage enum and the fragment addresses of a flattened parameter group."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class UnsafeCheckpoint(pickle.UnpicklingError):
    """A checkpoint file that holds more than tensors, plain containers and DeepSpeed's own state types."""


@contextlib.contextmanager
def refusing_pickled_code() -> Iterator[None]:
    """Every `torch.load` in the block loads weights only (module docstring); restores `torch.load` on exit."""
    original = torch.load

    @functools.wraps(original)
    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            with torch.serialization.safe_globals(allowed_types()):
                return original(f, *args, **kwargs)
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()
            reason = next(
                (line for line in first if "GLOBAL" in line or "Unsupported" in line),
                first[0] if first else type(err).__name__,
            )
            raise UnsafeCheckpoint(
                f"{f}: refused: it holds more than tensors and DeepSpeed's checkpoint state "
                f"({reason.strip()}); nothing in it was run. Delete it (and its checkpoint "
                f"folder) or restore it from a copy you trust"
            ) from None

    torch.load = load
    try:
        yield
    finally:
        torch.load = original
