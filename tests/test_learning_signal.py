"""The explained-variance signal of MaskFeat pretraining: the masked targets' variance that the predictions explain,
from additive sums that the engine adds up over micro-batches, steps and ranks (`mfvideo.engine.window_sums`)."""

from __future__ import annotations

import pytest
import torch

from mfvideo.engine.window_sums import WindowSums
from mfvideo.models.maskfeat import MaskFeat, explained_variance, masked_sums


def masked_batch(seed: int, tokens: int = 24, features: int = 6):
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(2, tokens, features, generator=generator)
    weight = (torch.rand(2, tokens, generator=generator) < 0.4).float()
    return target, weight


def summarise(window: WindowSums, *batches) -> dict:
    for pred, target, weight in batches:
        window.add(masked_sums(pred, target, weight), torch.tensor(True))
    return window.summarise(MaskFeat.log_values)


def test_the_mean_predictor_explains_nothing_and_a_perfect_one_everything():
    target, weight = masked_batch(0)
    mean = target[weight.bool()].mean(dim=0)
    assert summarise(WindowSums(), (mean.expand_as(target), target, weight))["explained_variance"] == pytest.approx(
        0.0, abs=1e-6
    )
    assert summarise(WindowSums(), (target.clone(), target, weight))["explained_variance"] == pytest.approx(1.0)


def test_only_masked_tokens_count():
    target, weight = masked_batch(1)
    pred = torch.where(weight.bool().unsqueeze(-1), target, torch.full_like(target, 100.0))  # wrong where unmasked
    assert summarise(WindowSums(), (pred, target, weight))["explained_variance"] == pytest.approx(1.0)


def test_the_value_is_one_minus_mse_over_the_variance_around_the_running_mean():
    """Two log windows: the second is scored against the mean of both windows' targets, as one pass would."""
    first, second = masked_batch(2), masked_batch(3)
    sums = WindowSums()
    summarise(sums, (torch.zeros_like(first[0]), *first))
    pred = 0.5 * second[0]
    got = summarise(sums, (pred, *second))["explained_variance"]

    targets = [first[0][first[1].bool()], second[0][second[1].bool()]]
    running_mean = torch.cat(targets).mean(dim=0)
    masked_target, masked_pred = targets[1], pred[second[1].bool()]
    expected = 1 - (masked_pred - masked_target).pow(2).sum() / (masked_target - running_mean).pow(2).sum()
    assert got == pytest.approx(float(expected), rel=1e-5)  # float32 sums against a float32 reference


def test_micro_batches_add_up_and_a_skipped_one_counts_nothing():
    a, b = masked_batch(4), masked_batch(5)
    together = WindowSums()
    together.add(masked_sums(a[0] * 0.9, *a), torch.tensor(True))
    together.add(masked_sums(b[0] * 0.7, *b), torch.tensor(True))
    together.add(masked_sums(torch.full_like(a[0], float("nan")), *a), torch.tensor(False))  # a skipped micro-batch
    joined = WindowSums()
    target, weight = torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])
    joined.add(masked_sums(torch.cat([a[0] * 0.9, b[0] * 0.7]), target, weight), torch.tensor(True))
    assert together.summarise(MaskFeat.log_values)["explained_variance"] == pytest.approx(
        joined.summarise(MaskFeat.log_values)["explained_variance"], rel=1e-6
    )


def test_running_totals_survive_a_checkpoint_round_trip():
    sums = WindowSums()
    summarise(sums, (torch.zeros(2, 24, 6), *masked_batch(6)))
    restored = WindowSums()
    restored.load_state_dict(sums.state_dict())
    later = masked_batch(7)
    assert summarise(restored, (later[0] * 0.3, *later)) == summarise(sums, (later[0] * 0.3, *later))


def test_nothing_masked_logs_nothing():
    target, _ = masked_batch(8)
    assert explained_variance(masked_sums(target, target, torch.zeros(2, 24)), {}) is None
