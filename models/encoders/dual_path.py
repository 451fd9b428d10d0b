"""Dual-Path (Zheng et al., "Dual-Path Convolutional Image-Text Embeddings with Instance Loss").

Image path: the registry's CNN backbone + a projection. Text path: a deep residual TextCNN
(`text_cnn.py`), or a sentence-transformers model + MLP (`text.kind = "sentence_transformer"`).
Both are trained with the instance loss, one classifier shared by the two paths over the training
images as classes (`losses.InstanceLoss`), and, in Stage II, with the
bidirectional ranking loss (hardest negative, as VSE++):

    Stage I  (epochs < stages.stage1_epochs): instance loss only; the image backbone frozen.
    Stage II (the rest):                      instance loss + ranking loss; everything trained.

The ranking loss is VSE++'s, with the same schedule options (a sum-of-hinges warm-up, then an
anneal to the hardest negative), counted from the start of Stage II. The classifier is only used
in training; the index serves the L2-normalised embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from models.data.records import ImageRecord
from models.encoders.base import Encoder, l2_normalize
from models.encoders.registry import register_family
from models.encoders.text_cnn import TextCNNTower
from models.encoders.text_towers import build_text_tower, sentence_tower_files
from models.encoders.vse import ImageTower
from models.losses import InstanceLoss, build_ranking_loss, ranking_loss
from models.vocab import Vocabulary
from models.word_vectors import initialise_embedding, read_text_vectors, train_word2vec


@register_family("dual_path")
class DualPath(Encoder):
    family = "dual_path"

    def __init__(self, name: str, config: dict[str, Any], vocab: Vocabulary | None = None,
                 extra: dict[str, Any] | None = None):
        super().__init__(name, config)
        text, instance = config.get("text", {}), config.get("instance_loss", {})
        stages = config.get("stages", {})
        self.image_tower = ImageTower(config.get("image", {}), self.embed_dim)
        if text.get("kind", "textcnn") == "textcnn":
            if vocab is None:
                raise ValueError("the Dual-Path text CNN needs a vocabulary (built from the training captions)")
            self.text_tower = TextCNNTower(vocab, self.embed_dim, word_dim=text.get("word_dim", 300),
                                           max_length=text.get("max_length", 32),
                                           channels=tuple(text.get("channels", (256, 512, 1024))),
                                           blocks=tuple(text.get("blocks", (2, 2, 2))),
                                           shift=text.get("position_shift", True), dropout=text.get("dropout", 0.0))
        else:  # a sentence-transformers text path (text.kind = "sentence_transformer")
            self.text_tower = build_text_tower(text, self.embed_dim, vocab, extra)
        self.instance_weight = float(instance.get("weight", 1.0))
        self.ranking_weight = float(config.get("loss", {}).get("weight", 1.0))
        self.stage1_epochs = int(stages.get("stage1_epochs", 0))
        self.stage1_frozen = stages.get("stage1_backbone", "frozen") == "frozen"
        self.backbone_always_frozen = self.image_tower.frozen
        if self.stage1_epochs and not self.instance_weight:
            raise ValueError("dual_path: Stage I trains with the instance loss alone, so it needs "
                             "instance_loss.weight > 0 (or set stages.stage1_epochs = 0)")
        classes = instance.get("classes")
        if self.instance_weight and not classes:
            raise ValueError("dual_path: instance_loss.classes (the number of training images) is not set; "
                             "the trainer sets it from the training split")
        self.instance_loss = InstanceLoss(self.embed_dim, int(classes or 1), instance.get("dropout", 0.0))
        self.loss = build_ranking_loss({"kind": "max_hinge", **config.get("loss", {})})

    # --- training hooks ---------------------------------------------------------------------
    @classmethod
    def config_for_training_set(cls, config: dict[str, Any], train_records: Sequence[ImageRecord]) -> dict[str, Any]:
        """Every training image is a class: the classifier is as wide as the training split."""
        instance = {**config.get("instance_loss", {}), "classes": len(train_records)}
        return {**config, "instance_loss": instance}

    def prepare_for_training(self, train_records: Sequence[ImageRecord]) -> None:
        """Start the word embedding from word vectors, when the config names a source."""
        source = self.config.get("text", {}).get("word_vectors")
        if not source or not isinstance(self.text_tower, TextCNNTower):
            return
        vocab, embedding = self.text_tower.vocab, self.text_tower.embed
        if source == "word2vec":
            vectors = train_word2vec((c for r in train_records for c in r.captions), embedding.weight.shape[1])
        else:
            vectors = read_text_vectors(source, wanted=set(vocab.words))
        found = initialise_embedding(embedding, vocab, vectors)
        print(f"word vectors from {source}: {found:,} of {len(vocab) - 4:,} words; the rest start at random")

    def stage(self, epoch: int) -> int:
        return 1 if epoch < self.stage1_epochs else 2

    def describe_epoch(self, epoch: int) -> dict[str, Any]:
        if self.stage(epoch) == 1:
            backbone = "image backbone frozen" if self.stage1_frozen else "image backbone trained"
            return {"stage": f"I: instance loss, {backbone}"}
        terms = [t for t, w in (("instance", self.instance_weight), ("ranking", self.ranking_weight)) if w]
        trained = "image backbone frozen" if self.backbone_always_frozen else "all trained"
        return {"stage": f"II: {' + '.join(terms)} loss, {trained}"}

    def frozen_backbone(self) -> Any:
        """Features may be cached only when the backbone stays frozen in both stages."""
        return super().frozen_backbone() if self.backbone_always_frozen else None

    def _enter_stage(self, stage: int) -> None:
        frozen = self.backbone_always_frozen or (stage == 1 and self.stage1_frozen)
        if self.image_tower.frozen != frozen:
            self.image_tower.set_frozen(frozen)

    def training_losses(self, pixels: torch.Tensor, captions: list[str], epoch: int,
                        image_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        stage = self.stage(epoch)
        self._enter_stage(stage)
        images, texts = self.image_embedding(pixels), self.text_embedding(captions)
        terms: dict[str, torch.Tensor] = {}
        total = images.new_zeros(())
        if self.instance_weight:
            if image_ids is None:
                raise ValueError("the instance loss needs each image's index in the training set")
            image_term, text_term = self.instance_loss(images, texts, image_ids.to(images.device))
            terms.update(instance_image=image_term.detach(), instance_text=text_term.detach())
            total = total + self.instance_weight * (image_term + text_term)
        if stage == 2 and self.ranking_weight:
            scores = l2_normalize(images) @ l2_normalize(texts).t()
            rank = ranking_loss(self.loss, scores, epoch - self.stage1_epochs)
            terms["ranking"] = rank.detach()
            total = total + self.ranking_weight * rank
        return {"loss": total, **terms}

    # --- the encoder interface --------------------------------------------------------------
    def image_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_tower(pixels)

    def text_embedding(self, texts: list[str]) -> torch.Tensor:
        return self.text_tower(texts)

    def unknown_words(self, text: str) -> list[str]:
        return self.text_tower.unknown_words(text)

    def readings(self, text: str) -> list:
        return self.text_tower.readings(text)

    def vocabulary_words(self) -> list[str] | None:
        vocab = getattr(self.text_tower, "vocab", None)
        return vocab.words if vocab is not None else None

    def extra_state_for_checkpoint(self) -> dict[str, Any]:
        return sentence_tower_files(self.text_tower)
