"""GXN's "look and describe" branch: caption decoders over image regions.

Three decoders share one set of loops (teacher-forced loss, greedy, sampling, beam search), each
supplying `begin` (the state from the image) and `step` (one word for every stage):

- `attention` (single stage): a GRU with additive attention over the regions, started from the
  concrete image feature v.

      h_0 = tanh(W_init v)
      a_t = softmax_r(w . tanh(U r_r + V h_{t-1}))     over regions r_1..r_R (a CNN's map cells)
      h_t = GRU([embed(y_{t-1}); sum_r a_t,r r_r], h_{t-1});  p(y_t) = softmax(W_out h_t)

- `cnn_l` (Gu et al., ICCV 2017): the same, plus a language CNN over the previous words (a window
  of the last `history` embeddings, oldest first, zeros before the caption starts) whose pooled
  output joins the GRU's input and the output layer at every step: the recurrent state no longer
  has to carry the whole history alone.

- `stack_cap` (Gu et al., AAAI 2018): a coarse stage (GRU on the word and the mean region, no
  attention), then `fine_stages` fine stages run in lockstep with it. Fine stage i attends with its
  own state and stage i-1's new state, and its attention logits add log a^{i-1} (uniform after the
  coarse stage): the previous stage's weights are reused and refined, not recomputed. Stage i-1's
  state also joins stage i's GRU input. Every stage is supervised; the last one speaks.

Each stage reads its own previous word, so greedy decoding and sampling give one caption per stage
(the multi-stage self-critical reward needs them); under teacher forcing all read the true word.
Token ids are a `Vocabulary`'s, with <start>/<end> around each caption.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.vocab import END, PAD, START, Vocabulary

State = dict[str, torch.Tensor]  # every tensor batch-first, so a beam selects rows of all of them
DECODERS = ("attention", "cnn_l", "stack_cap")


class CaptionDecoder(nn.Module):
    """The loops. Subclasses set `stages` and implement `begin` and `step`."""

    stages = 1

    def __init__(self, vocab: Vocabulary, word_dim: int, max_length: int):
        super().__init__()
        self.vocab, self.max_length = vocab, max_length
        self.start, self.end, self.pad = vocab.index[START], vocab.index[END], vocab.index[PAD]
        self.embed = nn.Embedding(len(vocab), word_dim, padding_idx=self.pad)

    def begin(self, features: torch.Tensor, regions: torch.Tensor) -> State:
        raise NotImplementedError

    def step(self, words: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """words (stages, N) -> (log-probabilities (stages, N, vocabulary), the next state)."""
        raise NotImplementedError

    def _first_words(self, count: int, device: torch.device) -> torch.Tensor:
        return torch.full((self.stages, count), self.start, dtype=torch.long, device=device)

    def _banned(self, log_probs: torch.Tensor) -> torch.Tensor:
        """Never emit padding or a second <start>."""
        log_probs = log_probs.clone()
        log_probs[..., [self.pad, self.start]] = float("-inf")
        return log_probs

    def loss(self, features: torch.Tensor, regions: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Cross-entropy per word of the captions (each ended by <end>), teacher forced; summed over
        the stages (each supervised, as Stack-Cap trains them), so a decoder with S stages reports
        S times a one-stage loss of the same quality."""
        targets = [self.vocab.encode(c)[: self.max_length - 1] + [self.end] for c in captions]
        tokens = torch.full((len(targets), max(map(len, targets))), self.pad, dtype=torch.long)
        for row, ids in enumerate(targets):
            tokens[row, : len(ids)] = torch.tensor(ids)
        tokens = tokens.to(features.device)
        state = self.begin(features, regions)
        words = self._first_words(len(targets), features.device)
        total = features.new_zeros(())
        for t in range(tokens.shape[1]):
            log_probs, state = self.step(words, state)
            truth = tokens[:, t].expand(self.stages, -1)
            total = total + F.nll_loss(log_probs.flatten(0, 1), truth.flatten(), ignore_index=self.pad,
                                       reduction="sum")
            words = truth
        return total / (tokens != self.pad).sum().clamp_min(1)

    @torch.no_grad()
    def greedy(self, features: torch.Tensor, regions: torch.Tensor) -> list[list[int]]:
        """The most likely word at each step, until <end> or `max_length` words (ids, <end> dropped)."""
        return self.greedy_stages(features, regions)[-1]

    @torch.no_grad()
    def greedy_stages(self, features: torch.Tensor, regions: torch.Tensor) -> list[list[list[int]]]:
        """Every stage's greedy caption (each stage fed its own words): [stage][image] -> ids."""
        state = self.begin(features, regions)
        words = self._first_words(len(features), features.device)
        out = [[[] for _ in range(len(features))] for _ in range(self.stages)]
        finished = torch.zeros(self.stages, len(features), dtype=torch.bool, device=features.device)
        for _ in range(self.max_length):
            log_probs, state = self.step(words, state)
            words = self._banned(log_probs).argmax(dim=-1)
            finished = self._extend(out, words, finished)
            if finished.all():
                break
        return out

    def sample(self, features: torch.Tensor, regions: torch.Tensor) -> tuple[list[list[list[int]]], torch.Tensor]:
        """Captions drawn word by word from every stage (for self-critical training): the ids
        [stage][image] (<end> dropped) and each caption's summed log-probability (stages, N), with
        gradient."""
        state = self.begin(features, regions)
        words = self._first_words(len(features), features.device)
        out = [[[] for _ in range(len(features))] for _ in range(self.stages)]
        finished = torch.zeros(self.stages, len(features), dtype=torch.bool, device=features.device)
        total = features.new_zeros(self.stages, len(features))
        for _ in range(self.max_length):
            log_probs, state = self.step(words, state)
            # re-normalised without the banned words: REINFORCE needs the log-probability of the
            # distribution the words are actually drawn from
            log_probs = self._banned(log_probs).log_softmax(dim=-1)
            flat = log_probs.detach().exp().flatten(0, 1)
            words = torch.multinomial(flat, 1).view(self.stages, -1)
            total = total + log_probs.gather(2, words[..., None]).squeeze(2) * (~finished)
            finished = self._extend(out, words, finished)
            if finished.all():
                break
        return out, total

    def _extend(self, out: list[list[list[int]]], words: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
        """Append this step's word to each caption still running (not <end>); the new finished mask."""
        done = finished.tolist()  # one device sync per step, not one per row
        for stage, (stage_words, stage_done) in enumerate(zip(words.tolist(), done, strict=True)):
            for row, word in enumerate(stage_words):
                if not stage_done[row] and word != self.end:
                    out[stage][row].append(word)
        return finished | (words == self.end)

    @torch.no_grad()
    def beam(self, features: torch.Tensor, regions: torch.Tensor, width: int = 3,
             length_alpha: float = 1.0) -> list[list[int]]:
        """Beam search per image on the last stage; the finished (or longest) beam with the best
        log-probability / length^length_alpha (1: the mean per word; 0: the sum, which favours short
        captions; between, a milder pull towards length). Earlier stages follow each beam greedily."""
        return [self._beam_one(features[i:i + 1], regions[i:i + 1], width, length_alpha)
                for i in range(len(features))]

    def _beam_one(self, feature: torch.Tensor, regions: torch.Tensor, width: int, length_alpha: float) -> list[int]:
        """The live beams advance together, one decoder step for all of them; each step keeps the
        `width` best continuations over every beam and word. A beam ending in <end> is set aside
        with its length-normalised log-probability."""
        width = max(1, min(width, len(self.vocab) - 2))  # never wider than the words it may emit
        state = self.begin(feature, regions)
        sequences: list[list[int]] = [[]]
        scores = feature.new_zeros(1)
        words = self._first_words(1, feature.device)
        finished: list[tuple[float, list[int]]] = []
        for _ in range(self.max_length):
            log_probs, state = self.step(words, state)
            log_probs = self._banned(log_probs)
            top = (scores[:, None] + log_probs[-1]).flatten().topk(width)
            kept_beams, kept_sequences, kept_scores = [], [], []
            for value, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                beam, word = divmod(flat, log_probs.shape[-1])
                sequence = sequences[beam] + [word]
                if word == self.end:
                    finished.append((value / len(sequence) ** length_alpha, sequence[:-1]))
                else:
                    kept_beams.append(beam)
                    kept_sequences.append(sequence)
                    kept_scores.append(value)
            if not kept_sequences:
                break
            chosen = torch.tensor(kept_beams, device=feature.device)
            state = {name: value[chosen] for name, value in state.items()}
            earlier = log_probs[:-1].argmax(dim=-1)[:, chosen]
            sequences, scores = kept_sequences, torch.tensor(kept_scores, device=feature.device)
            last = torch.tensor([sequence[-1] for sequence in sequences], device=feature.device)
            words = torch.cat([earlier, last[None]])
        else:
            finished += [(score / len(sequence) ** length_alpha, sequence)
                         for score, sequence in zip(scores.tolist(), sequences, strict=True)]
        return max(finished, key=lambda f: f[0])[1]

    def decode(self, ids: list[int]) -> str:
        return self.vocab.decode(ids)


def additive_attention(projected: torch.Tensor, regions: torch.Tensor, query: torch.Tensor, score: nn.Linear,
                       prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits w . tanh(U r + V q) over regions, plus log(prior) when given -> (context (N, C),
    weights (N, R, 1)). `projected` is U r (made once per image), `query` is V q."""
    logits = score(torch.tanh(projected + query[:, None]))
    if prior is not None:
        logits = logits + prior.clamp_min(1e-8).log()
    weights = logits.softmax(dim=1)
    return (weights * regions).sum(dim=1), weights


class _Attention(nn.Module):
    """The layers of one `additive_attention`."""

    def __init__(self, region_dim: int, query_dim: int, attention_dim: int):
        super().__init__()
        self.attend_region = nn.Linear(region_dim, attention_dim)
        self.attend_hidden = nn.Linear(query_dim, attention_dim)
        self.attention_score = nn.Linear(attention_dim, 1)

    def forward(self, projected: torch.Tensor, regions: torch.Tensor, query: torch.Tensor,
                prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return additive_attention(projected, regions, self.attend_hidden(query), self.attention_score, prior)


class AttentionDecoder(CaptionDecoder):
    """Single stage: a GRU with attention over the regions (optionally with the language CNN)."""

    def __init__(self, vocab: Vocabulary, feature_dim: int, region_dim: int, word_dim: int = 128,
                 hidden_dim: int = 256, attention_dim: int = 128, max_length: int = 20, dropout: float = 0.0,
                 language_cnn: int = 0, history: int = 16):
        super().__init__(vocab, word_dim, max_length)
        self.init_hidden = nn.Linear(feature_dim, hidden_dim)
        # the attention layers keep their names from before the decoders shared a base class, so
        # that older checkpoints still load
        self.attend_region = nn.Linear(region_dim, attention_dim)
        self.attend_hidden = nn.Linear(hidden_dim, attention_dim)
        self.attention_score = nn.Linear(attention_dim, 1)
        self.history = history
        self.language_cnn = LanguageCNN(word_dim, language_cnn) if language_cnn else None
        extra = language_cnn
        self.cell = nn.GRUCell(word_dim + region_dim + extra, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim + extra, len(vocab))

    def begin(self, features: torch.Tensor, regions: torch.Tensor) -> State:
        state = {"hidden": torch.tanh(self.init_hidden(features)), "regions": regions,
                 "projected": self.attend_region(regions)}
        if self.language_cnn is not None:
            state["history"] = features.new_zeros(len(features), self.history, self.embed.embedding_dim)
        return state

    def step(self, words: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        word = self.embed(words[0])
        hidden = state["hidden"]
        context, _ = additive_attention(state["projected"], state["regions"], self.attend_hidden(hidden),
                                        self.attention_score)
        state = dict(state)
        inputs = [word, context]
        if self.language_cnn is not None:
            state["history"] = torch.cat([state["history"][:, 1:], word[:, None]], dim=1)
            inputs.append(self.language_cnn(state["history"]))
        hidden = self.cell(torch.cat(inputs, dim=1), hidden)
        state["hidden"] = hidden
        readout = torch.cat([hidden, inputs[2]], dim=1) if self.language_cnn is not None else hidden
        return F.log_softmax(self.out(self.dropout(readout)), dim=-1)[None], state


class LanguageCNN(nn.Module):
    """CNN_L: convolutions over a window of word embeddings (N, L, D) -> one vector (N, C),
    max-pooled over the window."""

    def __init__(self, word_dim: int, channels: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv1d(word_dim, channels, 3, padding=1), nn.ReLU(),
                                    nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU(),
                                    nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU())

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return self.layers(window.transpose(1, 2)).amax(dim=2)


class StackCapDecoder(CaptionDecoder):
    """A coarse stage and `fine_stages` fine stages with stacked attention (see the module docstring)."""

    def __init__(self, vocab: Vocabulary, feature_dim: int, region_dim: int, word_dim: int = 128,
                 hidden_dim: int = 256, attention_dim: int = 128, max_length: int = 20, dropout: float = 0.0,
                 fine_stages: int = 1):
        super().__init__(vocab, word_dim, max_length)
        if fine_stages < 1:
            raise ValueError(f"stack_cap needs at least one fine stage, got {fine_stages}")
        self.stages = 1 + fine_stages
        self.init_hidden = nn.ModuleList(nn.Linear(feature_dim, hidden_dim) for _ in range(self.stages))
        self.coarse = nn.GRUCell(word_dim + region_dim, hidden_dim)
        self.attention = nn.ModuleList(_Attention(region_dim, 2 * hidden_dim, attention_dim)
                                       for _ in range(fine_stages))
        self.fine = nn.ModuleList(nn.GRUCell(word_dim + region_dim + hidden_dim, hidden_dim)
                                  for _ in range(fine_stages))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.ModuleList(nn.Linear(hidden_dim, len(vocab)) for _ in range(self.stages))

    def begin(self, features: torch.Tensor, regions: torch.Tensor) -> State:
        state = {f"hidden{i}": torch.tanh(layer(features)) for i, layer in enumerate(self.init_hidden)}
        state["regions"], state["mean_region"] = regions, regions.mean(dim=1)
        for i, attention in enumerate(self.attention):
            state[f"projected{i}"] = attention.attend_region(regions)
        return state

    def step(self, words: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        embedded = self.embed(words)  # (stages, N, D)
        new = dict(state)
        below = self.coarse(torch.cat([embedded[0], state["mean_region"]], dim=1), state["hidden0"])
        new["hidden0"], outputs = below, [below]
        weights = None  # uniform after the coarse stage, which does not attend
        for i, (attention, cell) in enumerate(zip(self.attention, self.fine, strict=True)):
            own = state[f"hidden{i + 1}"]
            context, weights = attention(state[f"projected{i}"], state["regions"], torch.cat([own, below], dim=1),
                                         prior=weights)
            below = cell(torch.cat([embedded[i + 1], context, below], dim=1), own)
            new[f"hidden{i + 1}"] = below
            outputs.append(below)
        log_probs = [F.log_softmax(out(self.dropout(h)), dim=-1) for out, h in zip(self.out, outputs, strict=True)]
        return torch.stack(log_probs), new


def stage_advantages(rewards: torch.Tensor, baselines: torch.Tensor) -> torch.Tensor:
    """Stack-Cap's self-critical advantage per stage (rows) and image (columns):
    stage i's sample is rewarded against its own greedy caption, and (from the first fine stage
    on) against the previous stage's sample:  [r(y~i) - r(y^i)] + [r(y~i) - r(y~i-1)].
    With one stage this is plain SCST: r(y~) - r(y^)."""
    if rewards.dim() != 2 or rewards.shape != baselines.shape:
        raise ValueError(f"rewards and baselines must both be (stages, images), got {tuple(rewards.shape)} "
                         f"and {tuple(baselines.shape)}")
    advantages = rewards - baselines
    advantages[1:] = advantages[1:] + rewards[1:] - rewards[:-1]
    return advantages


def leave_one_out_baseline(rewards: torch.Tensor, samples: int) -> torch.Tensor:
    """rewards (stages, N * samples), each image's samples side by side -> for every sample the mean
    reward of its image's *other* samples: a baseline that needs no extra decoding and does not
    depend on the sample it judges."""
    if samples < 2 or rewards.shape[-1] % samples:
        raise ValueError(f"a leave-one-out baseline needs >= 2 samples per image and a multiple of them, "
                         f"got {samples} samples and {rewards.shape[-1]} rewards")
    grouped = rewards.view(rewards.shape[0], -1, samples)
    return ((grouped.sum(dim=-1, keepdim=True) - grouped) / (samples - 1)).view_as(rewards)


def self_critical_loss(decoder: CaptionDecoder, cider: Any, features: torch.Tensor, regions: torch.Tensor,
                       references: list[list[str]], samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE on the caption reward: -sum_stages advantage * log p(sample), averaged over samples.

    With one sample per image the baseline is each stage's greedy caption (Rennie et al.); with
    `samples` >= 2 it is the mean reward of the image's other samples (`leave_one_out_baseline`).
    For Stack-Cap's fine stages the previous stage's sample counts too (`stage_advantages`).
    `cider` scores the captions (`CiderD.scores`) against `references`, one list per image.
    Returns (the loss, the last stage's mean sampled reward)."""
    if samples < 1:
        raise ValueError(f"self-critical training needs at least one sample per image, got {samples}")

    def rewards(stages: list[list[list[int]]], refs: list[list[str]]) -> torch.Tensor:
        return torch.stack([torch.as_tensor(cider.scores([decoder.decode(c) for c in captions], refs),
                                            dtype=features.dtype) for captions in stages]).to(features.device)

    if samples == 1:
        sampled, log_prob = decoder.sample(features, regions)
        was_training = decoder.training
        decoder.eval()  # the baseline is the caption the model would give, without dropout
        greedy = decoder.greedy_stages(features.detach(), regions.detach())
        decoder.train(was_training)
        reward = rewards(sampled, references)
        baseline = rewards(greedy, references)
    else:
        references = [refs for refs in references for _ in range(samples)]
        sampled, log_prob = decoder.sample(features.repeat_interleave(samples, dim=0),
                                           regions.repeat_interleave(samples, dim=0))
        reward = rewards(sampled, references)
        baseline = leave_one_out_baseline(reward, samples)
    advantage = stage_advantages(reward, baseline)
    return -(advantage * log_prob).sum(dim=0).mean(), reward[-1].mean().detach().cpu()


def build_caption_decoder(kind: str, vocab: Vocabulary, feature_dim: int, region_dim: int,
                          options: dict[str, Any]) -> CaptionDecoder:
    """`caption.decoder`: attention | cnn_l | stack_cap, with the caption section's sizes."""
    sizes = {"word_dim": options.get("word_dim", 256), "hidden_dim": options.get("hidden_dim", 512),
             "attention_dim": options.get("attention_dim", 256), "max_length": options.get("max_length", 20),
             "dropout": float(options.get("dropout", 0.0))}
    if kind == "attention":
        return AttentionDecoder(vocab, feature_dim, region_dim, **sizes)
    if kind == "cnn_l":
        return AttentionDecoder(vocab, feature_dim, region_dim, **sizes,
                                language_cnn=int(options.get("language_cnn_channels", 256)),
                                history=int(options.get("history", 16)))
    if kind == "stack_cap":
        return StackCapDecoder(vocab, feature_dim, region_dim, **sizes, fine_stages=int(options.get("fine_stages", 1)))
    raise ValueError(f"caption.decoder {kind!r}: expected one of {', '.join(DECODERS)}")
