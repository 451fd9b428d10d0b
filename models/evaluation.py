"""Recall@K evaluation for cross-modal retrieval: the one implementation training, tests and
benchmarks share.

Protocol (Karpathy splits): image -> text ranks an image by the best-placed of its own captions;
text -> image ranks a caption by the place of its image. Ties count against the query (a
negative scoring equal to the positive is ranked above it), so a collapsed model scores chance.
Captions may number any count per image: ownership comes from `caption_to_image`, never `5 * i`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from models.data import DecodedSplit
from models.encoders.base import Encoder, encode_in_batches

KS = (1, 5, 10)


@dataclass
class RetrievalMetrics:
    i2t_r1: float
    i2t_r5: float
    i2t_r10: float
    i2t_medr: float
    i2t_meanr: float
    t2i_r1: float
    t2i_r5: float
    t2i_r10: float
    t2i_medr: float
    t2i_meanr: float
    rsum: float
    n_images: int
    n_captions: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def table(self) -> str:
        header = f"{'direction':<14}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'medr':>7}{'meanr':>8}"
        rows = [header]
        for label, prefix in (("image->text", "i2t"), ("text->image", "t2i")):
            values = [getattr(self, f"{prefix}_{k}") for k in ("r1", "r5", "r10", "medr", "meanr")]
            rows.append(f"{label:<14}" + "".join(f"{v:>7.1f}" for v in values[:4]) + f"{values[4]:>8.1f}")
        rows.append(f"rsum {self.rsum:.1f}   ({self.n_images} images, {self.n_captions} captions)")
        return "\n".join(rows)


def retrieval_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_to_image: Sequence[int],
                    chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks (image->text per image, text->image per caption) from embeddings, chunked
    so the full similarity matrix is never held for large galleries."""
    owners = torch.as_tensor(np.asarray(caption_to_image), dtype=torch.long)
    image_emb, text_emb = image_emb.float().cpu(), text_emb.float().cpu()
    i2t = np.empty(image_emb.shape[0], dtype=np.int64)
    t2i = np.empty(text_emb.shape[0], dtype=np.int64)
    for start in range(0, image_emb.shape[0], chunk):
        scores = image_emb[start:start + chunk] @ text_emb.t()
        i2t[start:start + chunk] = _image_to_text_ranks(scores, owners, start)
    for start in range(0, text_emb.shape[0], chunk):
        scores = text_emb[start:start + chunk] @ image_emb.t()  # captions x images
        t2i[start:start + chunk] = _text_to_image_ranks(scores, owners[start:start + chunk])
    return i2t, t2i


def _image_to_text_ranks(scores: torch.Tensor, owners: torch.Tensor, first_image: int) -> np.ndarray:
    scores = _nan_loses(scores)
    rows = torch.arange(scores.shape[0]) + first_image
    own = owners.view(1, -1) == rows.view(-1, 1)
    best_own = scores.masked_fill(~own, float("-inf")).max(dim=1).values
    beaten_by = ((scores >= best_own.view(-1, 1)) & ~own).sum(dim=1)
    return (beaten_by + 1).numpy()


def _nan_loses(scores: torch.Tensor) -> torch.Tensor:
    """NaN scores (a diverged model) become -inf: a NaN positive is then ranked last, never first."""
    return torch.nan_to_num(scores, nan=float("-inf"))


def _text_to_image_ranks(scores: torch.Tensor, owners: torch.Tensor) -> np.ndarray:
    scores = _nan_loses(scores)
    positive = scores.gather(1, owners.view(-1, 1))
    beaten_by = (scores >= positive).sum(dim=1) - 1  # minus the positive itself
    return (beaten_by + 1).numpy()


def _check_owners(n_images: int, n_captions: int, caption_to_image: Sequence[int]) -> np.ndarray:
    owners = np.asarray(caption_to_image, dtype=np.int64)
    if n_images == 0 or n_captions == 0:
        raise ValueError(f"cannot evaluate {n_images} images against {n_captions} captions")
    if len(owners) != n_captions:
        raise ValueError(f"{len(owners)} caption owners for {n_captions} captions")
    if owners.min() < 0 or owners.max() >= n_images:
        raise ValueError(f"caption owners must index the {n_images} images (got {owners.min()}..{owners.max()})")
    return owners


