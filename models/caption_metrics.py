"""Caption quality: corpus BLEU-4 (Papineni et al.) and CIDEr-D (Vedantam et al.), our own code.

CIDEr-D, for a candidate c and the references S of its image, over n = 1..4:
    g_n(x)[w] = count of n-gram w in x * log(N / max(1, df(w)))    (TF-IDF; N images, df over their
                                                                      reference sets)
    sim_n(c, s) = sum_w min(g_n(c)[w], g_n(s)[w]) * g_n(s)[w] / (|g_n(c)| |g_n(s)|)   (clipped)
                  * exp(-(len(c) - len(s))^2 / (2 sigma^2))                          (length penalty)
    CIDEr-D(c, S) = 10 * mean_n mean_{s in S} sim_n(c, s)
The document frequencies come from a reference corpus (`CiderD(references)`), so a reward for
self-critical training is computed against the training captions, an evaluation against val's.

As a self-critical reward, `CiderD(..., mark_end=True)` ends every caption, candidate and reference,
with an end-of-caption token before counting n-grams: a caption that stops mid-phrase ("a man is
riding a") then loses the n-grams that end a reference ("a horse <end>") instead of scoring like
its complete prefix, which is what lets self-critical training learn dangling endings.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from models.vocab import tokenize

MAX_N = 4
END_OF_CAPTION = "<end>"  # never a word: the tokenizer splits it into "<", "end", ">"


def words(text: str) -> list[str]:
    """Lower-case word tokens, punctuation dropped (as the COCO caption tools do)."""
    return [t for t in tokenize(text) if any(ch.isalnum() for ch in t)]


def ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = MAX_N) -> float:
    """Corpus BLEU: clipped n-gram precisions pooled over the corpus, their geometric mean, times
    the brevity penalty against the closest reference length (0 when any precision is 0)."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
    matched, total = [0] * max_n, [0] * max_n
    candidate_length = reference_length = 0
    for candidate, refs in zip(candidates, references, strict=True):
        tokens, ref_tokens = words(candidate), [words(r) for r in refs]
        candidate_length += len(tokens)
        reference_length += min((abs(len(r) - len(tokens)), len(r)) for r in ref_tokens)[1]
        for n in range(1, max_n + 1):
            counts = ngrams(tokens, n)
            most = Counter()
            for r in ref_tokens:
                most |= ngrams(r, n)  # the largest count of each n-gram in any one reference
            matched[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            total[n - 1] += max(0, len(tokens) - n + 1)
    if candidate_length == 0 or min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total, strict=True)) / max_n
    brevity = 1.0 if candidate_length > reference_length else math.exp(1 - reference_length / candidate_length)
    return brevity * math.exp(log_precision)


class CiderD:
    """CIDEr-D with document frequencies from `corpus` (one list of reference captions per image);
    `mark_end` counts an end-of-caption token as the last word of every caption."""

    def __init__(self, corpus: Sequence[Sequence[str]], sigma: float = 6.0, mark_end: bool = False):
        self.sigma, self.mark_end = sigma, mark_end
        self.log_images = math.log(max(1, len(corpus)))
        self.document_frequency: Counter = Counter()
        for refs in corpus:
            seen = set()
            for ref in refs:
                tokens = self._tokens(ref)
                for n in range(1, MAX_N + 1):
                    seen.update(ngrams(tokens, n))
            self.document_frequency.update(seen)

    def _tokens(self, caption: str) -> list[str]:
        tokens = words(caption)
        return tokens + [END_OF_CAPTION] if self.mark_end and tokens else tokens

    def _vectors(self, tokens: list[str]) -> list[tuple[dict, float]]:
        """Per n: the TF-IDF vector and its norm."""
        out = []
        for n in range(1, MAX_N + 1):
            vector = {g: c * (self.log_images - math.log(max(1.0, self.document_frequency[g])))
                      for g, c in ngrams(tokens, n).items()}
            out.append((vector, math.sqrt(sum(v * v for v in vector.values()))))
        return out

    def score(self, candidate: str, references: Sequence[str]) -> float:
        tokens = self._tokens(candidate)
        hypothesis = self._vectors(tokens)
        total = 0.0
        for ref in references:
            ref_tokens = self._tokens(ref)
            penalty = math.exp(-((len(tokens) - len(ref_tokens)) ** 2) / (2 * self.sigma ** 2))
            for (vec_h, norm_h), (vec_r, norm_r) in zip(hypothesis, self._vectors(ref_tokens), strict=True):
                if norm_h and norm_r:
                    clipped = sum(min(v, vec_r.get(g, 0.0)) * vec_r.get(g, 0.0) for g, v in vec_h.items())
                    total += penalty * clipped / (norm_h * norm_r)
        return 10.0 * total / (MAX_N * max(1, len(references)))

    def scores(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """One score per candidate (e.g. a reward per sampled caption)."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
        return np.array([self.score(c, r) for c, r in zip(candidates, references, strict=True)])


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], sigma: float = 6.0) -> float:
    """Corpus CIDEr-D: the mean score, document frequencies from these references themselves."""
    return float(CiderD(references, sigma).scores(candidates, references).mean()) if candidates else 0.0
