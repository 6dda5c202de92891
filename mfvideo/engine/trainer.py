"""The pretraining loop on a DeepSpeed engine: ZeRO 1/2/3, accumulation, clipping, schedule, exact resume."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from mfvideo.config import Recipe, derive_batch_split, recipe_to_yaml, save_recipe
from mfvideo.engine import checkpoint
from mfvideo.engine.distributed import DistInfo, init_distributed
from mfvideo.engine.monitor import Monitor, plot_loss
from mfvideo.engine.optim import apply_lr, param_groups, schedule_for
from mfvideo.log import setup_logging

log = logging.getLogger("mfvideo.train")

ModelFactory = Callable[[Recipe], torch.nn.Module]
LoaderFactory = Callable[[Recipe, int, DistInfo], object]


class NonFiniteLossError(RuntimeError):
    """Raised when too many losses in a row were NaN/inf; the last good checkpoint is left in place."""


@dataclass
class Progress:
    """What a checkpoint must restore besides weights, optimizer and per-rank state."""

    step: int = 0                # optimizer steps done
    epoch: int = 0
    batches_into_epoch: int = 0  # micro-batches this rank consumed in `epoch`


def default_model(recipe: Recipe) -> torch.nn.Module:
    from mfvideo.models import build_model

    return build_model(recipe.model, recipe.data.num_frames, recipe.data.crop_size)  # loads model.init


def default_loader(recipe: Recipe, micro_batch_size: int, info: DistInfo):
    from mfvideo.data.pipeline import build_train_loader

    return build_train_loader(recipe.data, recipe.mask, micro_batch_size, info.rank, info.world_size,
                              recipe.train.seed)


def uses_bf16(recipe: Recipe) -> bool:
    return recipe.train.precision == "bf16" or (recipe.train.precision == "auto" and torch.cuda.is_available())


def deepspeed_config(recipe: Recipe, micro_batch_size: int, accumulation: int) -> dict:
    return {
        "train_batch_size": recipe.train.global_batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": recipe.optim.clip_grad,
        "zero_optimization": {"stage": recipe.train.zero_stage},
        "bf16": {"enabled": uses_bf16(recipe)},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def _batch_to(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The clip stays float32: the HOG target is computed from it exactly as fed; the model casts its own input."""
    return batch["video"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)


def _global_mean_and_finite(loss: torch.Tensor, world_size: int) -> tuple[float, bool]:
    """One all-reduce per micro-batch: every rank takes the same skip decision, so collectives stay matched.

    The tensor stays on the loss's device (NCCL reduces only CUDA tensors); reading it back is the one host sync
    the decision needs before backward."""
    value = loss.detach().float()
    finite = torch.isfinite(value)
    stats = torch.stack([torch.where(finite, value, torch.zeros_like(value)), (~finite).float()])
    dist.all_reduce(stats)
    total, nonfinite = stats.tolist()
    return total / world_size, nonfinite == 0


