"""The training loop on a DeepSpeed engine: ZeRO 1/2/3, accumulation, clipping, schedule, validation, exact resume.

The loop knows no task: a model takes a batch dict and returns {"loss", ...}. The model, the loader, the validation
pass (a loader plus a factory of evaluators, see `mfvideo.engine.evaluate`) and a probe of the frozen model come
from the caller (`TrainingParts`; mfvideo.app builds them from the recipe's task). The recipe gives the loop its own
settings only: batch sizes, optimizer, schedule, checkpoints, logging.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist

from mfvideo.common.fileio import LockHeld, hold_lock
from mfvideo.common.log import setup_logging
from mfvideo.common.preemption import REQUEUE_EXIT_CODE, PreemptionWatch
from mfvideo.config import BatchSplit, Recipe, derive_batch_split, recipe_to_yaml, save_recipe
from mfvideo.engine import checkpoint
from mfvideo.engine.distributed import DistInfo, init_distributed
from mfvideo.engine.evaluate import evaluate
from mfvideo.engine.monitor import Monitor, plot_loss
from mfvideo.engine.optim import CosineSchedule, apply_lr, param_groups, schedule_for
from mfvideo.engine.safe_load import refusing_pickled_code
from mfvideo.engine.window_sums import WindowSums

log = logging.getLogger("mfvideo.train")

PRECISIONS = ("auto", "bf16", "fp32")
ZERO_STAGES = (1, 2, 3)

Probe = Callable[[torch.nn.Module], dict]  # the frozen module -> the probe's metrics; collective over the ranks
Validation = tuple  # (loader, evaluator factory): `mfvideo.engine.evaluate`


def _nothing(micro_batch_size: int, info: DistInfo) -> None:
    return None


@dataclass(frozen=True)
class TrainingParts:
    """What the loop trains, each built when the loop is ready for it: `model()` under the run's seed, the others
    with the per-process micro-batch size and this process's `DistInfo` once the process group is up. `validation`
    and `probe` return None when the run has none."""

    model: Callable[[], torch.nn.Module]
    loader: Callable[[int, DistInfo], object]
    validation: Callable[[int, DistInfo], Optional[Validation]] = _nothing
    probe: Callable[[int, DistInfo], Optional[Probe]] = _nothing
    # plain values written beside the weights of every exported model (`export_weights`), which adds the step
    record: Mapping[str, Any] = field(default_factory=dict)


LOCK_FILE = "train.lock"


class NonFiniteLossError(RuntimeError):
    """Raised when too many losses in a row were NaN/inf; the last good checkpoint is left in place."""


class Preempted(Exception):
    """Raised on every rank once a preemption signal reached any rank, its step finished and a checkpoint of that
    step was written; entry points exit with `mfvideo.common.preemption.REQUEUE_EXIT_CODE`."""


@dataclass
class Progress:
    """What a checkpoint must restore besides weights, optimizer and per-rank state."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_into_epoch: int = 0  # micro-batches this rank consumed in `epoch`
    best_metric: Optional[float] = None  # the validation's primary metric at its best so far
    best_step: int = 0
    probe_history: list[dict] = field(default_factory=list)  # every k-NN probe so far: {"step", "epoch", metrics}
    log_totals: dict = field(default_factory=dict)  # running totals of the model's log sums (`WindowSums`)


def data_layout(recipe: Recipe, world_size: int) -> dict:
    """What a checkpoint's data positions depend on (`checkpoint.layout_changes`)."""
    return {
        checkpoint.WORLD_SIZE: world_size,
        "train.micro_batch_size": recipe.train.micro_batch_size,
        "data.num_workers": recipe.data.num_workers,
    }


def uses_bf16(recipe: Recipe) -> bool:
    return recipe.train.precision == "bf16" or (recipe.train.precision == "auto" and torch.cuda.is_available())


