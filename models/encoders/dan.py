"""m-DAN (Nam et al., CVPR 2017, "Dual Attention Networks for Multimodal Reasoning and Matching").

Image: the frozen CNN's region features v_n (EfficientNet-Lite's last map: 7 x 7 = 49 regions at
224 px). Text: one state u_t per word, from a bidirectional GRU/LSTM over word embeddings (the
mean of its two directions) or from a frozen sentence transformer's token states through a
learned head (`token_towers.py`).

Step 0 averages; each modality's memory starts there:

    v(0) = tanh(P_0 mean_n v_n),   u(0) = mean_t u_t,   m_v(0) = v(0),   m_u(0) = u(0)

Steps k = 1..K attend, each guided by its own modality's memory:

    a_n = softmax_n(w_v . [tanh(W_v v_n) * tanh(W_vm m_v(k-1))]),   v(k) = tanh(P_k sum_n a_n v_n)
    b_t = softmax_t(w_u . [tanh(W_u u_t) * tanh(W_um m_u(k-1))]),   u(k) = sum_t b_t u_t
    m_v(k) = m_v(k-1) + v(k),                                        m_u(k) = m_u(k-1) + u(k)

so an image's vectors depend on the image alone and a text's on the text alone. The similarity

    S(v, u) = 1/(K+1) sum_k cos(v(k), u(k))

is the inner product of e(x) = [x(0)/|x(0)|; ...; x(K)/|x(K)|] / sqrt(K+1), a unit vector of
(K+1) * step_dim numbers: the index stores e(image), a query is e(text), and faiss ranks by S.
The paper sums raw products v(k) . u(k). Here each step is a cosine, a change to the model (every
step counts alike, whatever its vectors' lengths, and e is unit length); dividing the sum by the
constant K+1 then changes no ranking.

Loss: the bidirectional ranking loss on S (hardest negative as VSE++; the sum of hinges or
InfoNCE as options). K = 0 is the average-pooled baseline (`attention.steps`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from models.data import BackboneFeatures
from models.encoders.base import Encoder, ImageBatch, l2_normalize
from models.encoders.image_towers import BackboneTower
from models.encoders.registry import register_family
from models.encoders.text_towers import sentence_tower_files
from models.encoders.token_towers import build_token_tower
from models.losses import build_ranking_loss, ranking_loss
from models.vocab import Vocabulary


class MemoryAttention(nn.Module):
    """One attention step over N items, guided by a memory vector; returns weights summing to one
    over each row's valid items."""

    def __init__(self, item_dim: int, memory_dim: int, hidden_dim: int):
        super().__init__()
        self.item, self.memory, self.score = (nn.Linear(item_dim, hidden_dim), nn.Linear(memory_dim, hidden_dim),
                                              nn.Linear(hidden_dim, 1))

    def forward(self, items: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        joint = torch.tanh(self.item(items)) * torch.tanh(self.memory(memory)).unsqueeze(1)
        logits = self.score(joint).squeeze(-1)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return logits.softmax(dim=-1)


class VisualAttention(nn.Module):
    """Regions (B, N, C) -> v(0..K), each (B, step_dim), and the K steps' weights (B, K, N)."""

    def __init__(self, region_dim: int, step_dim: int, hidden_dim: int, steps: int):
        super().__init__()
        self.project = nn.ModuleList(nn.Linear(region_dim, step_dim) for _ in range(steps + 1))
        self.attend = nn.ModuleList(MemoryAttention(region_dim, step_dim, hidden_dim) for _ in range(steps))

    def forward(self, regions: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        v = torch.tanh(self.project[0](regions.mean(dim=1)))
        memory, outputs, weights = v, [v], []
        for attend, project in zip(self.attend, self.project[1:], strict=True):
            a = attend(regions, memory)
            v = torch.tanh(project((a.unsqueeze(-1) * regions).sum(dim=1)))
            memory = memory + v
            outputs.append(v)
            weights.append(a)
        return outputs, _stack_weights(weights, regions)


class TextualAttention(nn.Module):
    """Word states (B, T, d) with their mask -> u(0..K), each (B, d), and the weights (B, K, T)."""

    def __init__(self, step_dim: int, hidden_dim: int, steps: int):
        super().__init__()
        self.attend = nn.ModuleList(MemoryAttention(step_dim, step_dim, hidden_dim) for _ in range(steps))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        valid = mask.unsqueeze(-1).to(states.dtype)
        u = (states * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)
        memory, outputs, weights = u, [u], []
        for attend in self.attend:
            b = attend(states, memory, mask)
            u = (b.unsqueeze(-1) * states).sum(dim=1)
            memory = memory + u
            outputs.append(u)
            weights.append(b)
        return outputs, _stack_weights(weights, states)


def _stack_weights(weights: list[torch.Tensor], items: torch.Tensor) -> torch.Tensor:
    return torch.stack(weights, dim=1) if weights else items.new_zeros(len(items), 0, items.shape[1])


def join_steps(steps: Sequence[torch.Tensor]) -> torch.Tensor:
    """The served vector [x(0)/|x(0)|; ...; x(K)/|x(K)|] / sqrt(K+1): unit length, and the inner
    product of an image's and a text's is S, the mean of the steps' cosines."""
    scale = 1.0 / math.sqrt(len(steps))
    return torch.cat([scale * l2_normalize(step) for step in steps], dim=1)


def dual_similarity(image_steps: Sequence[torch.Tensor], text_steps: Sequence[torch.Tensor]) -> torch.Tensor:
    """S[i, j] = 1/(K+1) sum_k cos(v_i(k), u_j(k)), computed step by step (what `join_steps` serves)."""
    cosines = [l2_normalize(v) @ l2_normalize(u).t() for v, u in zip(image_steps, text_steps, strict=True)]
    return torch.stack(cosines).mean(dim=0)


@register_family("dan")
class DAN(Encoder):
    family = "dan"

    def __init__(self, name: str, config: dict[str, Any], vocab: Vocabulary | None = None,
                 extra: dict[str, Any] | None = None):
        attention = config.get("attention", {})
        self.steps = int(attention.get("steps", 2))
        step_dim = int(attention.get("step_dim", 512))
        if self.steps < 0 or step_dim <= 0:
            raise ValueError(f"dan: attention.steps must be >= 0 and step_dim > 0, got {self.steps}, {step_dim}")
        served = (self.steps + 1) * step_dim
        if config.get("embed_dim") not in (None, served):
            raise ValueError(f"dan: embed_dim is (attention.steps + 1) * attention.step_dim = {served}, "
                             f"got {config['embed_dim']} (leave it out)")
        super().__init__(name, {**config, "embed_dim": served})
        self.image_tower = BackboneTower(config.get("image", {}), output="map")
        # Dropout on the region features (training only), as VSE's image.dropout on pooled ones.
        self.region_dropout = nn.Dropout(float(config.get("image", {}).get("dropout", 0.0)))
        hidden = int(attention.get("hidden_dim", 512))
        self.visual = VisualAttention(self.image_tower.feature_dim, step_dim, hidden, self.steps)
        self.text_tower = build_token_tower(config.get("text", {}), step_dim, vocab, extra)
        self.textual = TextualAttention(step_dim, hidden, self.steps)
        self.vocab = vocab
        self.loss = build_ranking_loss({"kind": "max_hinge", **config.get("loss", {})})

    # --- the encoder interface ----------------------------------------------------------------
    def image_steps(self, images: torch.Tensor | BackboneFeatures) -> tuple[list[torch.Tensor], torch.Tensor]:
        """v(0..K) and the visual attention (B, K, H, W) over the map's cells."""
        grid = self.image_tower.features(images)
        outputs, weights = self.visual(self.region_dropout(grid.flatten(2).transpose(1, 2)))
        return outputs, weights.view(len(grid), self.steps, *grid.shape[-2:])

    def text_steps(self, texts: list[str]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """u(0..K), the textual attention (B, K, T) and the word mask (B, T)."""
        states, mask = self.text_tower(texts)
        outputs, weights = self.textual(states, mask)
        return outputs, weights, mask

    def image_embedding(self, pixels: torch.Tensor | BackboneFeatures) -> torch.Tensor:
        return join_steps(self.image_steps(pixels)[0])

    def text_embedding(self, texts: list[str]) -> torch.Tensor:
        return join_steps(self.text_steps(texts)[0])

    def training_losses(self, pixels: torch.Tensor | BackboneFeatures, captions: list[str], epoch: int,
                        image_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        scores = self.image_embedding(pixels) @ self.text_embedding(captions).t()  # [image, text] = S
        rank = ranking_loss(self.loss, scores, epoch)
        return {"loss": rank, "ranking": rank.detach()}

    # --- attention, for the app ---------------------------------------------------------------
    @property
    def attends(self) -> bool:
        return self.steps > 0

    @torch.no_grad()
    def image_attention(self, images: ImageBatch) -> torch.Tensor:
        return self.image_steps(self.prepare_images(images))[1].cpu()

    @torch.no_grad()
    def text_attention(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        _, weights, mask = self.text_steps(list(texts))
        out = []
        for text, row, valid in zip(texts, weights.cpu(), mask.cpu(), strict=True):
            pieces = self.text_tower.pieces(text)[: int(valid.sum())]
            words, grouped = self.text_tower.group_pieces(pieces, row[:, : len(pieces)])
            out.append({"words": words, "weights": grouped.tolist()})
        return out

    def unknown_words(self, text: str) -> list[str]:
        return self.text_tower.unknown_words(text)

    def readings(self, text: str) -> list:
        return self.text_tower.readings(text)

    def vocabulary_words(self) -> list[str] | None:
        return self.vocab.words if self.vocab is not None and self.text_tower.reads_words else None

    def extra_state_for_checkpoint(self) -> dict[str, Any]:
        return sentence_tower_files(self.text_tower)
