"""The evaluation loop, for the validation pass during training and for `tools/test.py`: task-agnostic.

An evaluator accumulates one pass: `update(batch, outputs)` with each batch and the model's outputs, `compute()`
(collective when several processes run: every rank calls it, every rank gets the metrics), `write(directory,
metrics)` (its result files) and `primary`, the name of the metric that picks the best checkpoint (higher is
better). Tasks hand out factories, so every pass starts from a fresh evaluator.
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm


@torch.no_grad()
def evaluate(model, loader, evaluator, show_progress: bool = False, autocast_dtype: torch.dtype | None = None) -> dict:
    """Run `model` (in eval mode, restored afterwards) over every batch of `loader`; returns `evaluator.compute()`.
    With `show_progress`, a bar with clips/s and the time left."""
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(loader), unit="batch", disable=not show_progress, dynamic_ncols=True)
    clips, start = 0, time.perf_counter()
    try:
        for batch in loader:
            device_type = batch["video"].device.type
            with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                outputs = model(batch)
            evaluator.update(batch, outputs)
            clips += batch["video"].shape[0]
            bar.set_postfix_str(f"{clips / (time.perf_counter() - start):.1f} clips/s", refresh=False)
            bar.update()
    finally:
        bar.close()
        model.train(was_training)
    return evaluator.compute()
