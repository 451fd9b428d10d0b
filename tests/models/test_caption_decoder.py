"""The GXN caption decoder (#6 groundwork): teacher-forced loss, greedy and beam decoding."""

from __future__ import annotations

import torch

from models.caption_decoder import CaptionDecoder
from models.vocab import END, PAD, START, Vocabulary

CAPTIONS = ["a red circle", "two blue squares left of a star"]
VOCAB = Vocabulary.build(CAPTIONS)


def _inputs():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 8, generator=generator), torch.randn(2, 4, 6, generator=generator)


def test_loss_reaches_every_part_and_decoding_is_valid():
    torch.manual_seed(0)
    decoder = CaptionDecoder(VOCAB, feature_dim=8, region_dim=6, word_dim=8, hidden_dim=16, attention_dim=8,
                             max_length=6)
    features, regions = _inputs()
    loss = decoder.loss(features, regions, CAPTIONS)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in decoder.named_parameters()
               if n != "embed.weight") and decoder.embed.weight.grad.abs().sum() > 0
    forbidden = {VOCAB.index[PAD], VOCAB.index[START], VOCAB.index[END]}
    for ids in decoder.greedy(features, regions) + decoder.beam(features, regions, width=3):
        assert len(ids) <= 6 and all(0 <= i < len(VOCAB) and i not in forbidden for i in ids)


def test_a_decoder_that_learned_two_captions_says_them_greedily_and_with_a_beam():
    torch.manual_seed(0)
    decoder = CaptionDecoder(VOCAB, feature_dim=8, region_dim=6, word_dim=16, hidden_dim=32, attention_dim=16,
                             max_length=10)
    features, regions = _inputs()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        decoder.loss(features, regions, CAPTIONS).backward()
        optimizer.step()
    assert [decoder.decode(ids) for ids in decoder.greedy(features, regions)] == CAPTIONS
    assert [decoder.decode(ids) for ids in decoder.beam(features, regions, width=3)] == CAPTIONS
