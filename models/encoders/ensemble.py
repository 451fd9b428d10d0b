"""Ensembles: several trained encoders answering as one, by the mean of their cosine similarities.

The served vector is the concatenation of the members' unit embeddings divided by sqrt(k):

    E(x) = [e_1(x); ...; e_k(x)] / sqrt(k),    E(x) . E(y) = (1/k) sum_i e_i(x) . e_i(y)

It is unit length and its inner product is the members' mean cosine, so faiss serves an ensemble
like any other encoder. Each member sees the images at its own size, and members trained on one
frozen image backbone at one size share a single pass through it (the heads differ, the network
under them does not). Members are trained on their own and
joined afterwards (`imgsearch ensemble`); an ensemble is not trained as a whole.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import nn

from models.data import BackboneFeatures
from models.encoders.base import Encoder, ImageBatch, l2_normalize
from models.encoders.registry import family_class, register_family
from models.encoders.text_towers import SentenceTransformerTower, share_sentence_model
from models.io import digest_weights
from models.vocab import Vocabulary


def member_spec(encoder: Encoder) -> dict[str, Any]:
    """What an ensemble keeps of a member to rebuild it (its weights live in the ensemble's state)."""
    return {"family": encoder.family, "name": encoder.name, "config": encoder.config,
            "vocab": encoder.vocabulary_words(), "extra": encoder.extra_state_for_checkpoint()}


def ensemble_config(members: list[Encoder]) -> dict[str, Any]:
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two members")
    # Images are decoded at the smallest member's size and scaled up for the others, as their
    # training views were (a second downscaling would blur the smaller members' input).
    return {"family": "ensemble", "embed_dim": sum(m.embed_dim for m in members),
            "image_size": min(m.image_size for m in members),
            "members": [member_spec(m) for m in members]}


def _offline(config: dict[str, Any]) -> dict[str, Any]:
    """A member's config to build it from: package weights stay (local, and a slim ensemble needs
    them); other pretrained sources go (the ensemble's state holds those weights)."""
    image = dict(config.get("image", {}))
    if not str(image.get("pretrained") or "").startswith("package:"):
        image.pop("pretrained", None)
    return {**{k: v for k, v in config.items() if k != "pretrained"}, **({"image": image} if image else {})}


@register_family("ensemble")
class Ensemble(Encoder):
    family = "ensemble"

    def __init__(self, name: str, config: dict[str, Any], vocab: Vocabulary | None = None,
                 extra: dict[str, Any] | None = None):
        super().__init__(name, config)
        specs = config.get("members") or []
        if len(specs) < 2:
            raise ValueError("ensemble: config.members must list at least two member encoders")
        self.members = nn.ModuleList(
            family_class(spec["config"])(spec["name"], _offline(spec["config"]),
                                         vocab=Vocabulary(spec["vocab"]) if spec.get("vocab") else None,
                                         extra=spec.get("extra"))
            for spec in specs)
        if sum(m.embed_dim for m in self.members) != self.embed_dim:
            raise ValueError("ensemble: embed_dim must be the sum of the members' embed_dim")
        self._backbone_keys: dict[int, tuple] = {}  # per member: what decides sharing a backbone pass
        self._share_text_models()

    @classmethod
    def join(cls, name: str, members: list[Encoder]) -> Ensemble:
        """An ensemble of already built (trained) encoders, without rebuilding them."""
        ensemble = cls.__new__(cls)
        Encoder.__init__(ensemble, name, ensemble_config(members))
        ensemble.members = nn.ModuleList(members)
        ensemble._backbone_keys = {}
        ensemble._share_text_models()
        return ensemble.eval()

    # --- the encoder interface ----------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, images: ImageBatch) -> torch.Tensor:
        """Each member sees the images at its own size; members on one frozen backbone share a pass."""
        if isinstance(images, BackboneFeatures):
            raise ValueError("ensemble members read pixels, not one backbone's precomputed features")
        shared: dict[tuple, BackboneFeatures] = {}
        parts = []
        for member in self.members:
            key = self._backbone_key(member)
            if key is None:
                parts.append(member.encode_image(images))
                continue
            if key not in shared:
                shared[key] = BackboneFeatures(member.frozen_backbone().features(member.prepare_images(images)))
            parts.append(member.image_embedding(shared[key]))
        return self._join(parts)

    def image_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encode_image(pixels)

    def text_embedding(self, texts: list[str]) -> torch.Tensor:
        return self._join([m.text_embedding(texts) for m in self.members])

    def unknown_words(self, text: str) -> list[str]:
        # A word is unknown when no member can represent it.
        first, *others = [m.unknown_words(text) for m in self.members]
        return [word for word in first if all(word in other for other in others)]

    def readings(self, text: str) -> list:
        found = []  # each normalisation once, whichever members apply it
        for member in self.members:
            found += [r for r in member.readings(text) if r not in found]
        return found

    def training_losses(self, pixels: torch.Tensor, captions: list[str], epoch: int,
                        image_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        raise ValueError("an ensemble is not trained as a whole: train its members, then join them "
                         "(imgsearch ensemble)")

    def frozen_backbone(self) -> Any:
        return None

    def use_backbone_runtime(self, runtime: str) -> None:
        compiled: set[tuple] = set()
        for member in self.members:
            key = self._backbone_key(member)
            if key is None or key not in compiled:  # members sharing a backbone use the first one's pass
                member.use_backbone_runtime(runtime)
                compiled.add(key)

    def package_weights(self) -> list[str]:
        return [f"members.{i}.{prefix}" for i, m in enumerate(self.members) for prefix in m.package_weights()]

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._backbone_keys = {}  # the members' weights changed
        self._share_text_models()  # built from configs, the members' copies only now hold equal weights
        return result

    # --- helpers ------------------------------------------------------------------------------
    def _share_text_models(self) -> None:
        """Members on one frozen sentence encoder use one copy of it and one memo of its features."""
        towers = [m.text_tower for m in self.members if isinstance(getattr(m, "text_tower", None),
                                                                      SentenceTransformerTower)]
        for i, tower in enumerate(towers):
            for earlier in towers[:i]:
                if share_sentence_model(earlier, tower):
                    break

    def _join(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([l2_normalize(e) for e in embeddings], dim=1) / math.sqrt(len(embeddings))

    def _backbone_key(self, member: Encoder) -> tuple | None:
        """Members with equal keys run the same frozen network (equal weights) on the same input."""
        tower = member.frozen_backbone()
        if tower is None:
            return None
        if id(member) not in self._backbone_keys:
            weights = digest_weights(hashlib.sha256(), tower.backbone).hexdigest()
            self._backbone_keys[id(member)] = (tower.backbone_name, tower.output, member.image_size, weights)
        return self._backbone_keys[id(member)]