def deepspeed_config(recipe: Recipe, split: BatchSplit, load_universal: bool = False) -> dict:
    """`load_universal`: the checkpoint to resume from was written with another world size (`checkpoint.load`)."""
    return {
        "checkpoint": {"load_universal": load_universal},
        "train_batch_size": split.global_batch_size,
        "train_micro_batch_size_per_gpu": split.micro_batch_size,
        "gradient_accumulation_steps": split.accumulation_steps,
        "gradient_clipping": recipe.optim.clip_grad,
        "zero_optimization": {"stage": recipe.train.zero_stage},
        "bf16": {"enabled": uses_bf16(recipe)},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def _global_step_stats(loss: torch.Tensor, preempted: bool) -> torch.Tensor:
    """[sum of the ranks' finite losses, number of ranks whose loss is not finite, number of ranks that received a
    preemption signal], one all-reduce on the loss's device (NCCL reduces only CUDA tensors) and no host read:
    every rank holds the same decisions."""
    value = loss.detach().float()
    finite = torch.isfinite(value)
    stats = torch.stack(
        [
            torch.where(finite, value, torch.zeros_like(value)),
            (~finite).float(),
            torch.full_like(value, float(preempted)),
        ]
    )
    dist.all_reduce(stats)
    return stats


class Stepper:
    """One optimizer step: `accumulation_steps` micro-batches forward and backward, non-finite losses skipped
    consistently on every rank, the step's learning rate applied, then the DeepSpeed step.

    The skip decision stays on the device: a hook on every parameter's gradient lets it through only when every
    rank's loss of the micro-batch was finite (`torch.where`, so a NaN gradient becomes 0, not NaN), so a skipped
    micro-batch contributes nothing while ZeRO's collectives run as always. The host reads the step's numbers once,
    after its last backward: the losses for the log, whether every micro-batch was skipped (then the step runs at
    learning rate 0 and moves no weight), and whether any rank has received a preemption signal (`stop_requested`,
    the same on every rank; a signal that arrives after the step's last all-reduce counts at the next step)."""

    def __init__(
        self,
        engine,
        optimizer,
        lr_scales: list[float],
        schedule: CosineSchedule,
        split: BatchSplit,
        max_nonfinite: int,
        ckpt_dir: Path,
        preemption: PreemptionWatch,
    ):
        self.engine, self.optimizer, self.lr_scales, self.schedule = engine, optimizer, lr_scales, schedule
        self.split, self.max_nonfinite, self.ckpt_dir = split, max_nonfinite, ckpt_dir
        self.preemption = preemption
        self.stop_requested = False
        self.nonfinite_in_a_row = 0
        self.sums = WindowSums()  # the model's additive log statistics (`outputs["sums"]`), read at log steps
        self.keep = None  # bool scalar on the device: let the current micro-batch's gradients through
        for param in engine.module.parameters():
            if param.requires_grad:
                param.register_hook(self._gate)

    def _gate(self, grad: torch.Tensor) -> torch.Tensor:
        return torch.where(self.keep, grad, 0.0)

    def __call__(self, batches: Iterator[dict], progress: Progress) -> tuple[dict, float]:
        """(metrics record of the step, seconds spent waiting for data)."""
        stats, keys, data_wait = [], [], 0.0
        lr = self.schedule(progress.step)
        for micro in range(self.split.accumulation_steps):
            start = time.perf_counter()
            batch = next(batches)
            data_wait += time.perf_counter() - start
            progress.batches_into_epoch += 1
            outputs = self.engine(batch)
            loss = outputs["loss"]
            stats.append(_global_step_stats(loss, self.preemption.received is not None))
            keys.append(batch.get("key"))
            self.keep = stats[-1][1] == 0
            if "sums" in outputs:
                self.sums.add(outputs["sums"], self.keep)
            self.engine.backward(loss)
            if micro == self.split.accumulation_steps - 1:
                totals, nonfinite, preempted = torch.stack(stats).cpu().unbind(1)  # the step's one host read
                skipped = [bool(n) for n in nonfinite]
                self.stop_requested = bool(preempted.any())
                self._count_nonfinite(progress.step + 1, skipped, keys)
                # A step whose every micro-batch was skipped moves no weight: learning rate 0.
                apply_lr(self.optimizer, self.lr_scales, 0.0 if all(skipped) else lr)
            self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()
        losses = [float(total) / self.split.world_size for total, skip in zip(totals, skipped) if not skip]
        record = {
            "step": progress.step + 1,
            "epoch": progress.epoch,
            "loss": sum(losses) / len(losses) if losses else math.nan,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "skipped_micro_batches": sum(skipped),
        }
        return record, data_wait

    def _count_nonfinite(self, step: int, skipped: list[bool], keys: list) -> None:
        for skip, batch_keys in zip(skipped, keys):
            if not skip:
                self.nonfinite_in_a_row = 0
                continue
            self.nonfinite_in_a_row += 1
            log.warning("non-finite loss at step %d (keys %s): skipping its gradient", step, batch_keys)
            if self.nonfinite_in_a_row >= self.max_nonfinite:
                raise NonFiniteLossError(
                    f"{self.nonfinite_in_a_row} non-finite losses in a row (train.max_nonfinite_steps="
                    f"{self.max_nonfinite}); stopping. The last good checkpoint is "
                    f"{checkpoint.latest_tag(self.ckpt_dir) or 'none yet'} in {self.ckpt_dir}"
                )


def build_engine(recipe: Recipe, model: torch.nn.Module, split: BatchSplit, load_universal: bool = False):
    """(DeepSpeed engine, its optimizer, each parameter group's layer-decay LR scale)."""
    import deepspeed

    groups = param_groups(model, recipe.optim)
    lr_scales = [group.pop("lr_scale") for group in groups]
    optimizer = torch.optim.AdamW(groups, lr=recipe.optim.lr, betas=tuple(recipe.optim.betas), eps=recipe.optim.eps)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        dist_init_required=False,
        config=deepspeed_config(recipe, split, load_universal),
    )
    return engine, optimizer, lr_scales


