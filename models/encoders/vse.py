"""VSE (Kiros et al. 2014) and VSE++ (Faghri et al. 2018): one model, two ranking losses.

Image: a CNN backbone, then a linear projection. Text: word embeddings + GRU/LSTM (last hidden
state), or a sentence-transformers model. Similarity: cosine. The loss (config "loss") is the sum
of hinges (VSE) or the max of hinges, i.e. the hardest negative in the batch (VSE++).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.encoders.base import BackboneFeatures, Encoder, l2_normalize
from models.encoders.image_towers import BackboneTower
from models.encoders.registry import register_family
from models.encoders.text_towers import build_text_tower, sentence_tower_files
from models.losses import HardNegativeSchedule, build_ranking_loss, ranking_loss
from models.vocab import Vocabulary


class ImageTower(BackboneTower):
    """Backbone features -> dropout (`image.dropout`, training only) -> linear projection, or with
    `image.hidden` > 0 a two-layer projection (linear, GELU, linear): a frozen backbone's pooled
    features keep colour in a form one linear map reads poorly."""

    def __init__(self, cfg: dict[str, Any], embed_dim: int):
        super().__init__(cfg)
        self.dropout = nn.Dropout(float(cfg.get("dropout", 0.0)))
        hidden = int(cfg.get("hidden", 0))
        self.project = nn.Linear(self.feature_dim, embed_dim) if hidden <= 0 else nn.Sequential(
            nn.Linear(self.feature_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))

    def forward(self, images: torch.Tensor | BackboneFeatures) -> torch.Tensor:
        return self.project(self.dropout(self.features(images)))


@register_family("vse")
class VSE(Encoder):
    family = "vse"

    def __init__(self, name: str, config: dict[str, Any], vocab: Vocabulary | None = None,
                 extra: dict[str, Any] | None = None):
        super().__init__(name, config)
        self.image_tower = ImageTower(config.get("image", {}), self.embed_dim)
        self.text_tower = build_text_tower(config.get("text", {}), self.embed_dim, vocab, extra)
        self.loss = build_ranking_loss(config.get("loss", {}))

    def image_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_tower(pixels)

    def text_embedding(self, texts: list[str]) -> torch.Tensor:
        return self.text_tower(texts)

    def training_losses(self, pixels: torch.Tensor, captions: list[str], epoch: int,
                        image_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        images = l2_normalize(self.image_embedding(pixels))
        texts = l2_normalize(self.text_embedding(captions))
        loss = ranking_loss(self.loss, images @ texts.t(), epoch)
        return {"loss": loss, "ranking": loss.detach()}

    def describe_epoch(self, epoch: int) -> dict[str, Any]:
        # A loss that moves from the sum of hinges to the hardest negative changes scale: say so.
        if isinstance(self.loss, HardNegativeSchedule) and (self.loss.warmup_epochs or self.loss.anneal_epochs):
            return {"stage": self.loss.describe(epoch)}
        return {}

    def unknown_words(self, text: str) -> list[str]:
        return self.text_tower.unknown_words(text)

    def readings(self, text: str) -> list:
        return self.text_tower.readings(text)

    def vocabulary_words(self) -> list[str] | None:
        vocab = getattr(self.text_tower, "vocab", None)
        return vocab.words if vocab is not None else None

    def extra_state_for_checkpoint(self) -> dict[str, Any]:
        return sentence_tower_files(self.text_tower)
