"""Word vectors to start a word-embedding layer from: a word2vec/GloVe text file, or word2vec
trained on the training captions (gensim). Words without a vector keep their random start."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from models.vocab import Vocabulary, tokenize


def read_text_vectors(path: str | Path, wanted: set[str] | None = None) -> dict[str, np.ndarray]:
    """Vectors from a word2vec text file (an optional 'count dim' first line) or a GloVe file
    ('word v1 v2 ...' per line); only `wanted` words are kept, to spare memory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: word vectors file not found")
    vectors: dict[str, np.ndarray] = {}
    dim = None
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            parts = line.split()
            if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # the word2vec header
            if len(parts) < 2:
                continue
            word, values = parts[0], parts[1:]
            if dim is None:
                dim = len(values)
            if len(values) != dim:
                raise ValueError(f"{path}:{number}: {len(values)} values where earlier lines had {dim}")
            if wanted is not None and word not in wanted and word.lower() in wanted:
                word = word.lower()  # cased files (GoogleNews) against a lower-case vocabulary
                if word in vectors:
                    continue  # the lower-case entry, when the file has one, wins
            if wanted is None or word in wanted:
                try:
                    vectors[word] = np.asarray(values, dtype=np.float32)
                except ValueError as error:
                    raise ValueError(f"{path}:{number}: not a number in the vector of {word!r}") from error
    if not vectors:
        raise ValueError(f"{path}: no vectors for any vocabulary word")
    return vectors


def train_word2vec(captions: Iterable[str], dim: int, seed: int = 0, epochs: int = 10) -> dict[str, np.ndarray]:
    """Skip-gram word2vec on the captions themselves (needs gensim)."""
    try:
        from gensim.models import Word2Vec
    except ImportError as error:
        raise RuntimeError("word_vectors = 'word2vec' needs gensim (pip install gensim), or give a vectors "
                           "file in word2vec/GloVe text format instead") from error
    sentences = [tokenize(c) for c in captions]
    model = Word2Vec(sentences, vector_size=dim, window=5, min_count=1, sg=1, seed=seed, workers=1, epochs=epochs)
    return {word: model.wv[word] for word in model.wv.index_to_key}


def initialise_embedding(embedding: torch.nn.Embedding, vocab: Vocabulary, vectors: dict[str, np.ndarray]) -> int:
    """Copy the vectors of vocabulary words into `embedding` (scaled to its current spread, so the
    rest of the network sees inputs of the size it was initialised for); returns how many."""
    dim = embedding.weight.shape[1]
    found = [(vocab.index[w], v) for w, v in vectors.items() if w in vocab.index and vocab.index[w] > 3]
    if not found:
        return 0
    if len(found[0][1]) != dim:
        raise ValueError(f"word vectors are {len(found[0][1])}-d but the embedding is {dim}-d: set word_dim")
    rows = torch.as_tensor(np.stack([v for _, v in found]))
    with torch.no_grad():
        scale = embedding.weight.std() / rows.std().clamp_min(1e-8)
        embedding.weight[torch.tensor([i for i, _ in found])] = rows * scale
    return len(found)
