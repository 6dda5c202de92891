"""Logged metrics that a model derives from additive statistics of its batches, such as MaskFeat's explained
variance (`mfvideo.models.maskfeat.MaskFeat.log_values`).

A model may return `outputs["sums"]`: named tensors that add up over micro-batches, steps and ranks (sums of squared
errors, of targets, counts). The engine adds them up on the device, so no micro-batch waits for the host; at a log
step it all-reduces the window's sums once, reads them, and hands them to the model's `log_values(window,
running)`, where `running` holds the totals of every earlier window of the run (restored on resume), so that a
model can keep estimates such as a running mean across steps and ranks. Models without sums log nothing more.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.distributed as dist

LogValues = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], dict]


class WindowSums:
    """The sums of the current log window (on the device) and the run's running totals (on the host)."""

    def __init__(self) -> None:
        self.window: dict[str, torch.Tensor] = {}
        self.running: dict[str, torch.Tensor] = {}

    def add(self, sums: Mapping[str, torch.Tensor], keep: torch.Tensor) -> None:
        """Add a micro-batch's sums; `keep` (a bool scalar on the device) is False for a skipped micro-batch."""
        for name, value in sums.items():
            value = torch.where(keep, value.detach().float(), 0.0)  # a skipped micro-batch may hold NaN
            self.window[name] = value if name not in self.window else self.window[name] + value

    def summarise(self, log_values: LogValues | None) -> dict:
        """The model's values for the window (one all-reduce, one host read), which then joins the running totals.
        Every rank must call it at the same steps."""
        if not self.window:
            return {}
        names = sorted(self.window)
        flat = torch.cat([self.window[name].reshape(-1) for name in names])
        if dist.is_initialized():
            dist.all_reduce(flat)
        flat = flat.cpu().double()  # running totals over a long run keep float64 precision
        window, offset = {}, 0
        for name in names:
            size = self.window[name].numel()
            window[name] = flat[offset : offset + size].reshape(self.window[name].shape)
            offset += size
        values = log_values(window, self.running) if log_values is not None else {}
        self.running = {name: window[name] + self.running.get(name, 0.0) for name in names}
        self.window = {}
        return values

    def state_dict(self) -> dict:
        """The running totals as plain lists (checkpoint client state)."""
        return {name: value.tolist() for name, value in self.running.items()}

    def load_state_dict(self, state: Mapping[str, list]) -> None:
        self.running = {name: torch.tensor(value, dtype=torch.float64) for name, value in state.items()}