def saved_world_size(ckpt_dir: Path) -> Optional[int]:
    """The world size the latest checkpoint was written with; None when there is none."""
    layout = checkpoint.saved_layout(ckpt_dir)
    return None if layout is None else layout[checkpoint.WORLD_SIZE]


# ZeRO stages whose checkpoints DeepSpeed resumes on another world size with their optimizer state intact. Measured
# with DeepSpeed 0.19 (tests/test_engine.py): a ZeRO-2 run resumed 2→1 through its universal checkpoint follows the
# uninterrupted run to 1e-7; a ZeRO-3 one matches at the first step after the resume and is off by 1e-3 from the
# next on, as Adam's moments would be if they had been lost.
RESHARDABLE_ZERO_STAGES = (1, 2)


def world_change_problems(recipe: Recipe, ckpt_dir: Path, world_size: int) -> list[str]:
    """A resume that would continue wrongly on `world_size` processes: a ZeRO-3 checkpoint of another world size."""
    saved = saved_world_size(ckpt_dir)
    if saved is None or saved == world_size or recipe.train.zero_stage in RESHARDABLE_ZERO_STAGES:
        return []
    return [
        f"train.zero_stage={recipe.train.zero_stage}: the checkpoint in {ckpt_dir} was written by {saved} processes "
        f"and {world_size} run now; DeepSpeed resumes ZeRO-3 on another number of processes without its optimizer "
        f"state, so the run would not continue as it was: resume it with {saved} processes (ZeRO-1 and ZeRO-2 "
        f"checkpoints resume on any number)"
    ]


