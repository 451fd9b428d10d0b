"""Spreading vectors for compression (Sablayrolles et al., ICLR 2019): a "catalyser" network that
maps embeddings onto a lower-dimensional sphere so that a quantiser placed after it (PQ, scalar
quantisation) loses less of the ranking.

The catalyser f is trained on a sample of the vectors to be indexed with two terms:

    L = L_rank + lambda * L_KoLeo
    L_rank  = mean over triplets of max(0, |f(x) - f(x+)|^2 - |f(x) - f(x-)|^2 + margin)
    L_KoLeo = -1/n sum_i log(min_{j != i} |f(x_i) - f(x_j)|)      (over each mini-batch)

x+ is one of x's `positives` nearest neighbours in the input space and x- one of the neighbours
ranked after them up to `negatives`: the rank term keeps neighbourhoods, the Kozachenko-Leonenko
term (the differential-entropy estimator up to constants) pushes the outputs apart so that they
fill the sphere evenly, which is the distribution a fixed-rate quantiser wastes least on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm


def koleo_loss(outputs: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """-1/n sum_i log(distance from row i to its nearest other row)."""
    if len(outputs) < 2:
        raise ValueError("KoLeo needs at least two vectors")
    distances = torch.cdist(outputs, outputs)
    distances = distances + torch.diag(torch.full((len(outputs),), float("inf"), device=outputs.device))
    return -torch.log(distances.min(dim=1).values + eps).mean()


def triplet_rank_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                      margin: float = 0.0) -> torch.Tensor:
    """mean max(0, |a - p|^2 - |a - n|^2 + margin) over rows."""
    closer = (anchor - positive).pow(2).sum(dim=1)
    farther = (anchor - negative).pow(2).sum(dim=1)
    return F.relu(closer - farther + margin).mean()


class Catalyser(nn.Module):
    """in_dim -> out_dim on the unit sphere: three linear layers, batch norm and ReLU between."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512):
        super().__init__()
        if out_dim <= 0:
            raise ValueError(f"out_dim must be positive, got {out_dim}")
        self.in_dim, self.out_dim, self.hidden = in_dim, out_dim, hidden
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, out_dim))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(vectors), dim=-1)

    @torch.no_grad()
    def transform(self, vectors: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """float32 (N, in_dim) -> float32 (N, out_dim) unit rows, in eval mode."""
        self.eval()
        parts = [self(torch.from_numpy(np.ascontiguousarray(vectors[start:start + batch_size], np.float32)))
                 for start in range(0, len(vectors), batch_size)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, self.out_dim), np.float32)


@dataclass
class CatalyserConfig:
    out_dim: int = 32
    koleo_weight: float = 0.01   # lambda
    hidden: int = 512
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    margin: float = 0.0
    positives: int = 10          # x+ among the nearest `positives`
    negatives: int = 50          # x- among the ranks after them, up to this one
    sample: int = 20_000         # training vectors drawn from those given
    seed: int = 0


@dataclass
class TrainedCatalyser:
    model: Catalyser
    history: list[dict] = field(default_factory=list)


def neighbour_ranks(vectors: torch.Tensor, count: int, chunk: int = 2048) -> torch.Tensor:
    """(N, count) indices of each row's nearest other rows by inner product (unit rows), nearest first."""
    found = []
    for start in range(0, len(vectors), chunk):
        scores = vectors[start:start + chunk] @ vectors.t()
        rows = torch.arange(start, min(start + chunk, len(vectors)))
        scores[torch.arange(len(rows)), rows] = -float("inf")
        found.append(scores.topk(count, dim=1).indices)
    return torch.cat(found)


def train_catalyser(vectors: np.ndarray, config: CatalyserConfig, progress: bool = True) -> TrainedCatalyser:
    """Fit a catalyser on (a sample of) unit `vectors` (float32, N x D)."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    data = torch.from_numpy(np.ascontiguousarray(vectors, np.float32))
    if len(data) > config.sample:
        data = data[torch.randperm(len(data), generator=generator)[:config.sample]]
    if len(data) <= config.negatives:
        raise ValueError(f"a catalyser needs more than {config.negatives} training vectors, got {len(data)}")
    neighbours = neighbour_ranks(data, config.negatives)
    model = Catalyser(data.shape[1], config.out_dim, config.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    trained = TrainedCatalyser(model)
    bar = tqdm(range(config.epochs), desc=f"catalyser -> {config.out_dim}-d", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        totals = {"rank": 0.0, "koleo": 0.0}
        batches = torch.randperm(len(data), generator=generator).split(config.batch_size)
        for batch in batches:
            if len(batch) < 2:
                continue
            picks = torch.randint(config.positives, (len(batch),), generator=generator)
            positive = neighbours[batch, picks]
            picks = torch.randint(config.positives, config.negatives, (len(batch),), generator=generator)
            negative = neighbours[batch, picks]
            out = model(torch.cat([data[batch], data[positive], data[negative]]))
            anchor, near, far = out.split(len(batch))
            rank = triplet_rank_loss(anchor, near, far, config.margin)
            koleo = koleo_loss(anchor)
            optimizer.zero_grad()
            (rank + config.koleo_weight * koleo).backward()
            optimizer.step()
            totals["rank"] += float(rank.detach()) / len(batches)
            totals["koleo"] += float(koleo.detach()) / len(batches)
        trained.history.append({"epoch": epoch + 1, **totals})
        bar.set_postfix(rank=f"{totals['rank']:.4f}", koleo=f"{totals['koleo']:.3f}")
    model.eval()
    return trained
