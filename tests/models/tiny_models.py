"""Tiny models made in the test, never downloaded."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch


def make_tiny_sentence_model(folder: Path, words: Iterable[str]) -> Path:
    """A one-layer BERT with a word-level vocabulary of `words` (plus the special tokens), saved as a
    sentence-transformers folder that pools by the mean of its tokens."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocabulary), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return folder