def resume(engine, ckpt_dir: Path, loader, seed: int, rank: int, world_changed: bool = False) -> Progress:
    """Restore the latest complete checkpoint (weights, optimizer, progress, RNG streams, data position) or start
    fresh; either way the loader is set to the epoch that runs next.

    `world_changed` (the checkpoint was written with another world size): weights, optimizer and progress come from
    its universal form, but each rank's data position and RNG streams held for the old ranks only. The data stream
    then restarts at a deterministic point: the beginning of the next epoch when the checkpoint was mid-epoch (the
    rest of that epoch is skipped; the step count, and so the schedule and the last step, carry on), the beginning
    of its epoch when it was written at an epoch's end. RNG streams are reseeded from (seed, rank, step)."""
    resumed = checkpoint.load(engine, ckpt_dir, universal=world_changed)
    if resumed is None:
        torch.manual_seed(seed + 1000 * rank)  # drop path differs across ranks
        loader.set_epoch(0)
        return Progress()
    client_state, rank_state = resumed
    progress = Progress(**client_state["progress"])
    if world_changed:
        if progress.batches_into_epoch > 0:
            log.warning(
                "the world size changed since step %d's checkpoint, written %d micro-batches per rank into "
                "epoch %d: the data stream restarts at the beginning of epoch %d (the rest of epoch %d is "
                "skipped)",
                progress.step,
                progress.batches_into_epoch,
                progress.epoch,
                progress.epoch + 1,
                progress.epoch,
            )
            progress.epoch, progress.batches_into_epoch = progress.epoch + 1, 0
        else:
            log.warning(
                "the world size changed since step %d's checkpoint, written at the end of an epoch: the data "
                "stream restarts at the beginning of epoch %d",
                progress.step,
                progress.epoch,
            )
        reseed(seed, rank, progress.step)
        loader.set_epoch(progress.epoch)
        return progress
    checkpoint.set_rng_state(rank_state["rng"])
    loader.set_epoch(progress.epoch)
    if rank_state["loader"] is not None:  # None: saved at an epoch's end
        loader.load_state_dict(rank_state["loader"])
    return progress


def reseed(seed: int, rank: int, step: int) -> None:
    """Python, NumPy and torch RNG streams of this rank drawn from (seed, rank, step): distinct per rank and per
    resume point, and the same on every rerun."""
    words = np.random.SeedSequence([seed, rank, step]).generate_state(4)
    random.seed(int(words[0]))
    np.random.seed(words[1])
    torch.manual_seed(int(words[2]) << 32 | int(words[3]))


def validate(engine, validation: tuple, progress: Progress, monitor: Monitor) -> bool:
    """Run the validation pass, log it, and say whether its primary metric is the best so far (higher is better)."""
    loader, new_evaluator = validation
    evaluator = new_evaluator()
    metrics = evaluate(engine, loader, evaluator)
    value = metrics[evaluator.primary]
    improved = progress.best_metric is None or value > progress.best_metric
    if improved:
        progress.best_metric, progress.best_step = value, progress.step
    monitor.validation(progress.step, progress.epoch, metrics, evaluator.primary, progress.best_metric)
    return improved


@contextmanager
def random_streams_kept():
    """Python, NumPy and torch random streams left as they were on entry, whatever the block draws: a probe (its
    loaders, its model pass) must not move the numbers the training draws next (masks, drop path)."""
    state = checkpoint.rng_state()
    try:
        yield
    finally:
        checkpoint.set_rng_state(state)


def run_probe(engine, probe: Probe, progress: Progress, monitor: Monitor) -> None:
    """Probe the frozen module (every rank), keep the result in `progress.probe_history`, which every checkpoint
    saves so that a resumed run keeps it, and log it. The random streams are restored after it: the run's losses
    are those of the same run without probes."""
    with random_streams_kept():
        metrics = probe(engine.module)
    progress.probe_history.append({"step": progress.step, "epoch": progress.epoch, **metrics})
    monitor.probe(progress.step, progress.epoch, metrics)


