"""Linear probe of frozen features: a multinomial logistic regression fitted on cached train features.

The features are standardised with the train split's per-channel mean and standard deviation (a parameter-free
BatchNorm, as in MAE's linear probe), then a weight matrix and bias are fitted by full-batch L-BFGS (strong Wolfe line
search) to the mean cross-entropy plus an L2 penalty on the weights, `L2_PENALTY / 2 · ‖W‖²`, for at most
`MAX_ITERATIONS` iterations. It is a convex problem started from zero weights, so nothing is drawn at random and the
fit needs no seed: the same features give the same classifier, and since the L2 penalty makes the optimum unique,
features that differ by rounding (another batch split over ranks) give the same predictions. Everything runs in
float64, so that rounding stays far below the differences that decide a prediction.

The cost is a few hundred passes over N×D features (N videos, D channels): seconds on a GPU for Kinetics-400
(240k × 768), minutes on a CPU. The penalty and the iteration count are fixed defaults rather than swept on a
held-out split, as CLIP's probe does: the figures are for comparing checkpoints under one protocol, not the best a
linear classifier could reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mfvideo.evaluation.probe import MIN_STD

# The L2 penalty on the weights of standardised features, per unit of mean cross-entropy (sklearn's C = 1 / (N·λ)):
# weak enough that a separable split is fitted, strong enough to keep the optimum unique and finite.
L2_PENALTY = 1e-4
MAX_ITERATIONS = 300
# L-BFGS curvature pairs kept (torch's default is 100; 20 is ample for a smooth convex loss and keeps memory at
# 40 × D × C values).
HISTORY_SIZE = 20


@dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: `scores(features)` standardises with the train statistics and returns class probabilities."""

    mean: torch.Tensor  # float64 D, the train features' mean
    std: torch.Tensor  # float64 D, their standard deviation (1 where below MIN_STD)
    weight: torch.Tensor  # float64 C×D
    bias: torch.Tensor  # float64 C
    train_loss: float  # the penalised objective at the end of the fit
    iterations: int  # L-BFGS iterations run (at most MAX_ITERATIONS)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        standardised = (features.to(self.weight.device, torch.float64) - self.mean) / self.std
        return standardised @ self.weight.T + self.bias

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Q×C softmax probabilities (float64, on the probe's device) of Q×D `features`."""
        return torch.softmax(self.logits(features), dim=1)


def fit_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    l2_penalty: float = L2_PENALTY,
    max_iterations: int = MAX_ITERATIONS,
    device: torch.device | None = None,
) -> LinearProbe:
    """The logistic regression of `labels` (int64 N, in [0, num_classes)) on `features` (N×D) described in the module
    docstring, fitted on `device` (default: the features' own)."""
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features {tuple(features.shape)} and labels {tuple(labels.shape)}: expected N×D and N")
    if features.shape[0] == 0:
        raise ValueError("no train features to fit a linear probe on")
    if num_classes < 2:
        raise ValueError(f"a linear probe needs at least 2 classes, got {num_classes}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels in [{int(labels.min())}, {int(labels.max())}], outside 0..{num_classes - 1}")
    if l2_penalty <= 0 or max_iterations < 1:
        raise ValueError(
            f"l2_penalty must be positive and max_iterations at least 1, got {l2_penalty}, {max_iterations}"
        )
    device = features.device if device is None else device
    x = features.to(device, torch.float64)
    y = labels.to(device)
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > MIN_STD, std, torch.ones_like(std))  # a constant channel is only centred
    x = (x - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=max_iterations, history_size=HISTORY_SIZE, line_search_fn="strong_wolfe"
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2_penalty * weight.square().sum()
        loss.backward()
        return loss

    # One step runs up to max_iter iterations, stopping early once the gradient or the change in loss vanishes.
    optimizer.step(objective)
    with torch.no_grad():
        final = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2_penalty * weight.square().sum()
    # L-BFGS keeps its counters in the state of its first parameter
    return LinearProbe(mean, std, weight.detach(), bias.detach(), float(final), int(optimizer.state[weight]["n_iter"]))
