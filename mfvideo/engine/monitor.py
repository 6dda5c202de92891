"""Rank-0 observability: console progress, metrics.jsonl (one line per optimizer step), TensorBoard, loss PNG."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger("mfvideo.train")
METRICS = "metrics.jsonl"
# What the engine writes into every step's record; other keys are the model's values (`WindowSums`).
STEP_RECORD_KEYS = ("step", "epoch", "loss", "lr", "grad_norm", "skipped_micro_batches")


class Monitor:
    def __init__(self, output_dir: Path, enabled: bool, total_steps: int, log_every: int):
        self.enabled = enabled
        self.total_steps = total_steps
        self.log_every = log_every
        self.metrics_path = output_dir / METRICS
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(output_dir / "tensorboard"))
        self._window_start = time.perf_counter()
        self._window_clips = 0
        self._window_wait = 0.0
        self._window_steps = 0

    def is_log_step(self, step: int) -> bool:
        """Whether `step` gets a console line (and the model's window values): every `log_every` steps and the last."""
        return step % self.log_every == 0 or step == self.total_steps

    def step(self, record: dict, clips: int, data_wait: float) -> None:
        """Record one optimizer step; print every `log_every` steps with throughput over that window."""
        self._window_clips += clips
        self._window_wait += data_wait
        self._window_steps += 1
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                self._writer.add_scalar(f"train/{key}", value, record["step"])
        step = record["step"]
        if not self.is_log_step(step):
            return
        elapsed = time.perf_counter() - self._window_start
        clips_per_s = self._window_clips / elapsed if elapsed else 0.0
        eta = (self.total_steps - step) * elapsed / self._window_steps
        self._writer.add_scalar("train/clips_per_s", clips_per_s, step)
        self._writer.add_scalar("train/data_wait_fraction", self._window_wait / elapsed if elapsed else 0.0, step)
        grad = f"{record['grad_norm']:.4f}" if record.get("grad_norm") is not None else "n/a"
        model_values = "".join(f" {key} {record[key]:.4f}" for key in record if key not in STEP_RECORD_KEYS)
        log.info(
            "step %d/%d epoch %d loss %.5f%s lr %.3e grad %s | %.1f clips/s, data wait %.0f%% | ETA %s",
            step,
            self.total_steps,
            record["epoch"],
            record["loss"],
            model_values,
            record["lr"],
            grad,
            clips_per_s,
            100 * self._window_wait / elapsed if elapsed else 0.0,
            _format_eta(eta),
        )
        self._window_start, self._window_clips, self._window_wait, self._window_steps = time.perf_counter(), 0, 0.0, 0

    def validation(self, step: int, epoch: int, metrics: dict, primary: str, best: float) -> None:
        """Record a validation pass: merged into the step's line of metrics.jsonl as `val_<name>`, TensorBoard
        `val/<name>`, and one console line."""
        shown = self._evaluation(step, epoch, metrics, "val")
        if shown is not None:
            log.info("validation after epoch %d (step %d): %s | best %s %.2f", epoch, step, shown, primary, best)

    def probe(self, step: int, epoch: int, metrics: dict) -> None:
        """Record a k-NN probe (`mfvideo.evaluation.probe`): merged into the step's line of metrics.jsonl as
        `probe_<name>` (step 0: the probe at initialisation, before any step), TensorBoard `probe/<name>`, and one
        console line."""
        shown = self._evaluation(step, epoch, metrics, "probe")
        if shown is not None:
            log.info("k-NN probe at step %d, after %d epochs: %s", step, epoch, shown)

    def _evaluation(self, step: int, epoch: int, metrics: dict, prefix: str) -> str | None:
        """Write `metrics` as `<prefix>_<name>` to metrics.jsonl and `<prefix>/<name>` to TensorBoard; their text for
        the console line, or None on the ranks that record nothing."""
        if not self.enabled:
            return None
        record = {"step": step, "epoch": epoch, **{f"{prefix}_{name}": value for name, value in metrics.items()}}
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        for name, value in metrics.items():
            self._writer.add_scalar(f"{prefix}/{name}", value, step)
        return ", ".join(
            f"{name} {value:.2f}" if isinstance(value, float) else f"{name} {value}" for name, value in metrics.items()
        )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def read_metrics(output_dir: Path) -> dict[int, dict]:
    """step -> record, the training line and any validation line of a step merged; a step logged twice (rerun
    after a resume) keeps its latest values."""
    records: dict[int, dict] = {}
    path = output_dir / METRICS
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records.setdefault(record["step"], {}).update(record)
    return dict(sorted(records.items()))


def plot_loss(output_dir: Path, destination: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(output_dir)
    steps = [step for step, record in records.items() if "loss" in record]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, [records[s]["loss"] for s in steps], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(output_dir.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    destination.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(destination)
    plt.close(fig)
    return destination