def train(recipe: Recipe, parts: TrainingParts, local_rank: int | None = None) -> Path:
    """Run (or resume) training as configured; returns the output folder. Raises `Preempted` after the checkpoint
    of the step during which any rank received SIGTERM or SIGUSR1 (`mfvideo.common.preemption`)."""
    preemption = PreemptionWatch().install()  # first: a signal during start-up stops after the first step
    try:
        return _train(recipe, parts, local_rank, preemption)
    finally:
        preemption.restore()


def _train(recipe: Recipe, parts: TrainingParts, local_rank: Optional[int], preemption: PreemptionWatch) -> Path:
    info = init_distributed(local_rank)
    setup_logging(rank=info.rank, world_size=info.world_size)
    with run_folder_lock(Path(recipe.train.output_dir), info):
        return _train_owning_the_folder(recipe, parts, info, preemption)


class RunFolderBusy(RuntimeError):
    """Another job holds the run folder; the message names its host, pid and start time."""


@contextmanager
def run_folder_lock(output_dir: Path, info: DistInfo, lock_file: str = LOCK_FILE) -> Iterator[None]:
    """One job per folder for the whole run: rank 0 holds `<output_dir>/<lock_file>` (a kernel lock, released when
    the job dies, even by SIGKILL) and every rank learns rank 0's verdict, so all stop with `RunFolderBusy` naming
    the holder before anything is written, or all go on."""
    with contextlib.ExitStack() as held:
        verdict: list = [None]
        if info.is_main:
            try:
                held.enter_context(hold_lock(output_dir / lock_file, f"folder {output_dir}"))
            except LockHeld as err:
                verdict = [str(err)]
        dist.broadcast_object_list(verdict, src=0)
        if verdict[0] is not None:
            raise RunFolderBusy(verdict[0])
        yield


