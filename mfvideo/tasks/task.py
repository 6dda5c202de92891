"""What a task is: one slice that holds everything mfvideo must know about it.

- `model(model_cfg, input_size)`: its model, which reads the batch keys it declares (`reads`) and returns
  `{"loss", ...}` (the engine calls nothing else);
- `train_batching(recipe)` and `eval_batching(recipe, views)`: its clip makers, collate and device steps, so that
  the loader (`mfvideo.data.loader`) never asks which task runs;
- `evaluator(recipe, views)`: a factory of fresh evaluators, one per pass (`mfvideo.engine.evaluate`);
- `rules(recipe)`: the recipe values it cannot work with, each naming its key (`mfvideo.tasks.rules` runs them with
  the rules every task shares).

A task without evaluation (pretraining) has `eval_batching` and `evaluator` None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from torch import nn

from mfvideo.config.schema import ModelConfig, Recipe
from mfvideo.data.loader import Batching
from mfvideo.tasks.common import Views

EvaluatorFactory = Callable[[], object]


@dataclass(frozen=True)
class Task:
    name: str
    model: Callable[[ModelConfig, Sequence[int]], nn.Module]
    train_batching: Callable[[Recipe], Batching]
    rules: Callable[[Recipe], list[str]]
    eval_batching: Optional[Callable[[Recipe, Views], Batching]] = None
    evaluator: Optional[Callable[[Recipe, Views], EvaluatorFactory]] = None
