"""Spreading vectors for compression (Sablayrolles et al., ICLR 2019): a "catalyser" network that
maps embeddings onto a lower-dimensional sphere so that a quantiser placed after it (PQ, scalar
quantisation) loses less of the ranking.

The catalyser f is trained on a sample of the vectors to be indexed with two terms:

    L = L_rank + lambda * L_KoLeo
    L_rank  = mean over triplets of max(0, |f(x) - f(x+)|^2 - |f(x) - f(x-)|^2 + margin)
    L_KoLeo = -1/n sum_i log(min_{j != i} |f(x_i) - f(x_j)|)      (over each mini-batch)

x+ is one of x's `positives` nearest neighbours in the input space and x- one of the neighbours
ranked after them up to `negatives` (with several sets of vectors, an index's images and its
captions, each anchor gets a triplet from each set's ranking of it: a cross-modal index must keep
how the images rank for a text, which a text's neighbours among texts say nothing about). The
rank term keeps neighbourhoods, the Kozachenko-Leonenko
term (the differential-entropy estimator up to constants) pushes the outputs apart so that they
fill the sphere evenly, which is the distribution a fixed-rate quantiser wastes least on.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def neighbour_ranks(anchors: torch.Tensor, count: int, database: torch.Tensor | None = None, own_rows: int = 0,
                    chunk: int = 2048) -> torch.Tensor:
    """(A, count) indices into `database` (default: the anchors themselves) of each anchor's nearest
    rows by inner product (unit rows), nearest first. Anchor i < `own_rows` (every anchor, without
    a database) is database row i and never its own neighbour."""
    if database is None:
        database, own_rows = anchors, len(anchors)
    found = [torch.zeros(0, count, dtype=torch.long)]
    for start in range(0, len(anchors), chunk):
        scores = anchors[start:start + chunk] @ database.t()
        rows = torch.arange(start, max(start, min(start + chunk, len(anchors), own_rows)))
        scores[rows - start, rows] = -float("inf")
        found.append(scores.topk(count, dim=1).indices)
    return torch.cat(found)


def train_catalyser(vector_sets: Sequence[np.ndarray], config: CatalyserConfig, progress: bool = True
                    ) -> TrainedCatalyser:
    """Fit a catalyser on unit vectors (float32, N x D): one set, as in the paper, or several
    (an index's images and captions). Every sampled vector is an anchor, and for each set its
    triplets come from that set's ranking of it, so that every ranking a search makes (a text
    against the images, an image against the captions...) is kept. `config.sample` vectors are
    drawn in all, in proportion to the sets' sizes."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    sets = _sampled_sets(vector_sets, config.sample, config.negatives + 1, generator)
    if min(len(s) for s in sets) <= config.negatives:
        raise ValueError(f"a catalyser needs more than {config.negatives} training vectors in each set, "
                         f"got {[len(s) for s in sets]}")
    anchors = torch.cat(sets)
    starts = np.cumsum([0] + [len(s) for s in sets])
    # per set, each anchor's ranking of that set (an anchor from the set skips itself)
    tables = [torch.cat([neighbour_ranks(anchors[:start], config.negatives, database=members),
                         neighbour_ranks(anchors[start:], config.negatives, database=members, own_rows=len(members))])
              for members, start in zip(sets, starts[:-1], strict=True)]
    model = Catalyser(anchors.shape[1], config.out_dim, config.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    trained = TrainedCatalyser(model)
    bar = tqdm(range(config.epochs), desc=f"catalyser -> {config.out_dim}-d", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        totals = {"rank": 0.0, "koleo": 0.0}
        batches = [b for b in torch.randperm(len(anchors), generator=generator).split(config.batch_size) if len(b) > 1]
        for batch in batches:
            rows = [anchors[batch]]
            for members, table in zip(sets, tables, strict=True):
                near = torch.randint(config.positives, (len(batch),), generator=generator)
                far = torch.randint(config.positives, config.negatives, (len(batch),), generator=generator)
                rows += [members[table[batch, near]], members[table[batch, far]]]
            out = model(torch.cat(rows)).split(len(batch))
            rank = sum(triplet_rank_loss(out[0], out[1 + 2 * i], out[2 + 2 * i], config.margin)
                       for i in range(len(sets))) / len(sets)
            koleo = koleo_loss(out[0])
            optimizer.zero_grad()
            (rank + config.koleo_weight * koleo).backward()
            optimizer.step()
            totals["rank"] += float(rank.detach()) / len(batches)
            totals["koleo"] += float(koleo.detach()) / len(batches)
        trained.history.append({"epoch": epoch + 1, **totals})
        bar.set_postfix(rank=f"{totals['rank']:.4f}", koleo=f"{totals['koleo']:.3f}")
    model.eval()
    return trained


def _sampled_sets(vector_sets: Sequence[np.ndarray], total: int, least: int, generator: torch.Generator
                  ) -> list[torch.Tensor]:
    """About `total` rows drawn in proportion to the sets' sizes, but at least `least` of each
    (all of a smaller set): a set of 40 captions beside 50,000 images still gets its triplets."""
    if isinstance(vector_sets, np.ndarray):
        vector_sets = [vector_sets]
    sizes = [len(s) for s in vector_sets]
    sets = []
    for vectors, size in zip(vector_sets, sizes, strict=True):
        data = torch.from_numpy(np.ascontiguousarray(vectors, np.float32))
        keep = max(least, round(total * size / max(sum(sizes), 1)))
        sets.append(data[torch.randperm(size, generator=generator)[:keep]] if size > keep else data)
    return sets
