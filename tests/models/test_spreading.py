"""Spreading vectors: the KoLeo and rank terms on hand cases, neighbour ranks, and a catalyser that
keeps neighbourhoods on a toy set and spreads its outputs over the sphere."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.spreading import (
    Catalyser,
    CatalyserConfig,
    koleo_loss,
    neighbour_ranks,
    train_catalyser,
    triplet_rank_loss,
)


def test_koleo_on_a_hand_case():
    # points at 0, 1 and 3 on a line: nearest-neighbour distances 1, 1 and 2
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    assert float(koleo_loss(points)) == pytest.approx(-(0 + 0 + math.log(2)) / 3, abs=1e-6)


def test_koleo_prefers_spread_points():
    crowded = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.98, 0.2]])
    spread = torch.tensor([[1.0, 0.0], [-0.5, 0.866], [-0.5, -0.866]])
    assert koleo_loss(spread) < koleo_loss(crowded)
    with pytest.raises(ValueError, match="two"):
        koleo_loss(torch.ones(1, 2))


def test_triplet_rank_loss_on_a_hand_case():
    anchor = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    positive = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    negative = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # row 1: 1 - 4 < 0 -> 0; row 2: 9 - 1 = 8; mean 4 (margin 0); with margin 4: (1 + 12) / 2
    assert float(triplet_rank_loss(anchor, positive, negative)) == pytest.approx(4.0)
    assert float(triplet_rank_loss(anchor, positive, negative, margin=4.0)) == pytest.approx(6.5)


def test_neighbour_ranks_are_nearest_first_and_exclude_the_row_itself():
    vectors = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.8]]), dim=1)
    ranks = neighbour_ranks(vectors, 3, chunk=2)
    assert ranks[0].tolist() == [1, 3, 2]
    assert all(row not in ranks[row].tolist() for row in range(4))


def test_neighbour_ranks_against_a_database_skip_only_the_anchors_own_rows():
    database = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=1)
    anchors = torch.cat([database[:2], torch.tensor([[1.0, 0.0]])])  # two members, then an outsider
    ranks = neighbour_ranks(anchors, 2, database=database, own_rows=2, chunk=1)
    assert ranks.tolist() == [[1, 2], [0, 2], [0, 1]]  # the outsider's nearest is row 0, its twin
    assert neighbour_ranks(anchors[:0], 2, database=database).shape == (0, 2)


def test_a_catalyser_on_two_sets_keeps_how_one_set_ranks_for_the_other():
    """Texts sit apart from the images (a modality gap) but near their own image: trained on both
    sets, the catalyser keeps each text's nearest images."""
    images = _clustered(300, 16, 10, seed=2)
    rng = np.random.default_rng(3)
    texts = images[:150] + 0.1 * rng.normal(size=(150, 16)).astype(np.float32) + 0.8 * np.eye(16, dtype=np.float32)[0]
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    config = CatalyserConfig(out_dim=6, koleo_weight=0.05, hidden=64, epochs=12, batch_size=64, positives=5,
                             negatives=20)
    model = train_catalyser([images, texts], config, progress=False).model
    truth = (texts @ images.T).argsort(axis=1)[:, ::-1][:, :10]
    found = (model.transform(texts) @ model.transform(images).T).argsort(axis=1)[:, ::-1][:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found, strict=True)])
    assert overlap > 0.3  # chance is 10 / 300


def _clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    points = centres[rng.integers(clusters, size=n)] + 0.3 * rng.normal(size=(n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def test_a_trained_catalyser_keeps_neighbourhoods_and_outputs_unit_vectors():
    data = _clustered(600, 32, 12, seed=0)
    config = CatalyserConfig(out_dim=8, koleo_weight=0.05, hidden=64, epochs=15, batch_size=64, positives=5,
                             negatives=20)
    trained = train_catalyser(data, config, progress=False)
    out = trained.model.transform(data)
    assert out.shape == (600, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    truth = (data @ data.T - 2 * np.eye(600)).argsort(axis=1)[:, ::-1][:, :10]
    found = (out @ out.T - 2 * np.eye(600)).argsort(axis=1)[:, ::-1][:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found, strict=True)])
    assert overlap > 0.4  # chance is 10 / 599
    assert len(trained.history) == 15 and {"rank", "koleo"} <= set(trained.history[0])


def test_koleo_spreads_the_outputs():
    """Without KoLeo the rank term alone can be met by crowding everything together; with it the
    nearest-neighbour distances grow."""
    data = _clustered(400, 16, 8, seed=1)
    spread = {}
    for weight in (0.0, 0.2):
        config = CatalyserConfig(out_dim=4, koleo_weight=weight, hidden=32, epochs=8, batch_size=64, positives=5,
                                 negatives=20)
        out = torch.from_numpy(train_catalyser(data, config, progress=False).model.transform(data))
        spread[weight] = -float(koleo_loss(out))  # mean log nearest-neighbour distance
    assert spread[0.2] > spread[0.0]


def test_catalyser_config_errors():
    with pytest.raises(ValueError, match="out_dim"):
        Catalyser(8, 0)
    with pytest.raises(ValueError, match="more than 50"):
        train_catalyser(np.eye(10, dtype=np.float32), CatalyserConfig(), progress=False)
