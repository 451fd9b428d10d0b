"""Exact search as the reference, recall@k against it, and the search-parameter tuning every
store applies at build time: the smallest efSearch/nprobe whose recall@10 reaches the target, as
autofaiss does."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def tune_parameter(recall_with: Callable[[int], float], limit: int, recall_target: float) -> tuple[int, float]:
    """The smallest value in 1..limit (found by doubling, then bisection to within 1/8) for which
    `recall_with(value)` reaches `recall_target`; (limit, its recall) when none does."""
    low, value, recall = 0, 1, recall_with(1)
    while recall < recall_target and value < limit:  # doubling finds a bracket...
        low, value = value, min(2 * value, limit)
        recall = recall_with(value)
    if recall < recall_target:
        return value, recall
    while value - low > max(1, value // 8):  # ...then bisection narrows it (to within 1/8)
        middle = (low + value) // 2
        middle_recall = recall_with(middle)
        if middle_recall >= recall_target:
            value, recall = middle, middle_recall
        else:
            low = middle
    return value, recall


def query_sample(vectors: np.ndarray, queries: int | np.ndarray, seed: int = 0) -> np.ndarray:
    """`queries` itself, or that many indexed vectors drawn as queries (each then finds itself,
    which flatters recall by up to 1/k: pass real held-out queries where there are some)."""
    if isinstance(queries, np.ndarray):
        return np.ascontiguousarray(queries, dtype=np.float32)
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(vectors[rng.choice(len(vectors), min(queries, len(vectors)), replace=False)],
                                dtype=np.float32)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 4096
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k with NumPy (the reference every index is checked against)."""
    k = min(k, len(vectors))
    scores_out = np.empty((len(queries), k), dtype=np.float32)
    ids_out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        scores = queries[start:start + chunk] @ vectors.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        ids_out[start:start + chunk] = np.take_along_axis(top, order, axis=1)
        scores_out[start:start + chunk] = np.take_along_axis(top_scores, order, axis=1)
    return scores_out, ids_out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true top-k ids that the index returned in its top-k (order ignored)."""
    hits = sum(len(set(f[f >= 0]) & set(t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size if truth.size else 1.0