def _captioned(i2t: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """Image->text ranks of images that own at least one caption (others have nothing to find)."""
    return i2t[np.bincount(owners, minlength=len(i2t)) > 0]


def metrics_from_ranks(i2t: np.ndarray, t2i: np.ndarray) -> RetrievalMetrics:
    def recalls(ranks: np.ndarray) -> list[float]:
        return [100.0 * float(np.mean(ranks <= k)) for k in KS]

    r_i2t, r_t2i = recalls(i2t), recalls(t2i)
    return RetrievalMetrics(*r_i2t, float(np.floor(np.median(i2t))), float(np.mean(i2t)),
                            *r_t2i, float(np.floor(np.median(t2i))), float(np.mean(t2i)),
                            sum(r_i2t) + sum(r_t2i), int(len(i2t)), int(len(t2i)))


def recall_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_to_image: Sequence[int]
                   ) -> RetrievalMetrics:
    """R@1/5/10, median and mean rank both ways, and rsum, for L2-normalised embeddings."""
    owners = _check_owners(image_emb.shape[0], text_emb.shape[0], caption_to_image)
    i2t, t2i = retrieval_ranks(image_emb, text_emb, owners)
    return metrics_from_ranks(_captioned(i2t, owners), t2i)


def metrics_from_similarity(similarity: np.ndarray | torch.Tensor, caption_to_image: Sequence[int]
                            ) -> RetrievalMetrics:
    """Metrics from a precomputed (images x captions) similarity matrix."""
    similarity = torch.as_tensor(np.asarray(similarity), dtype=torch.float32)
    owners = _check_owners(similarity.shape[0], similarity.shape[1], caption_to_image)
    owners_t = torch.as_tensor(owners)
    i2t = _image_to_text_ranks(similarity, owners_t, 0)
    t2i = _text_to_image_ranks(similarity.t().contiguous(), owners_t)
    return metrics_from_ranks(_captioned(i2t, owners), t2i)


@torch.no_grad()
def encode_pairs(encoder: Encoder, pixels: torch.Tensor, captions: Sequence[str], batch_size: int = 256,
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised embeddings of every image (uint8 tensor) and caption, in batches."""
    if not len(pixels) or not captions:
        raise ValueError(f"nothing to evaluate: {len(pixels)} images, {len(captions)} captions")
    was_training = encoder.training
    encoder.eval()
    images = encode_in_batches(encoder.encode_image, pixels, encoder.embed_dim, batch_size, "encode images", progress)
    texts = encode_in_batches(encoder.encode_text, captions, encoder.embed_dim, batch_size, "encode captions",
                              progress)
    encoder.train(was_training)
    return images, texts


def evaluate_encoder(encoder: Encoder, split: DecodedSplit, batch_size: int = 256,
                     progress: bool = False) -> RetrievalMetrics:
    """Encode a `DecodedSplit` and score it."""
    image_emb, text_emb = encode_pairs(encoder, split.pixels, split.pairs.captions, batch_size, progress)
    return recall_metrics(image_emb, text_emb, split.pairs.caption_to_image)


def mean_average_precision(distances: np.ndarray, relevant: np.ndarray) -> float:
    """MAP of ranking each query's database (a row) by ascending distance, ties in database order;
    `relevant` (queries x database) marks the right answers. A query with none scores 0."""
    order = np.argsort(distances, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1)
    cumulative = np.cumsum(hits, axis=1)
    ranks = np.arange(1, hits.shape[1] + 1)
    precision_at_hits = (cumulative / ranks) * hits
    return float(np.mean(precision_at_hits.sum(axis=1) / np.maximum(hits.sum(axis=1), 1)))


def precision_within_radius(distances: np.ndarray, relevant: np.ndarray, radius: int = 2) -> float:
    """Hash lookup: the share of right answers among the items within `radius` of each query,
    averaged over queries; a query with an empty ball scores 0."""
    inside = distances <= radius
    found = inside.sum(axis=1)
    return float(np.mean(np.where(found > 0, (inside & relevant).sum(axis=1) / np.maximum(found, 1), 0.0)))
