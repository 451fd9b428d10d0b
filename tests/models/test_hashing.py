"""DCMH: the objective's terms on hand-worked cases, the code update, bit balance, packed codes and
exact Hamming neighbours from faiss's binary index, and training that separates paired items."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest
import torch

from models.hashing import (
    DCMHConfig,
    HashingHead,
    binary_codes,
    bit_balance,
    hamming_distances,
    pair_log_likelihood,
    quantisation,
    train_dcmh,
    update_codes,
)


def test_pair_log_likelihood_on_a_hand_worked_case():
    image = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    text = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    similar = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Theta = F G^T / 2 = [[1, 0], [1, -2]]
    # -[S*Theta - log(1 + e^Theta)] summed: (log(1+e) - 1) + log 2 + log(1+e) + (log(1+e^-2) + 2)
    expected = (math.log1p(math.e) - 1) + math.log(2) + math.log1p(math.e) + (math.log1p(math.exp(-2)) + 2)
    assert float(pair_log_likelihood(image, text, similar)) == pytest.approx(expected, rel=1e-6)


def test_the_likelihood_prefers_agreeing_codes_for_similar_pairs():
    code = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    similar = torch.ones(1, 1)
    assert pair_log_likelihood(code, code, similar) < pair_log_likelihood(code, -code, similar)
    assert pair_log_likelihood(code, -code, 1 - similar) < pair_log_likelihood(code, code, 1 - similar)


def test_quantisation_and_bit_balance_on_hand_cases():
    codes = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    outputs = torch.tensor([[0.5, -1.0], [-1.0, 3.0]])
    assert float(quantisation(codes, outputs)) == pytest.approx(0.25 + 0 + 0 + 4)
    assert float(bit_balance(codes)) == 0.0  # each bit +1 for one item of two
    assert float(bit_balance(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))) == pytest.approx(4.0)  # (2^2 + 0^2)


def test_code_update_is_the_sign_of_the_sum_and_zero_is_plus_one():
    image = torch.tensor([[0.3, -2.0, 0.5]])
    text = torch.tensor([[-0.1, 1.0, -0.5]])
    assert update_codes(image, text).tolist() == [[1.0, -1.0, 1.0]]
    # it minimises |B - F|^2 + |B - G|^2 over B in {-1, +1}
    for flip in range(3):
        other = update_codes(image, text).clone()
        other[0, flip] *= -1
        assert quantisation(other, image) + quantisation(other, text) >= \
            quantisation(update_codes(image, text), image) + quantisation(update_codes(image, text), text)


def test_packed_codes_and_exact_hamming_neighbours_from_faiss():
    rng = np.random.default_rng(0)
    outputs = torch.from_numpy(rng.standard_normal((50, 32)).astype(np.float32))
    codes = binary_codes(outputs)
    assert codes.shape == (50, 4) and codes.dtype == np.uint8
    assert np.unpackbits(codes[:1], axis=1)[0].tolist() == (outputs[0] >= 0).int().tolist()
    index = faiss.IndexBinaryFlat(32)
    index.add(codes)
    distances, labels = index.search(codes[:5], 50)
    exact = hamming_distances(codes[:5], codes)
    assert (distances == np.sort(exact, axis=1)).all()
    assert (np.take_along_axis(exact, labels, axis=1) == distances).all()
    assert (labels[:, 0] == np.arange(5)).all() and (distances[:, 0] == 0).all()


def test_heads_need_whole_bytes():
    with pytest.raises(ValueError, match="multiple of 8"):
        HashingHead(16, 12)


def test_training_makes_pairs_nearer_than_strangers_and_balances_bits():
    torch.manual_seed(0)
    groups = torch.arange(40).repeat_interleave(2)   # 40 photos, two captions each
    latent = torch.randn(40, 8)[groups]
    image = latent @ torch.randn(8, 24) + 0.05 * torch.randn(80, 24)
    text = latent @ torch.randn(8, 16) + 0.05 * torch.randn(80, 16)
    heads = train_dcmh(image, text, groups, DCMHConfig(bits=16, epochs=40, batch_size=16, hidden=64, eta=8.0),
                       progress=False)
    distances = hamming_distances(heads.image_codes(image), heads.text_codes(text))
    same = (groups[:, None] == groups[None, :]).numpy()
    assert distances[same].mean() < 0.5 * distances[~same].mean()
    ranks = (distances < distances[np.arange(80), np.arange(80)][:, None]).sum(axis=1)
    assert np.mean(ranks < 5) > 0.8  # its own caption among the 5 nearest codes for most images
    first, last = heads.history[0], heads.history[-1]
    assert last["balance"] < 0.3 and last["image_objective"] < first["image_objective"]


def test_weighted_likelihood_gives_similar_and_dissimilar_pairs_equal_weight():
    image = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    text = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    similar = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # one similar pair of four
    theta = [[1.0, 0.0], [1.0, -2.0]]
    labels = similar.tolist()
    costs = [[math.log1p(math.exp(theta[i][j])) - labels[i][j] * theta[i][j] for j in range(2)] for i in range(2)]
    expected = 2.0 * costs[0][0] + (2.0 / 3.0) * (costs[0][1] + costs[1][0] + costs[1][1])  # 4/(2*1), 4/(2*3)
    assert float(pair_log_likelihood(image, text, similar, weighted=True)) == pytest.approx(expected, rel=1e-6)
