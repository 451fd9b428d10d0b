"""open_clip models behind the common interface: any open_clip config, pretrained by tag or file."""

from __future__ import annotations

from typing import Any

import torch

from models.encoders.base import Encoder, l2_normalize, normalize_pixels
from models.encoders.image_towers import create_openclip_model, openclip_mean_std
from models.encoders.registry import register_family
from models.losses import InfoNCE


@register_family("openclip")
class OpenCLIPEncoder(Encoder):
    """config: {"family": "openclip", "model": "ViT-B-32", "pretrained": tag | path | null,
    "model_cfg": {...} for a custom architecture}."""

    family = "openclip"

    def __init__(self, name: str, config: dict[str, Any], vocab: Any = None, extra: dict[str, Any] | None = None):
        import open_clip

        self.model_name = config["model"]
        model = create_openclip_model(self.model_name, config.get("pretrained"), config.get("model_cfg"))
        image_size = model.visual.image_size
        image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
        config = {**config, "embed_dim": int(model.text_projection.shape[-1] if hasattr(model, "text_projection")
                                            and model.text_projection is not None else model.visual.output_dim),
                  "image_size": int(image_size)}
        super().__init__(name, config)
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        mean, std = openclip_mean_std(model.visual)
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)
        self.loss = InfoNCE(config.get("temperature", 0.05))

    def image_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(normalize_pixels(pixels, self.mean, self.std))

    def text_embedding(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))

    def training_losses(self, pixels: torch.Tensor, captions: list[str], epoch: int,
                        image_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        images = l2_normalize(self.image_embedding(pixels))
        texts = l2_normalize(self.text_embedding(captions))
        loss = self.loss(images @ texts.t())
        return {"loss": loss, "contrastive": loss.detach()}

    def unknown_words(self, text: str) -> list[str]:
        return []  # byte-level BPE represents every word
