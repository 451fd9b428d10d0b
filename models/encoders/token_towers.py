"""Text towers that keep one state per word, for families that attend over a sentence's words (DAN):
a bidirectional GRU/LSTM over word embeddings, or a frozen sentence transformer's token states
through a learned head. Both return (states (B, T, d), mask (B, T)) and can name the pieces their
states stand for, so attention weights can be shown on the words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from models.encoders.text_towers import SentenceTransformerTower, sentence_model_source
from models.vocab import Vocabulary, tokenize


class WordStateTower(nn.Module):
    """Word embeddings -> bidirectional GRU/LSTM; a word's state is the mean of its two directions."""

    reads_words = True

    def __init__(self, vocab: Vocabulary, out_dim: int, word_dim: int = 300, rnn: str = "gru",
                 max_length: int = 32):
        super().__init__()
        if rnn not in ("gru", "lstm"):
            raise ValueError(f"unknown rnn {rnn!r}: expected 'gru' or 'lstm'")
        self.vocab, self.max_length = vocab, max_length
        self.embed = nn.Embedding(len(vocab), word_dim, padding_idx=0)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.rnn = (nn.GRU if rnn == "gru" else nn.LSTM)(word_dim, out_dim, batch_first=True, bidirectional=True)

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.embed.weight.device
        if not texts:
            return self.embed.weight.new_zeros(0, 1, self.rnn.hidden_size), torch.zeros(0, 1, dtype=torch.bool)
        tokens, lengths = self.vocab.batch(texts, self.max_length)
        packed = pack_padded_sequence(self.embed(tokens.to(device)), lengths, batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=tokens.shape[1])
        forward, backward = states.chunk(2, dim=-1)
        mask = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
        return (forward + backward) / 2, mask.to(device)

    def pieces(self, text: str) -> list[str]:
        """The words the states stand for (an empty text reads as one unknown word)."""
        return tokenize(text)[: self.max_length] or ["<unk>"]

    @staticmethod
    def group_pieces(pieces: list[str], weights: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        return pieces, weights

    def unknown_words(self, text: str) -> list[str]:
        return self.vocab.unknown_words(text)

    def readings(self, text: str) -> list:
        return self.vocab.readings(text)


class SentenceTokenTower(SentenceTransformerTower):
    """A frozen sentence transformer's token states ([CLS] and [SEP] left out), each through the
    learned head. Token states are memoised per text (fp16) in the pooled tower's memo, whose
    features this tower never computes."""

    reads_words = False

    def __init__(self, out_dim: int, path: str | None = None, files: dict[str, str] | None = None,
                 max_length: int = 48, hidden_dim: int = 1024):
        # A text's states are ~10 KB: a server keeps the last 10,000 texts; training's precompute
        # raises the cap to hold every caption.
        super().__init__(out_dim, path, files, freeze=True, max_length=max_length, hidden_dim=hidden_dim,
                         cache_size=10_000)

    def token_features(self, texts: list[str]) -> list[torch.Tensor]:
        """Each text's word-piece states (T_i, width): the frozen transformer's last layer."""
        device = self.head[0].weight.device
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt", return_special_tokens_mask=True)
        special = batch.pop("special_tokens_mask").bool()
        with torch.no_grad():
            hidden = self.transformer(**batch.to(device)).last_hidden_state.cpu()
        keep = batch["attention_mask"].cpu().bool() & ~special
        keep[:, 0] |= ~keep.any(dim=1)  # an empty text keeps its [CLS]: one state to read
        return [row[kept].half() for row, kept in zip(hidden, keep, strict=True)]

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.head[0].weight.device
        if not texts:
            return self.head[-1].weight.new_zeros(0, 1, self.head[-1].out_features), torch.zeros(0, 1, dtype=torch.bool)
        rows = self.memoised(texts, lambda missing: [state for start in range(0, len(missing), 128)
                                                     for state in self.token_features(missing[start:start + 128])])
        lengths = torch.tensor([len(r) for r in rows])
        states = pad_sequence(rows, batch_first=True).float().to(device)
        mask = torch.arange(states.shape[1])[None, :] < lengths[:, None]
        return self.head(states), mask.to(device)

    def precompute(self, texts: list[str], cache_dir: Path | None, progress: bool = True,
                   batch_size: int = 128) -> None:
        """Memoise every text's token states at once, from a file in `cache_dir` keyed by the texts
        and the transformer's weights when there is one."""
        from tqdm import tqdm

        from models.io import atomic_torch_save

        unique = [t for t in dict.fromkeys(texts) if t not in self._cache]
        cache_file = self.memo_file("tokens", f"tokens:{self.max_length}:{sorted(self.files.items())}", unique,
                                    cache_dir)
        if cache_file is not None and cache_file.is_file():
            saved = torch.load(cache_file, weights_only=True)
            rows = list(saved["states"].split(saved["lengths"].tolist()))
        else:
            rows = []
            for start in tqdm(range(0, len(unique), batch_size), desc="token features", unit="batch",
                              disable=not progress):
                rows += self.token_features(unique[start:start + batch_size])
            if cache_file is not None and rows:
                atomic_torch_save({"states": torch.cat(rows), "lengths": torch.tensor([len(r) for r in rows])},
                                  cache_file)
        self.cache_size = max(self.cache_size, len(self._cache) + len(unique) + 10_000)
        self._cache.update(zip(unique, rows, strict=True))

    def pieces(self, text: str) -> list[str]:
        """The word pieces the states stand for (an empty text: its [CLS])."""
        return self.tokenizer.tokenize(text)[: self.max_length - 2] or [self.tokenizer.cls_token]

    @staticmethod
    def group_pieces(pieces: list[str], weights: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """Word pieces joined back into words ('##' continues a word), their weights summed."""
        words: list[str] = []
        columns: list[list[int]] = []
        for i, piece in enumerate(pieces):
            if piece.startswith("##") and words:
                words[-1] += piece[2:]
                columns[-1].append(i)
            else:
                words.append(piece)
                columns.append([i])
        grouped = torch.stack([weights[:, c].sum(dim=1) for c in columns], dim=1) if columns else weights
        return words, grouped


def build_token_tower(cfg: dict[str, Any], out_dim: int, vocab: Vocabulary | None,
                      extra: dict[str, Any] | None = None) -> nn.Module:
    """text.kind "gru" | "lstm" (word-level, needs `vocab`) or "sentence_transformer" (frozen)."""
    kind = cfg.get("kind", "gru")
    if kind in ("gru", "lstm"):
        if vocab is None:
            raise ValueError("a word-level text tower needs a vocabulary (built from the training captions)")
        return WordStateTower(vocab, out_dim, cfg.get("word_dim", 300), kind, cfg.get("max_length", 32))
    if kind == "sentence_transformer":
        if not cfg.get("freeze", True):
            raise ValueError("text.freeze = false: word states come from a frozen sentence transformer only")
        path, files = sentence_model_source(cfg, extra)
        return SentenceTokenTower(out_dim, path, files, cfg.get("max_length", 48), cfg.get("hidden_dim", 1024))
    raise ValueError(f"unknown text tower {kind!r}: expected 'gru', 'lstm' or 'sentence_transformer'")

