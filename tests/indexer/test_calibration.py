"""Relevance calibration: a logistic curve fitted on the gallery's own caption-image pairs."""

from __future__ import annotations

import numpy as np

from indexer.calibration import Calibration, fit_calibration


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_matched_pairs_score_high_relevance_and_random_pairs_low():
    rng = np.random.default_rng(0)
    images = _unit(rng.normal(size=(300, 32)))
    captions = _unit(np.repeat(images, 5, axis=0) + 0.9 * rng.normal(size=(1500, 32)) / np.sqrt(32))
    owners = np.repeat(np.arange(1, 301), 5)
    calibration = fit_calibration(np.arange(1, 301), images, owners, captions)
    assert calibration.slope > 0 and calibration.matched_median > calibration.random_median
    matched = np.einsum("ij,ij->i", captions, images[owners - 1])
    assert np.median(calibration.relevance(matched)) > 0.9
    assert np.median(calibration.relevance(captions[:300] @ images[150])) < 0.1
    midpoint = -calibration.intercept / calibration.slope  # relevance 0.5 lies between the two medians
    assert calibration.random_median < midpoint < calibration.matched_median
    assert Calibration.from_manifest({"calibration": calibration.as_dict()}) == calibration


def test_too_few_captions_give_no_calibration():
    vectors = _unit(np.ones((5, 4)))
    assert fit_calibration(np.arange(5), vectors, np.arange(5), vectors) is None
    assert Calibration.from_manifest({}) is None
