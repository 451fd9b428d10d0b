"""The Dual-Path text path (Zheng et al.): a deep residual CNN over the word sequence.

A caption becomes a fixed-length row of word ids (cut or padded to `max_length`). The word
embedding is a 1x1 convolution over one-hot words, i.e. an `nn.Embedding`, so it can start from
word vectors. Residual bottleneck blocks then convolve along the sentence with 1x2 kernels
(`Conv1d(kernel_size=2)` here: the sentence is a 1-pixel-high image), some with stride 2, and a
global max pool over positions gives the sentence feature, projected to the embedding.

Position shift (training only): a random number of empty positions is put before the sentence,
so the network cannot tie a word's meaning to its absolute position.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from models.vocab import Vocabulary


class Bottleneck1d(nn.Module):
    """x + f(x), f = 1x1 reduce -> 1x2 conv along the sentence -> 1x1 expand, each with batch norm;
    a 1x1 strided projection on the shortcut where the width or the length changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        inner = out_channels // 4
        self.reduce = nn.Sequential(nn.Conv1d(in_channels, inner, 1, bias=False), nn.BatchNorm1d(inner), nn.ReLU())
        self.along = nn.Sequential(nn.Conv1d(inner, inner, 2, stride=stride, bias=False), nn.BatchNorm1d(inner),
                                   nn.ReLU())
        self.expand = nn.Sequential(nn.Conv1d(inner, out_channels, 1, bias=False), nn.BatchNorm1d(out_channels))
        self.stride = stride
        self.shortcut = nn.Identity() if in_channels == out_channels and stride == 1 else nn.Sequential(
            nn.Conv1d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm1d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A kernel of 2 shortens the sequence by one: pad one empty position on the right so that
        # the output keeps the length (stride 1) or halves it (stride 2), like the shortcut.
        inner = self.along(F.pad(self.reduce(x), (0, 1)))
        return F.relu(self.shortcut(x)[..., : inner.shape[-1]] + self.expand(inner))


def position_shift(tokens: torch.Tensor, lengths: torch.Tensor, max_length: int,
                   rng: random.Random | None = None) -> torch.Tensor:
    """Each row's words moved right by a random number of empty (0) positions, as far as the
    fixed length allows; the words keep their order and none is dropped."""
    rng = rng or random
    shifted = torch.zeros(tokens.shape[0], max_length, dtype=tokens.dtype)
    for row, length in enumerate(lengths.tolist()):
        offset = rng.randint(0, max_length - length)
        shifted[row, offset:offset + length] = tokens[row, :length]
    return shifted


class TextCNNTower(nn.Module):
    def __init__(self, vocab: Vocabulary, out_dim: int, word_dim: int = 300, max_length: int = 32,
                 channels: tuple[int, ...] = (256, 512, 1024), blocks: tuple[int, ...] = (2, 2, 2),
                 shift: bool = True, dropout: float = 0.0):
        super().__init__()
        if len(channels) != len(blocks):
            raise ValueError(f"text CNN: {len(channels)} channel widths but {len(blocks)} block counts")
        self.vocab, self.max_length, self.shift = vocab, max_length, shift
        self.embed = nn.Embedding(len(vocab), word_dim, padding_idx=0)
        nn.init.normal_(self.embed.weight, std=0.1)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        layers: list[nn.Module] = [nn.Conv1d(word_dim, channels[0], 1, bias=False), nn.BatchNorm1d(channels[0]),
                                   nn.ReLU()]
        width = channels[0]
        for stage, (out_channels, count) in enumerate(zip(channels, blocks, strict=True)):
            for block in range(count):
                layers.append(Bottleneck1d(width, out_channels, stride=2 if stage > 0 and block == 0 else 1))
                width = out_channels
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(width, out_dim)

    def tokens(self, texts: list[str]) -> torch.Tensor:
        """(B, max_length) word ids: cut or padded; shifted at random while training."""
        ids, lengths = self.vocab.batch(texts, self.max_length)
        if self.training and self.shift:
            return position_shift(ids, lengths, self.max_length)
        return F.pad(ids, (0, self.max_length - ids.shape[1]))

    def forward(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return self.project.weight.new_zeros((0, self.project.out_features))
        tokens = self.tokens(texts).to(self.embed.weight.device)
        features = self.body(self.embed(tokens).transpose(1, 2))  # (B, C, L')
        return self.project(self.dropout(features.amax(dim=-1)))

    def unknown_words(self, text: str) -> list[str]:
        return self.vocab.unknown_words(text)

    def readings(self, text: str) -> list:
        return self.vocab.readings(text)
