"""Relevance: a cosine similarity turned into a number a person can read.

Raw cosines depend on the encoder (one model's matches score 0.35, another's 0.8) and bunch up: the
top 24 results of one query may all lie within 0.03. At build time the gallery's own captions
calibrate them: each caption against its image (a match) and against a random other image (no
match). A one-feature logistic regression on those pairs, the two groups weighted equally, gives

    relevance(s) = 1 / (1 + exp(-(a * s + b)))

the chance that a pair scoring s is a match rather than a random pair; 0.5 is the score where
both are equally likely. Its parameters are stored in the index manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_PAIRS = 20      # fewer captions than this: no calibration (relevance is left out)
MAX_PAIRS = 20_000  # matched pairs sampled from a large gallery


@dataclass(frozen=True)
class Calibration:
    slope: float
    intercept: float
    pairs: int
    matched_median: float
    random_median: float

    def relevance(self, scores: np.ndarray) -> np.ndarray:
        logits = np.clip(self.slope * np.asarray(scores, np.float64) + self.intercept, -40, 40)
        return 1.0 / (1.0 + np.exp(-logits))

    def as_dict(self) -> dict:
        return {"kind": "logistic", "slope": self.slope, "intercept": self.intercept, "pairs": self.pairs,
                "matched_median": self.matched_median, "random_median": self.random_median}

    @classmethod
    def from_manifest(cls, manifest: dict) -> Calibration | None:
        stored = manifest.get("calibration")
        if not stored:
            return None
        return cls(stored["slope"], stored["intercept"], stored["pairs"], stored["matched_median"],
                   stored["random_median"])


def fit_calibration(image_ids: np.ndarray, image_vectors: np.ndarray, caption_image_ids: np.ndarray,
                    caption_vectors: np.ndarray, seed: int = 0) -> Calibration | None:
    """Fit on (caption, own image) against (caption, random other image) pairs; None when the
    gallery has too few captions or too few images to tell the two apart."""
    if len(caption_vectors) < MIN_PAIRS or len(image_ids) < 2:
        return None
    rng = np.random.default_rng(seed)
    position = {int(i): p for p, i in enumerate(image_ids)}
    chosen = rng.choice(len(caption_vectors), size=min(MAX_PAIRS, len(caption_vectors)), replace=False)
    owners = np.array([position[int(caption_image_ids[c])] for c in chosen])
    others = (owners + rng.integers(1, len(image_ids), size=len(owners))) % len(image_ids)  # never the owner
    captions = caption_vectors[chosen]
    matched = np.einsum("ij,ij->i", captions, image_vectors[owners])
    unmatched = np.einsum("ij,ij->i", captions, image_vectors[others])
    slope, intercept = _logistic_fit(np.concatenate([matched, unmatched]),
                                     np.concatenate([np.ones(len(matched)), np.zeros(len(unmatched))]))
    return Calibration(round(slope, 6), round(intercept, 6), int(len(chosen)), round(float(np.median(matched)), 4),
                       round(float(np.median(unmatched)), 4))


def _logistic_fit(scores: np.ndarray, labels: np.ndarray, steps: int = 50) -> tuple[float, float]:
    """Newton's method on the mean log-loss of p = sigmoid(a s + b), with a little L2 on `a` so that
    perfectly separated pairs give a steep curve rather than an infinite one."""
    x = np.stack([scores.astype(np.float64), np.ones(len(scores))], axis=1)
    weights = np.zeros(2)
    ridge = np.diag([1e-3, 0.0])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ weights, -40, 40)))
        gradient = x.T @ (p - labels) / len(labels) + ridge @ weights
        hessian = (x * (p * (1 - p))[:, None]).T @ x / len(labels) + ridge + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return float(weights[0]), float(weights[1])
