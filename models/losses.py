"""Ranking losses over a batch similarity matrix `scores[i, j] = s(image i, caption j)`.

The diagonal holds the matching pairs; every off-diagonal entry is a negative.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def hinge_costs(scores: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinge violations, positives masked out.

    caption_cost[i, j] = [margin - s(i, i) + s(i, j)]_+   (image i, negative caption j)
    image_cost[i, j]   = [margin - s(j, j) + s(i, j)]_+   (caption j, negative image i)
    """
    positives = scores.diag()
    caption_cost = (margin - positives.view(-1, 1) + scores).clamp(min=0)
    image_cost = (margin - positives.view(1, -1) + scores).clamp(min=0)
    negatives = ~torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    return caption_cost * negatives, image_cost * negatives


class SumOfHinges(nn.Module):
    """VSE (Kiros et al. 2014): sum of hinges over all negatives, both directions."""

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = margin

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        caption_cost, image_cost = hinge_costs(scores, self.margin)
        return caption_cost.sum() + image_cost.sum()


class MaxOfHinges(nn.Module):
    """VSE++ (Faghri et al. 2018): only the hardest negative per query, both directions."""

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = margin

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        caption_cost, image_cost = hinge_costs(scores, self.margin)
        return caption_cost.max(dim=1).values.sum() + image_cost.max(dim=0).values.sum()


class InfoNCE(nn.Module):
    """Symmetric softmax cross-entropy with a fixed temperature (CLIP's loss), for comparison."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = temperature

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        logits = scores / self.temperature
        targets = torch.arange(scores.shape[0], device=scores.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


class HardNegativeSchedule(nn.Module):
    """VSE++ trained from random weights: the sum of hinges first, then the max.

    Hardest negatives in a random embedding are noise, and training on them alone collapses
    (measured here); the VSE++ paper starts from ImageNet features. So for `warmup_epochs` the
    sum of hinges is used, then over `anneal_epochs` the weight moves linearly to the max of hinges.
    """

    def __init__(self, margin: float = 0.2, warmup_epochs: int = 0, anneal_epochs: int = 0):
        super().__init__()
        self.sum_loss, self.max_loss = SumOfHinges(margin), MaxOfHinges(margin)
        self.warmup_epochs, self.anneal_epochs = warmup_epochs, anneal_epochs

    def max_weight(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return 0.0
        if self.anneal_epochs <= 0:
            return 1.0
        return min(1.0, (epoch - self.warmup_epochs + 1) / (self.anneal_epochs + 1))

    def describe(self, epoch: int) -> str:
        """What the loss of `epoch` is, for the progress line: its scale changes as the hardest
        negative takes over (a loss jumping from 39 to 55 then is the schedule, not a failure)."""
        weight = self.max_weight(epoch)
        if weight == 0.0:
            return "sum of hinges (warm-up)"
        if weight >= 1.0:
            return "hardest negatives"
        return f"hardest negatives {weight:.0%}, sum of hinges {1 - weight:.0%}"

    def forward(self, scores: torch.Tensor, epoch: int = 10**9) -> torch.Tensor:
        weight = self.max_weight(epoch)
        if weight >= 1.0:
            return self.max_loss(scores)
        # The sum covers B - 1 negatives per query: divided by B - 1, both terms have one scale
        # (a constant factor on the whole loss changes nothing under Adam).
        sum_term = self.sum_loss(scores) / max(1, scores.shape[0] - 1)
        return weight * self.max_loss(scores) + (1 - weight) * sum_term


def build_ranking_loss(cfg: dict[str, Any]) -> nn.Module:
    """{"kind": "sum_hinge" | "max_hinge" | "infonce", "margin": 0.2, ...} -> a loss module."""
    kind = cfg.get("kind", "sum_hinge")
    if kind == "sum_hinge":
        return SumOfHinges(cfg.get("margin", 0.2))
    if kind == "max_hinge":
        return HardNegativeSchedule(cfg.get("margin", 0.2), cfg.get("warmup_epochs", 0), cfg.get("anneal_epochs", 0))
    if kind == "infonce":
        return InfoNCE(cfg.get("temperature", 0.05))
    raise ValueError(f"unknown loss {kind!r}: expected 'sum_hinge', 'max_hinge' or 'infonce'")


def ranking_loss(loss: nn.Module, scores: torch.Tensor, epoch: int) -> torch.Tensor:
    """Call a ranking loss, passing the epoch to those with a schedule."""
    return loss(scores, epoch) if isinstance(loss, HardNegativeSchedule) else loss(scores)


class InstanceLoss(nn.Module):
    """Zheng et al.'s instance loss: each training image is its own class, and its captions share
    that class. ONE classifier W scores both modalities, which is what pulls an image and its
    captions towards the same region of the space:

        L = CE(W f_image, y) + CE(W f_text, y),   y = the image's index in the training set
    """

    def __init__(self, dim: int, classes: int, dropout: float = 0.0):
        super().__init__()
        self.classifier = nn.Linear(dim, classes, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image term, text term); the loss is their sum."""
        image_term = F.cross_entropy(self.classifier(self.dropout(image_features)), labels)
        text_term = F.cross_entropy(self.classifier(self.dropout(text_features)), labels)
        return image_term, text_term