def _train_owning_the_folder(recipe: Recipe, parts: TrainingParts, info: DistInfo, preemption: PreemptionWatch) -> Path:
    split = derive_batch_split(recipe.train, info.world_size)
    output_dir = Path(recipe.train.output_dir)
    ckpt_dir = output_dir / "checkpoints"
    torch.manual_seed(recipe.train.seed)  # identical initial weights on every rank
    model = parts.model()  # loads model.init: weights that do not fit stop the run before anything is written
    if info.is_main:
        log.info("resolved recipe:\n%s", recipe_to_yaml(recipe))
        save_recipe(recipe, output_dir)
        log.info(
            "global batch %d = micro-batch %d × accumulation %d × world size %d",
            split.global_batch_size,
            split.micro_batch_size,
            split.accumulation_steps,
            split.world_size,
        )
    loader = parts.loader(split.micro_batch_size, info)
    steps_per_epoch = len(loader) // split.accumulation_steps
    if steps_per_epoch == 0:
        raise ValueError(
            f"an epoch has {len(loader)} micro-batches per rank, fewer than the "
            f"{split.accumulation_steps} accumulation steps of one optimizer step: "
            f"train.global_batch_size={recipe.train.global_batch_size} is too large for {recipe.data.train}"
        )
    total_steps = recipe.train.max_steps or recipe.optim.epochs * steps_per_epoch
    saved_world = saved_world_size(ckpt_dir)
    world_changed = saved_world is not None and saved_world != info.world_size
    if world_changed and info.is_main:
        log.info(
            "the latest checkpoint in %s was written by %d processes, %d run now: resuming from its universal form",
            ckpt_dir,
            saved_world,
            info.world_size,
        )
    engine, optimizer, lr_scales = build_engine(recipe, model, split, load_universal=world_changed)
    progress = resume(engine, ckpt_dir, loader, recipe.train.seed, info.rank, world_changed)
    validation = parts.validation(split.micro_batch_size, info)
    with random_streams_kept():
        probe = parts.probe(split.micro_batch_size, info)
    schedule = schedule_for(recipe.optim, steps_per_epoch, recipe.optim.epochs * steps_per_epoch)
    step = Stepper(
        engine, optimizer, lr_scales, schedule, split, recipe.train.max_nonfinite_steps, ckpt_dir, preemption
    )

    step.sums.load_state_dict(progress.log_totals)

    def save(best: bool) -> None:
        mid_epoch = progress.batches_into_epoch > 0
        progress.log_totals = step.sums.state_dict()
        checkpoint.save(
            engine,
            ckpt_dir,
            progress.step,
            client_state={"progress": asdict(progress)},
            rank_state={"rng": checkpoint.rng_state(), "loader": loader.state_dict() if mid_epoch else None},
            keep_last=recipe.train.keep_last,
            layout=data_layout(recipe, info.world_size),
            best=best,
        )

    monitor = Monitor(output_dir, info.is_main, total_steps, recipe.train.log_every)
    batches = None  # made lazily, so no worker starts for an epoch that will not run
    epoch_batches = steps_per_epoch * split.accumulation_steps
    try:
        if probe is not None and progress.step == 0:  # the value at initialisation, which later probes are read against
            run_probe(engine, probe, progress, monitor)
        while progress.step < total_steps:
            if batches is None:
                batches = iter(loader)
            record, data_wait = step(batches, progress)
            progress.step += 1
            if monitor.is_log_step(progress.step):
                record.update(step.sums.summarise(getattr(engine.module, "log_values", None)))
            monitor.step(record, clips=split.global_batch_size, data_wait=data_wait)
            epoch_done = progress.batches_into_epoch >= epoch_batches
            if epoch_done:  # the rest of the epoch's batches (< one step) are dropped
                progress.epoch += 1
                progress.batches_into_epoch = 0
                loader.set_epoch(progress.epoch)
                batches = None
            best = (
                validation is not None
                and ((epoch_done and progress.epoch % recipe.train.eval_every == 0) or progress.step == total_steps)
                and validate(engine, validation, progress, monitor)
            )
            if probe is not None and (
                (epoch_done and progress.epoch % recipe.train.probe_every == 0) or progress.step == total_steps
            ):
                run_probe(engine, probe, progress, monitor)
            last = progress.step == total_steps
            if progress.step % recipe.train.checkpoint_every == 0 or epoch_done or last or step.stop_requested:
                save(best)
            if step.stop_requested and not last:
                log.warning(
                    "preemption (%s): stopped after step %d with its checkpoint; exit code %d asks for a "
                    "requeue, and the next run resumes from here",
                    f"{preemption.name} received here" if preemption.received else "signal on another rank",
                    progress.step,
                    REQUEUE_EXIT_CODE,
                )
                raise Preempted(
                    f"preempted after step {progress.step} of {total_steps}; checkpoint "
                    f"{ckpt_dir / checkpoint.tag_for(progress.step)} written"
                )
    finally:
        monitor.close()

    if info.is_main:
        export_weights(ckpt_dir, output_dir / "model.pt", recipe, parts.record)
        best_tag = checkpoint.best_tag(ckpt_dir)
        if best_tag is not None:
            export_weights(ckpt_dir, output_dir / "model_best.pt", recipe, parts.record, tag=best_tag)
        log.info("loss curve: %s", plot_loss(output_dir, output_dir / "loss.png"))
    return output_dir


def export_weights(
    ckpt_dir: Path, path: Path, recipe: Recipe, record: Mapping[str, Any], tag: Optional[str] = None
) -> None:
    """The fp32 master weights of a checkpoint (default: the latest), consolidated over ZeRO partitions, for
    `model.init`, with the run's record under "meta" (the resolved recipe, `record`, and the checkpoint's step). The
    weights are read from the optimizer's fp32 copy, not the module: under bf16 the module holds rounded weights."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = tag or checkpoint.latest_tag(ckpt_dir)
    with refusing_pickled_code():
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    meta = {"recipe": recipe_to_yaml(recipe), **record, "step": checkpoint.step_of(tag)}
    torch.save({"model": {name: tensor.float() for name, tensor in state.items()}, "meta": meta}, path)
    log.info("weights exported to %s", path)
