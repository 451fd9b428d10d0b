"""The caption decoders (attention, CNN_L, Stack-Cap with one and two fine stages): teacher-forced
loss, greedy, sampled and beam decoding, and the multi-stage self-critical advantage."""

from __future__ import annotations

import pytest
import torch

from models.caption_decoder import (
    AttentionDecoder,
    CaptionDecoder,
    StackCapDecoder,
    build_caption_decoder,
    stage_advantages,
)
from models.vocab import END, PAD, START, Vocabulary

CAPTIONS = ["a red circle", "two blue squares left of a star"]
VOCAB = Vocabulary.build(CAPTIONS)
KINDS = {"attention": ("attention", {}), "cnn_l": ("cnn_l", {"language_cnn_channels": 8, "history": 5}),
         "stack_cap_1": ("stack_cap", {"fine_stages": 1}), "stack_cap_2": ("stack_cap", {"fine_stages": 2})}


def _inputs():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 8, generator=generator), torch.randn(2, 4, 6, generator=generator)


def _decoder(kind: str, **sizes):
    name, options = KINDS[kind]
    return build_caption_decoder(name, VOCAB, 8, 6, {"word_dim": 8, "hidden_dim": 16, "attention_dim": 8,
                                                      "max_length": 6, **options, **sizes})


@pytest.mark.parametrize("kind", KINDS)
def test_loss_reaches_every_part_and_decoding_is_valid(kind):
    torch.manual_seed(0)
    decoder = _decoder(kind)
    features, regions = _inputs()
    loss = decoder.loss(features, regions, CAPTIONS)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in decoder.named_parameters()
               if n != "embed.weight"), [n for n, p in decoder.named_parameters() if p.grad is None]
    assert decoder.embed.weight.grad.abs().sum() > 0
    forbidden = {VOCAB.index[PAD], VOCAB.index[START], VOCAB.index[END]}
    sampled, log_prob = decoder.sample(features, regions)
    assert len(sampled) == decoder.stages and log_prob.shape == (decoder.stages, 2) and log_prob.requires_grad
    for ids in decoder.greedy(features, regions) + decoder.beam(features, regions, width=3) + sampled[-1]:
        assert len(ids) <= 6 and all(0 <= i < len(VOCAB) and i not in forbidden for i in ids)


def test_the_decoders_are_what_the_config_names():
    assert type(_decoder("attention")) is AttentionDecoder and _decoder("attention").language_cnn is None
    assert _decoder("cnn_l").language_cnn is not None
    assert isinstance(_decoder("stack_cap_2"), StackCapDecoder) and _decoder("stack_cap_2").stages == 3
    with pytest.raises(ValueError, match="caption.decoder 'lstm'"):
        build_caption_decoder("lstm", VOCAB, 8, 6, {})


@pytest.mark.parametrize("kind", KINDS)
def test_a_decoder_that_learned_two_captions_says_them_greedily_and_with_a_beam(kind):
    torch.manual_seed(0)
    decoder = _decoder(kind, word_dim=16, hidden_dim=32, attention_dim=16, max_length=10)
    features, regions = _inputs()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        decoder.loss(features, regions, CAPTIONS).backward()
        optimizer.step()
    assert [decoder.decode(ids) for ids in decoder.greedy(features, regions)] == CAPTIONS
    assert [decoder.decode(ids) for ids in decoder.beam(features, regions, width=3)] == CAPTIONS
    for stage in decoder.greedy_stages(features, regions):  # every stage was supervised
        assert [decoder.decode(ids) for ids in stage] == CAPTIONS


def test_the_language_cnn_sees_the_earlier_words():
    """Two histories that differ only in a word the GRU state has not seen give different outputs."""
    torch.manual_seed(0)
    decoder = _decoder("cnn_l").eval()
    features, regions = _inputs()
    state = decoder.begin(features[:1], regions[:1])
    other = dict(state, history=state["history"].clone())
    other["history"][:, -1] = 1.0  # the previous word; the oldest slot drops out of the window
    words = torch.tensor([[VOCAB.index["red"]]])
    assert not torch.allclose(decoder.step(words, state)[0], decoder.step(words, other)[0])