def train(recipe: Recipe, local_rank: int | None = None, model_factory: ModelFactory = default_model,
          loader_factory: LoaderFactory = default_loader) -> Path:
    """Run (or resume) pretraining as configured; returns the output folder."""
    info = init_distributed(local_rank)
    setup_logging(rank=info.rank, world_size=info.world_size)
    split = derive_batch_split(recipe.train, info.world_size)
    output_dir = Path(recipe.train.output_dir)
    ckpt_dir = output_dir / "checkpoints"
    if info.is_main:
        log.info("resolved recipe:\n%s", recipe_to_yaml(recipe))
        save_recipe(recipe, output_dir)
        log.info("global batch %d = micro-batch %d × accumulation %d × world size %d", split.global_batch_size,
                 split.micro_batch_size, split.accumulation_steps, split.world_size)

    torch.manual_seed(recipe.train.seed)  # identical initial weights on every rank
    model = model_factory(recipe)
    loader = loader_factory(recipe, split.micro_batch_size, info)
    steps_per_epoch = len(loader) // split.accumulation_steps
    if steps_per_epoch == 0:
        raise ValueError(f"an epoch has {len(loader)} micro-batches per rank, fewer than the "
                         f"{split.accumulation_steps} accumulation steps of one optimizer step: "
                         f"train.global_batch_size={recipe.train.global_batch_size} is too large for {recipe.data.train}")
    total_steps = recipe.train.max_steps or recipe.optim.epochs * steps_per_epoch
    schedule = schedule_for(recipe.optim, steps_per_epoch, recipe.optim.epochs * steps_per_epoch)

    import deepspeed

    groups = param_groups(model, recipe.optim)
    lr_scales = [group.pop("lr_scale") for group in groups]
    optimizer = torch.optim.AdamW(groups, lr=recipe.optim.lr, betas=tuple(recipe.optim.betas), eps=recipe.optim.eps)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, dist_init_required=False,
        config=deepspeed_config(recipe, split.micro_batch_size, split.accumulation_steps))

    progress = Progress()
    resumed = checkpoint.load(engine, ckpt_dir)
    if resumed is None:
        torch.manual_seed(recipe.train.seed + 1000 * info.rank)  # drop path differs across ranks
    else:
        client_state, rank_state = resumed
        progress = Progress(**client_state["progress"])
        checkpoint.set_rng_state(rank_state["rng"])
    loader.set_epoch(progress.epoch)
    if resumed is not None and rank_state["loader"] is not None:  # None: saved at an epoch's end
        loader.load_state_dict(rank_state["loader"])

    def save() -> None:
        mid_epoch = progress.batches_into_epoch > 0
        checkpoint.save(engine, ckpt_dir, progress.step, client_state={"progress": asdict(progress)},
                        rank_state={"rng": checkpoint.rng_state(), "loader": loader.state_dict() if mid_epoch else None},
                        keep_last=recipe.train.keep_last)

    monitor = Monitor(output_dir, info.is_main, total_steps, recipe.train.log_every)
    batches = None  # made lazily, so no worker starts for an epoch that will not run
    nonfinite_in_a_row = 0
    epoch_batches = steps_per_epoch * split.accumulation_steps
    try:
        while progress.step < total_steps:
            if batches is None:
                batches = iter(loader)
            losses, data_wait, skipped = [], 0.0, 0
            for micro in range(split.accumulation_steps):
                start = time.perf_counter()
                batch = next(batches)
                data_wait += time.perf_counter() - start
                progress.batches_into_epoch += 1
                video, mask = _batch_to(batch, info.device)
                loss = engine(video, mask)["loss"]
                mean_loss, finite = _global_mean_and_finite(loss, info.world_size)
                if finite:
                    losses.append(mean_loss)
                    nonfinite_in_a_row = 0
                else:
                    skipped += 1
                    nonfinite_in_a_row += 1
                    log.warning("non-finite loss at step %d (keys %s): skipping its gradient",
                                progress.step + 1, batch.get("key"))
                    if nonfinite_in_a_row >= recipe.train.max_nonfinite_steps:
                        raise NonFiniteLossError(
                            f"{nonfinite_in_a_row} non-finite losses in a row (train.max_nonfinite_steps="
                            f"{recipe.train.max_nonfinite_steps}); stopping. The last good checkpoint is "
                            f"{checkpoint.latest_tag(ckpt_dir) or 'none yet'} in {ckpt_dir}")
                    # A zero-gradient stand-in keeps every rank's backward (and ZeRO's collectives) in step.
                    loss = engine(torch.zeros_like(video), mask)["loss"] * 0.0
                engine.backward(loss)
                if micro == split.accumulation_steps - 1:
                    # A step whose every micro-batch was skipped moves no weight: learning rate 0.
                    lr = schedule(progress.step)
                    apply_lr(optimizer, lr_scales, lr if skipped < split.accumulation_steps else 0.0)
                engine.step()
            progress.step += 1
            grad_norm = engine.get_global_grad_norm()
            monitor.step({"step": progress.step, "epoch": progress.epoch,
                          "loss": sum(losses) / len(losses) if losses else math.nan, "lr": lr,
                          "grad_norm": float(grad_norm) if grad_norm is not None else None,
                          "skipped_micro_batches": skipped},
                         clips=split.global_batch_size, data_wait=data_wait)
            epoch_done = progress.batches_into_epoch >= epoch_batches
            if epoch_done:  # the rest of the epoch's batches (< one step) are dropped
                progress.epoch += 1
                progress.batches_into_epoch = 0
                loader.set_epoch(progress.epoch)
                batches = None
            if progress.step % recipe.train.checkpoint_every == 0 or epoch_done or progress.step == total_steps:
                save()
    finally:
        monitor.close()

    if info.is_main:
        export_weights(ckpt_dir, output_dir / "model.pt", recipe)
        log.info("loss curve: %s", plot_loss(output_dir, output_dir / "loss.png"))
    return output_dir


def export_weights(ckpt_dir: Path, path: Path, recipe: Recipe) -> None:
    """The fp32 master weights of the latest checkpoint, consolidated over ZeRO partitions, for `model.init`.

    Read from the optimizer's fp32 copy, not the module: under bf16 the module holds rounded weights."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=checkpoint.latest_tag(ckpt_dir))
    torch.save({"model": {name: tensor.float() for name, tensor in state.items()}, "recipe": recipe_to_yaml(recipe)},
               path)
    log.info("weights exported to %s", path)
