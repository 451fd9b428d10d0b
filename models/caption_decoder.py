"""GXN's "look and describe" branch: a GRU caption decoder with additive attention
over image regions, started from the concrete image feature.

    h_0 = tanh(W_init v)                        v: the concrete image feature
    a_t = softmax_r(w . tanh(U r_r + V h_{t-1}))  over regions r_1..r_R (e.g. a CNN's feature-map cells)
    h_t = GRU([embed(y_{t-1}); sum_r a_t,r r_r], h_{t-1});  p(y_t) = softmax(W_out h_t)

Trained with cross-entropy under teacher forcing (and, optionally, self-critically from `sample`);
decoded greedily or with a beam. Token ids are
a `Vocabulary`'s, with <start>/<end> around each caption.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.vocab import END, PAD, START, Vocabulary


class CaptionDecoder(nn.Module):
    def __init__(self, vocab: Vocabulary, feature_dim: int, region_dim: int, word_dim: int = 128,
                 hidden_dim: int = 256, attention_dim: int = 128, max_length: int = 20):
        super().__init__()
        self.vocab, self.max_length = vocab, max_length
        self.start, self.end, self.pad = vocab.index[START], vocab.index[END], vocab.index[PAD]
        self.embed = nn.Embedding(len(vocab), word_dim, padding_idx=self.pad)
        self.init_hidden = nn.Linear(feature_dim, hidden_dim)
        self.attend_region = nn.Linear(region_dim, attention_dim)
        self.attend_hidden = nn.Linear(hidden_dim, attention_dim)
        self.attention_score = nn.Linear(attention_dim, 1)
        self.cell = nn.GRUCell(word_dim + region_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, len(vocab))

    def _step(self, words: torch.Tensor, hidden: torch.Tensor, regions: torch.Tensor,
              projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: (log-probabilities over the vocabulary, the new hidden state)."""
        weights = self.attention_score(torch.tanh(projected + self.attend_hidden(hidden)[:, None])).softmax(dim=1)
        context = (weights * regions).sum(dim=1)
        hidden = self.cell(torch.cat([self.embed(words), context], dim=1), hidden)
        return F.log_softmax(self.out(hidden), dim=-1), hidden

    def loss(self, features: torch.Tensor, regions: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Mean cross-entropy per word of the captions (each ended by <end>), teacher forced."""
        targets = [self.vocab.encode(c)[: self.max_length - 1] + [self.end] for c in captions]
        tokens = torch.full((len(targets), max(map(len, targets))), self.pad, dtype=torch.long)
        for row, ids in enumerate(targets):
            tokens[row, : len(ids)] = torch.tensor(ids)
        tokens = tokens.to(features.device)
        hidden, projected = torch.tanh(self.init_hidden(features)), self.attend_region(regions)
        previous = torch.full((len(targets),), self.start, dtype=torch.long, device=features.device)
        losses = []
        for t in range(tokens.shape[1]):
            log_probs, hidden = self._step(previous, hidden, regions, projected)
            losses.append(F.nll_loss(log_probs, tokens[:, t], ignore_index=self.pad, reduction="sum"))
            previous = tokens[:, t]
        return torch.stack(losses).sum() / (tokens != self.pad).sum().clamp_min(1)

    @torch.no_grad()
    def greedy(self, features: torch.Tensor, regions: torch.Tensor) -> list[list[int]]:
        """The most likely word at each step, until <end> or `max_length` words (ids, <end> dropped)."""
        hidden, projected = torch.tanh(self.init_hidden(features)), self.attend_region(regions)
        words = torch.full((len(features),), self.start, dtype=torch.long, device=features.device)
        out: list[list[int]] = [[] for _ in range(len(features))]
        finished = torch.zeros(len(features), dtype=torch.bool, device=features.device)
        for _ in range(self.max_length):
            log_probs, hidden = self._step(words, hidden, regions, projected)
            log_probs[:, [self.pad, self.start]] = float("-inf")  # never emit padding or a second <start>
            words = log_probs.argmax(dim=-1)
            finished = self._extend(out, words, finished)
            if finished.all():
                break
        return out

    def sample(self, features: torch.Tensor, regions: torch.Tensor) -> tuple[list[list[int]], torch.Tensor]:
        """Captions drawn word by word from the model (for self-critical training): the ids (<end>
        dropped) and each caption's summed log-probability, with gradient."""
        hidden, projected = torch.tanh(self.init_hidden(features)), self.attend_region(regions)
        words = torch.full((len(features),), self.start, dtype=torch.long, device=features.device)
        banned = torch.zeros(len(self.vocab), dtype=torch.bool, device=features.device)
        banned[[self.pad, self.start]] = True
        out: list[list[int]] = [[] for _ in range(len(features))]
        finished = torch.zeros(len(features), dtype=torch.bool, device=features.device)
        total = features.new_zeros(len(features))
        for _ in range(self.max_length):
            log_probs, hidden = self._step(words, hidden, regions, projected)
            # re-normalised without the banned words: REINFORCE needs the log-probability of the
            # distribution the words are actually drawn from
            log_probs = log_probs.masked_fill(banned, float("-inf")).log_softmax(dim=-1)
            words = torch.multinomial(log_probs.detach().exp(), 1).squeeze(1)
            total = total + log_probs.gather(1, words[:, None]).squeeze(1) * (~finished)
            finished = self._extend(out, words, finished)
            if finished.all():
                break
        return out, total

    def _extend(self, out: list[list[int]], words: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
        """Append this step's word to each caption still running (not <end>); the new finished mask."""
        done = finished.tolist()  # one device sync per step, not one per row
        for row, word in enumerate(words.tolist()):
            if not done[row] and word != self.end:
                out[row].append(word)
        return finished | (words == self.end)

    @torch.no_grad()
    def beam(self, features: torch.Tensor, regions: torch.Tensor, width: int = 3) -> list[list[int]]:
        """Beam search per image; the finished (or longest) beam with the best mean log-probability."""
        return [self._beam_one(features[i:i + 1], regions[i:i + 1], width) for i in range(len(features))]

    def _beam_one(self, feature: torch.Tensor, regions: torch.Tensor, width: int) -> list[int]:
        """The live beams advance together, one decoder step for all of them; each step keeps the
        `width` best continuations over every beam and word. A beam ending in <end> is set aside
        with its mean log-probability per word."""
        width = max(1, min(width, len(self.vocab) - 2))  # never wider than the words it may emit
        hidden, projected = torch.tanh(self.init_hidden(feature)), self.attend_region(regions)
        sequences: list[list[int]] = [[]]
        scores = feature.new_zeros(1)
        words = torch.tensor([self.start], device=feature.device)
        finished: list[tuple[float, list[int]]] = []
        for _ in range(self.max_length):
            live = len(sequences)
            log_probs, hidden = self._step(words, hidden, regions.expand(live, -1, -1),
                                           projected.expand(live, -1, -1))
            log_probs[:, [self.pad, self.start]] = float("-inf")
            top = (scores[:, None] + log_probs).flatten().topk(width)
            kept_beams, kept_sequences, kept_scores = [], [], []
            for value, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                beam, word = divmod(flat, log_probs.shape[1])
                sequence = sequences[beam] + [word]
                if word == self.end:
                    finished.append((value / len(sequence), sequence[:-1]))
                else:
                    kept_beams.append(beam)
                    kept_sequences.append(sequence)
                    kept_scores.append(value)
            if not kept_sequences:
                break
            chosen = torch.tensor(kept_beams, device=feature.device)
            hidden, sequences = hidden[chosen], kept_sequences
            scores = torch.tensor(kept_scores, device=feature.device)
            words = torch.tensor([sequence[-1] for sequence in sequences], device=feature.device)
        else:
            finished += [(score / len(sequence), sequence)
                         for score, sequence in zip(scores.tolist(), sequences, strict=True)]
        return max(finished, key=lambda f: f[0])[1]

    def decode(self, ids: list[int]) -> str:
        return self.vocab.decode(ids)
