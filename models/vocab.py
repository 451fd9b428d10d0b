"""Word-level vocabulary: lower-case, punctuation split off, rare words mapped to <unk>."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
SPECIALS = (PAD, UNK, START, END)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """'A dog's ball, red!' -> ['a', "dog's", 'ball', ',', 'red', '!']."""
    return _TOKEN.findall(text.lower())


class Vocabulary:
    """A fixed word list; index 0 is padding and 1 is the unknown word."""

    def __init__(self, words: Sequence[str]):
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}")
        self.words = list(words)
        self.index = {word: i for i, word in enumerate(self.words)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1, max_size: int | None = None) -> Vocabulary:
        """Words seen at least `min_count` times in `captions`, most frequent first."""
        counts = Counter(token for caption in captions for token in tokenize(caption))
        frequent = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]
        if max_size is not None:
            frequent = frequent[: max(0, max_size - len(SPECIALS))]
        return cls([*SPECIALS, *[w for w in frequent if w not in SPECIALS]])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word.lower() in self.index and word.lower() not in SPECIALS

    def encode(self, text: str, add_bounds: bool = False) -> list[int]:
        ids = [self.index.get(token, 1) for token in tokenize(text)]
        return [self.index[START], *ids, self.index[END]] if add_bounds else ids

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.words[i] for i in ids if self.words[i] not in SPECIALS)

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` this vocabulary maps to <unk> (punctuation ignored)."""
        return [t for t in tokenize(text) if t not in self.index and any(ch.isalnum() for ch in t)]

    def batch(self, texts: Sequence[str], max_length: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded token ids (B x T) and true lengths (>= 1: an empty text becomes one <unk>)."""
        encoded = [(self.encode(t)[:max_length] or [1]) for t in texts]
        lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
        tokens = torch.zeros(len(encoded), int(lengths.max()) if encoded else 1, dtype=torch.long)
        for row, ids in enumerate(encoded):
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return tokens, lengths