def test_stage_advantages_follow_the_multi_stage_reward():
    with pytest.raises(ValueError, match="stages, images"):
        stage_advantages(torch.ones(3), torch.ones(3))
    rewards = torch.tensor([[1.0, 0.5], [2.0, 0.5], [2.5, 1.0]])
    baselines = torch.tensor([[0.5, 0.5], [1.0, 1.0], [3.0, 0.0]])
    expected = torch.tensor([[0.5, 0.0], [1.0 + 1.0, -0.5 + 0.0], [-0.5 + 0.5, 1.0 + 0.5]])
    assert torch.allclose(stage_advantages(rewards, baselines), expected)
    assert torch.allclose(stage_advantages(rewards[:1], baselines[:1]), rewards[:1] - baselines[:1])


def test_a_sampled_caption_counts_the_log_probability_of_its_words_and_its_end():
    """A decoder forced to say word w, then <end>: the summed log-probability is that of the two
    emitted tokens (under the distribution without the banned tokens), nothing after <end>."""
    decoder = _decoder("attention")
    word, end = VOCAB.index["red"], decoder.end
    step = [0]
    table = torch.full((len(VOCAB),), -5.0)

    def forced(words, state):
        choice = word if step[0] == 0 else end
        step[0] += 1
        log_probs = table.clone()
        log_probs[choice] = 5.0
        return torch.log_softmax(log_probs, dim=-1).expand(1, 1, -1), state

    decoder.step = forced
    torch.manual_seed(0)
    features, regions = _inputs()
    sampled, total = decoder.sample(features[:1], regions[:1])
    assert sampled == [[[word]]]
    allowed = table.clone()
    allowed[word] = 5.0
    allowed[[decoder.pad, decoder.start]] = float("-inf")
    first = torch.log_softmax(allowed, dim=-1)[word]
    allowed = table.clone()
    allowed[end] = 5.0
    allowed[[decoder.pad, decoder.start]] = float("-inf")
    second = torch.log_softmax(allowed, dim=-1)[end]
    assert float(total[0, 0]) == pytest.approx(float(first + second), rel=1e-5)
    assert step[0] == 2  # nothing decoded after <end>


def test_a_single_stage_checkpoint_keeps_its_parameter_names():
    names = set(_decoder("attention").state_dict())
    assert names == {"embed.weight", "init_hidden.weight", "init_hidden.bias", "attend_region.weight",
                     "attend_region.bias", "attend_hidden.weight", "attend_hidden.bias", "attention_score.weight",
                     "attention_score.bias", "cell.weight_ih", "cell.weight_hh", "cell.bias_ih", "cell.bias_hh",
                     "out.weight", "out.bias"}


class _ScriptedDecoder(CaptionDecoder):
    """First word: <end> with p 0.6, "red" 0.4; after "red": "circle" then <end>, both certain."""

    def begin(self, features, regions):
        return {"step": torch.zeros(len(features), dtype=torch.long)}

    def step(self, words, state):
        probs = torch.full((len(words[0]), len(self.vocab)), 1e-9)
        red, circle = self.vocab.index["red"], self.vocab.index["circle"]
        for row, (word, step) in enumerate(zip(words[0].tolist(), state["step"].tolist(), strict=True)):
            if step == 0:
                probs[row, self.end], probs[row, red] = 0.6, 0.4
            else:
                probs[row, circle if word == red else self.end] = 1.0
        return probs.log()[None], {"step": state["step"] + 1}


def test_beam_length_alpha_trades_the_empty_caption_against_the_longer_one():
    decoder = _ScriptedDecoder(VOCAB, word_dim=4, max_length=5)
    features, regions = torch.zeros(1, 8), torch.zeros(1, 4, 6)
    # log 0.6 over one step against log 0.4 over three ("red circle <end>")
    assert decoder.beam(features, regions, width=2, length_alpha=0.0) == [[]]
    assert decoder.beam(features, regions, width=2, length_alpha=1.0) == [[VOCAB.index["red"], VOCAB.index["circle"]]]
    # cut at two words, "red circle" is an unfinished beam, normalised by its own length
    short = _ScriptedDecoder(VOCAB, word_dim=4, max_length=2)
    assert short.beam(features, regions, width=2, length_alpha=0.0) == [[]]
    assert short.beam(features, regions, width=2, length_alpha=1.0) == [[VOCAB.index["red"], VOCAB.index["circle"]]]
