"""The engine against a plain PyTorch loop, on the same batches from one checkpoint.

`python tests/plain_loop_harness.py RECIPE OUT.json [key=value ...]`: the recipe's training loader (real shards)
gives every batch of `optim.epochs` epochs once; `tools/train.py`'s engine (DeepSpeed, its parameter groups and
schedule, gradient gating) trains on them, then a plain loop of about twenty lines trains a fresh copy of the same
model on the same batches: `torch.optim.AdamW` over the same weight-decay groups, the same warmup-cosine learning
rate, `loss.backward()`, `step()`. OUT.json gets both per-step losses and each model's training-set accuracy."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from mfvideo.app.run import training_parts
from mfvideo.config import load_recipe_or_exit
from mfvideo.engine.monitor import read_metrics
from mfvideo.engine.optim import apply_lr, param_groups, schedule_for
from mfvideo.engine.trainer import train
from mfvideo.tasks import build_model, train_loader


def copied(batch: dict) -> dict:
    return {key: value.clone() if torch.is_tensor(value) else value for key, value in batch.items()}


class ReplayLoader:
    """The fixed batches as the trainer's loader: one epoch holds `per_epoch` of them."""

    def __init__(self, batches: list[dict], per_epoch: int):
        self.batches, self.per_epoch, self.epoch, self.position = batches, per_epoch, 0, 0

    def __len__(self) -> int:
        return self.per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]

    def __iter__(self):
        while self.position < self.per_epoch:
            self.position += 1
            yield copied(self.batches[self.epoch * self.per_epoch + self.position - 1])


@torch.no_grad()
def training_accuracy(model: torch.nn.Module, batches: list[dict]) -> float:
    model.eval()
    hits = [(model({"video": b["video"]})["logits"].argmax(1) == b["label"]).float() for b in batches]
    return float(torch.cat(hits).mean())


def main() -> None:
    recipe = load_recipe_or_exit(sys.argv[1], sys.argv[3:])
    if recipe.train.micro_batch_size != recipe.train.global_batch_size or recipe.optim.clip_grad:
        raise SystemExit("the plain loop takes one micro-batch per step and no clipping")
    loader = train_loader(recipe, recipe.train.micro_batch_size, 0, 1)
    batches = []
    for epoch in range(recipe.optim.epochs):
        loader.set_epoch(epoch)
        batches += [copied(batch) for batch in loader]
    per_epoch = len(batches) // recipe.optim.epochs

    train(recipe, replace(training_parts(recipe), loader=lambda micro, info: ReplayLoader(batches, per_epoch)))
    engine_losses = [record["loss"] for record in read_metrics(Path(recipe.train.output_dir)).values()]
    engine_model = build_model(
        recipe.model, recipe.data.num_frames, recipe.data.crop_size
    )  # the exported weights: model.init becomes the run's own model.pt
    engine_model.load_state_dict(torch.load(Path(recipe.train.output_dir) / "model.pt", weights_only=True)["model"])

    torch.manual_seed(recipe.train.seed)  # the engine's initial weights: the same seed before the same build
    model = build_model(recipe.model, recipe.data.num_frames, recipe.data.crop_size)
    model.train()
    groups = param_groups(model, recipe.optim)
    scales = [group.pop("lr_scale") for group in groups]
    optimizer = torch.optim.AdamW(groups, lr=recipe.optim.lr, betas=tuple(recipe.optim.betas), eps=recipe.optim.eps)
    schedule = schedule_for(recipe.optim, per_epoch, len(batches))
    plain_losses = []
    for step, batch in enumerate(batches):
        apply_lr(optimizer, scales, schedule(step))
        loss = model(copied(batch))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        plain_losses.append(loss.item())

    Path(sys.argv[2]).write_text(
        json.dumps(
            {
                "engine_losses": engine_losses,
                "plain_losses": plain_losses,
                "engine_accuracy": training_accuracy(engine_model, batches),
                "plain_accuracy": training_accuracy(model, batches),
            }
        )
    )


if __name__ == "__main__":
    main()
