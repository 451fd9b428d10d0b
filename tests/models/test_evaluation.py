"""Recall@K on hand-built similarity matrices with known ranks; MAP and precision within a radius
on hand-worked distance matrices."""

import numpy as np
import pytest
import torch

from models.evaluation import (
    mean_average_precision,
    metrics_from_similarity,
    precision_within_radius,
    recall_metrics,
    retrieval_ranks,
)


def test_perfect_retrieval():
    # 3 images, 2 captions each; each caption scores highest with its own image.
    owners = [0, 0, 1, 1, 2, 2]
    sims = np.full((3, 6), 0.1)
    for caption, image in enumerate(owners):
        sims[image, caption] = 0.9
    m = metrics_from_similarity(sims, owners)
    assert (m.i2t_r1, m.t2i_r1, m.i2t_medr, m.t2i_meanr, m.rsum) == (100, 100, 1, 1, 600)


def test_known_ranks_image_to_text_uses_best_caption():
    owners = [0, 0, 1, 1]
    sims = np.array([
        # c0   c1   c2   c3
        [0.1, 0.5, 0.9, 0.2],   # image 0: best own caption c1 (0.5) beaten by c2 -> rank 2
        [0.8, 0.7, 0.6, 0.1],   # image 1: best own c2 (0.6) beaten by c0, c1 -> rank 3
    ])
    m = metrics_from_similarity(sims, owners)
    assert (m.i2t_r1, m.i2t_r5, m.i2t_medr, m.i2t_meanr) == (0, 100, 2, 2.5)
    # text->image: c0 -> image 1 wins (rank 2); c1 -> 0.5 < 0.7 (rank 2); c2 -> 0.6 < 0.9 (rank 2); c3 -> 0.1 < 0.2
    assert (m.t2i_r1, m.t2i_r5, m.t2i_medr, m.t2i_meanr) == (0, 100, 2, 2)


def test_ties_count_against_the_query():
    owners = [0, 1]
    m = metrics_from_similarity(np.ones((2, 2)), owners)  # a collapsed model
    assert m.i2t_r1 == 0 and m.t2i_r1 == 0 and m.i2t_meanr == 2


def test_r_at_k_thresholds_and_uneven_caption_counts():
    # 12 images; caption j belongs to image j, except image 0 which also owns caption 12.
    rng = np.random.default_rng(0)
    n = 12
    owners = list(range(n)) + [0]
    sims = rng.uniform(0, 0.5, (n, n + 1))
    target_rank = {0: 1, 1: 3, 2: 6, 3: 11}  # t2i rank wanted for captions 0..3
    for caption in range(n + 1):
        image = owners[caption]
        rank = target_rank.get(caption, 1)
        column = sims[:, caption].copy()
        others = [i for i in range(n) if i != image]
        order = rng.permutation(others)
        column[image] = 0.6
        column[order[: rank - 1]] = 0.7  # exactly rank-1 images score above the positive
        column[order[rank - 1:]] = 0.1
        sims[:, caption] = column
    m = metrics_from_similarity(sims, owners)
    ranks = np.array([1, 3, 6, 11] + [1] * 9)
    assert m.t2i_r1 == pytest.approx(100 * np.mean(ranks <= 1))
    assert m.t2i_r5 == pytest.approx(100 * np.mean(ranks <= 5))
    assert m.t2i_r10 == pytest.approx(100 * np.mean(ranks <= 10))
    assert m.t2i_meanr == pytest.approx(ranks.mean()) and m.t2i_medr == 1
    assert m.n_images == 12 and m.n_captions == 13


def test_chunked_embedding_ranks_equal_full_matrix():
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(50, 16), dim=1)
    owners = np.repeat(np.arange(50), 5)
    texts = torch.nn.functional.normalize(images[owners] + 0.8 * torch.randn(250, 16), dim=1)
    chunked = retrieval_ranks(images, texts, owners, chunk=7)
    full = retrieval_ranks(images, texts, owners, chunk=10_000)
    assert all(np.array_equal(a, b) for a, b in zip(chunked, full, strict=True))
    assert recall_metrics(images, texts, owners) == metrics_from_similarity((images @ texts.T).numpy(), owners)


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="3 caption owners for 2 captions"):
        recall_metrics(torch.ones(2, 4), torch.ones(2, 4), [0, 1, 1])
    with pytest.raises(ValueError, match="caption owners must index the 2 images"):
        metrics_from_similarity(np.ones((2, 2)), [0, 5])
    with pytest.raises(ValueError, match="cannot evaluate 0 images"):
        metrics_from_similarity(np.ones((0, 2)), [0, 0])


def test_nan_scores_rank_last_not_first():
    sims = np.full((12, 12), np.nan)  # a diverged model
    m = metrics_from_similarity(sims, list(range(12)))
    assert m.rsum == 0 and m.i2t_meanr == 12 and m.t2i_meanr == 12


def test_images_without_captions_are_left_out_of_image_to_text():
    # image 2 owns no caption: it cannot be scored image->text, and must not count as a miss.
    sims = np.array([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])
    m = metrics_from_similarity(sims, [0, 1])
    assert m.i2t_r1 == 100 and m.t2i_r1 == 100


def test_median_rank_with_an_even_count_is_floored():
    # t2i ranks 1 and 2 -> median 1.5, reported as 1 (vsepp's floor(median) convention)
    sims = np.array([[0.9, 0.95], [0.1, 0.9]])
    m = metrics_from_similarity(sims, [0, 1])
    assert m.t2i_meanr == 1.5 and m.t2i_medr == 1


def test_mean_average_precision_on_a_hand_worked_ranking():
    distances = np.array([[0, 3, 1, 2], [5, 5, 1, 0]])
    relevant = np.array([[False, True, True, False], [True, False, False, False]])
    # query 0 ranks items 0, 2, 3, 1: hits at ranks 2 and 4 -> AP = (1/2 + 2/4) / 2 = 0.5
    # query 1 ranks 3, 2, 0, 1 (the tie 0/1 in database order): hit at rank 3 -> AP = 1/3
    assert mean_average_precision(distances, relevant) == pytest.approx((0.5 + 1 / 3) / 2)
    assert mean_average_precision(distances, np.zeros_like(relevant)) == 0.0


def test_precision_within_radius_counts_an_empty_ball_as_zero():
    distances = np.array([[0, 2, 3], [5, 4, 3], [1, 1, 9]])
    relevant = np.array([[True, False, False], [True, True, True], [False, True, False]])
    # query 0: {0, 1} within 2, one right -> 1/2; query 1: empty -> 0; query 2: {0, 1}, one right -> 1/2
    assert precision_within_radius(distances, relevant, radius=2) == pytest.approx((0.5 + 0 + 0.5) / 3)
