"""GXN (Gu et al., CVPR 2018, "Look, Imagine and Match"): retrieval shaped by generation.

Match. The image CNN feeds two projections, an abstract (high-level) and a concrete (low-level)
image embedding; two GRU sentence encoders give the matching text embeddings. Retrieval scores

    s*(t, v) = lam * cos(t_h, v_h) + (1 - lam) * cos(t_l, v_l)

and VSE++'s ranking loss (hardest negative, both directions) is applied to s*. The served vector
is `two_level.join_levels`: [sqrt(lam) v_h/|v_h| ; sqrt(1-lam) v_l/|v_l|], unit length, whose inner
product is s*, so faiss serves GXN like any other encoder.

Look (image -> text). A caption decoder (`caption_decoder.py`) attends over the CNN's feature-map
regions and starts from the concrete image feature v_l; cross-entropy, then optionally
self-critical training (REINFORCE on the CIDEr-D reward; the greedy caption as baseline, or with
`caption.scst_samples` >= 2 the image's other samples; `caption.scst_mark_end` counts the end of
the caption in the reward).

Imagine (text -> image). Conditioning augmentation on the concrete text feature t_l, a generator
of small images and a matching-aware discriminator (`imagine.py`). The discriminator is trained in
its own step (`discriminator_losses`, its own optimizer; the trainer alternates the two); the
generator's loss and the KL term flow back into t_l.

Schedule: `schedule.warmup_epochs` epochs of ranking loss only, then every term, each with its
weight from the config. A weight of 0 drops that branch (the ablation without generative terms
sets both to 0, leaving a two-level VSE++).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.caption_decoder import build_caption_decoder, self_critical_loss
from models.caption_metrics import CiderD, bleu, cider_d
from models.data import BackboneFeatures, DecodedSplit
from models.data.records import ImageRecord
from models.encoders.base import Encoder, ImageBatch, l2_normalize
from models.encoders.efficientnet_lite import EFFICIENTNET_LITES
from models.encoders.image_towers import RESNETS, BackboneTower
from models.encoders.registry import register_family
from models.encoders.text_towers import RNNTextTower, build_text_tower, sentence_tower_files, share_sentence_model
from models.imagine import (
    ConditioningAugmentation,
    Generator,
    MatchingDiscriminator,
    contrastive_matching,
    discriminator_loss,
    generator_loss,
    same_text,
)
from models.losses import build_ranking_loss, ranking_loss
from models.two_level import join_levels, joint_similarity
from models.vocab import Vocabulary


def _has_trainable_path(modules: Sequence[nn.Module], inputs: Sequence[torch.Tensor]) -> bool:
    """Whether a term that `modules` compute from `inputs` can train anything. A stage that holds
    them all fixed (the caption decoder during an imagine stage, the generator during a caption stage)
    skips the term instead of paying for a forward pass that nothing learns from."""
    return any(t.requires_grad for t in inputs) or any(p.requires_grad for m in modules for p in m.parameters())


def caption_scores(generated: Sequence[str], split: DecodedSplit) -> dict[str, float]:
    """Corpus BLEU-4 and CIDEr-D of one generated caption per image of `split`, against its captions."""
    references = [r.captions for r in split.records]
    return {"bleu4": bleu(generated, references), "cider_d": cider_d(generated, references)}


class TwoLevelImageTower(BackboneTower):
    """A CNN -> abstract and concrete image features, plus its feature map as attention regions.

    ResNets give regions from `layer3` or `layer4` (computed inside the network, so from pixels
    only); EfficientNet-Lite gives its last map ("last": 7 x 7 at 224 px), which a frozen backbone
    may also pass in precomputed."""

    def __init__(self, cfg: dict[str, Any], level_dim: int, regions_from: str = "layer4"):
        name = cfg.get("backbone", "resnet18")
        self.on_resnet = name in RESNETS
        if self.on_resnet and regions_from not in ("layer3", "layer4"):
            raise ValueError(f"gxn: caption.regions_from must be 'layer3' or 'layer4' on a ResNet, "
                             f"got {regions_from!r}")
        if not self.on_resnet and (name not in EFFICIENTNET_LITES or regions_from != "last"):
            raise ValueError(f"gxn: image backbone {name!r} with regions from {regions_from!r} unsupported; GXN "
                             f"needs a ResNet ({', '.join(RESNETS)}; regions from layer3/layer4) or an "
                             f"EfficientNet-Lite ({', '.join(EFFICIENTNET_LITES)}; regions from 'last'), whose "
                             "feature map gives the caption decoder its regions")
        super().__init__(cfg, output="pooled" if self.on_resnet else "map")
        self.regions_from = regions_from
        self.region_dim = self.feature_dim // (2 if regions_from == "layer3" else 1)
        self.project_high = nn.Linear(self.feature_dim, level_dim)
        self.project_low = nn.Linear(self.feature_dim, level_dim)

    def forward(self, images: torch.Tensor | BackboneFeatures) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(abstract feature, concrete feature, regions (N, R, C))."""
        if self.on_resnet:
            regions, last = self._resnet_maps(images)
        else:
            last = self.features(images)
            regions = last
        pooled = last.mean(dim=(2, 3))
        return self.project_high(pooled), self.project_low(pooled), regions.flatten(2).transpose(1, 2)

    def _resnet_maps(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(pixels, BackboneFeatures):
            raise ValueError("gxn: a ResNet tower computes its regions from pixels, not precomputed features")
        net = self.backbone
        x = self.normalize(pixels)
        x = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))
        last = net.layer4(x)
        return (x if self.regions_from == "layer3" else last), last


@register_family("gxn")
class GXN(Encoder):
    family = "gxn"

    def __init__(self, name: str, config: dict[str, Any], vocab: Vocabulary | None = None,
                 extra: dict[str, Any] | None = None):
        super().__init__(name, config)
        if vocab is None:
            raise ValueError("gxn: the caption decoder (and GRU sentence encoders) need a vocabulary "
                             "(built from the training captions)")
        if self.embed_dim % 2:
            raise ValueError(f"gxn: embed_dim {self.embed_dim} must be even (half per level)")
        self.lam = float(config.get("lambda", 0.5))
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"gxn: lambda must be in [0, 1], got {self.lam}")
        level = self.embed_dim // 2
        text, caption, imagine = config.get("text", {}), config.get("caption", {}), config.get("imagine", {})
        self.image_tower = TwoLevelImageTower(config.get("image", {}), level, caption.get("regions_from", "layer4"))
        if text.get("kind", "gru") == "sentence_transformer":
            # Two heads (abstract, concrete) over one frozen sentence encoder.
            self.text_high, self.text_low = (build_text_tower(text, level, vocab, extra) for _ in range(2))
            share_sentence_model(self.text_high, self.text_low)
        else:
            self.text_high, self.text_low = (
                RNNTextTower(vocab, level, word_dim=text.get("word_dim", 300), rnn=text.get("rnn", "gru"),
                             max_length=text.get("max_length", 32)) for _ in range(2))
        self.vocab = vocab
        self.loss = build_ranking_loss({"kind": "max_hinge", **config.get("loss", {})})
        self.warmup_epochs = int(config.get("schedule", {}).get("warmup_epochs", 0))
        self.caption_weight = float(caption.get("weight", 1.0))
        self.scst_from_epoch = caption.get("scst_from_epoch")
        self.scst_weight = float(caption.get("scst_weight", 1.0))
        self.scst_samples = int(caption.get("scst_samples", 1))
        self.scst_mark_end = bool(caption.get("scst_mark_end", False))
        if self.scst_samples < 1:
            raise ValueError(f"gxn: caption.scst_samples must be >= 1, got {self.scst_samples}")
        self.beam_width = int(caption.get("beam_width", 3))
        # beam score log p / length^alpha; 1 (the mean per word) is what older checkpoints were
        # measured with. 0.7 helps wider beams (caption bench: BLEU-4 0.205 against 0.199 at beam 10,
        # equal at beam 3), so configs that decode with wide beams set it.
        self.length_alpha = float(caption.get("length_alpha", 1.0))
        if self.length_alpha < 0:
            raise ValueError(f"gxn: caption.length_alpha must be >= 0, got {self.length_alpha}")
        self.decoder = build_caption_decoder(caption.get("decoder", "attention"), vocab, level,
                                             self.image_tower.region_dim, caption) if self.caption_weight else None
        self.imagine_weight = float(imagine.get("weight", 1.0))
        self.kl_weight = float(imagine.get("kl_weight", 1.0))
        # L1 between the imagined image and the real image of the caption: a conditional regression
        # that the discriminator alone did not give (its generator drew one picture for every text).
        self.reconstruction_weight = float(imagine.get("reconstruction_weight", 0.0))
        # The discriminator's contrastive image-text term (imagine.py): 0 leaves the matching-aware
        # logit alone, which on its own drew one picture for every text.
        self.match_weight = float(imagine.get("match_weight", 0.0))
        self.match_temperature = float(imagine.get("match_temperature", 0.1))
        self.imagined_size = int(imagine.get("image_size", 64))
        # The discriminator's inputs shifted at random by up to this share of the side (imagine.py's
        # random_translation): what lets its matching heads learn shape from a few thousand pictures.
        self.translation = float(imagine.get("translation", 0.0))
        if not 0.0 <= self.translation < 0.5:
            raise ValueError(f"gxn: imagine.translation must be in [0, 0.5), got {self.translation}")
        # Matching in the frozen pretrained tower's features: the discriminator learns (on real
        # pairs) which text a picture's ImageNet features match, and the generator is trained to
        # be matched to its own text there too. A discriminator learning its features from scratch
        # taught colour (a global statistic) but not shape in 1,400 steps; ImageNet features tell
        # a star from a cross before any training.
        self.pretrained_match_weight = float(imagine.get("pretrained_match_weight", 0.0))
        self.pretrained_match_size = int(imagine.get("pretrained_match_size", 64))
        if self.imagine_weight and self.pretrained_match_weight and not self.image_tower.frozen:
            raise ValueError("gxn: imagine.pretrained_match_weight reads pictures with the frozen pretrained "
                             "image tower; set image.freeze = true (and no image.train_last_blocks)")
        if self.imagine_weight:
            condition = int(imagine.get("condition_dim", 128))
            self.conditioning = ConditioningAugmentation(level, condition)
            self.generator = Generator(condition, imagine.get("noise_dim", 64), imagine.get("generator_width", 64),
                                       self.imagined_size)
            self.discriminator = MatchingDiscriminator(level, condition, imagine.get("discriminator_width", 32),
                                                       self.imagined_size,
                                                       match_dim=condition if self.match_weight else None,
                                                       pretrained=(self.image_tower.feature_dim, condition)
                                                       if self.pretrained_match_weight else None)
        self._cider: CiderD | None = None
        self._references: list[list[str]] = []

    # --- what the app asks for ----------------------------------------------------------------
    @property
    def describes_images(self) -> bool:
        return self.decoder is not None

    @property
    def imagines_texts(self) -> bool:
        return self.imagine_weight > 0

    @torch.no_grad()
    def describe(self, images: ImageBatch, beam_width: int | None = None) -> list[str]:
        """One generated caption per image (beam search; greedy with beam_width=1)."""
        if self.decoder is None:
            raise ValueError(f"encoder {self.name!r} was built without the caption decoder")
        _, low, regions = self.image_tower(self.prepare_images(images))
        width = self.beam_width if beam_width is None else beam_width
        if width <= 1:
            ids = self.decoder.greedy(low, regions)
        else:
            ids = self.decoder.beam(low, regions, width, self.length_alpha)
        return [self.decoder.decode(words) for words in ids]

    @torch.no_grad()
    def imagine(self, texts: Sequence[str], seed: int = 0) -> torch.Tensor:
        """What the model imagines for each text: uint8 (N, 3, S, S). The condition is the mean of
        its augmentation and every text gets the same seeded noise, so a picture depends on its
        text (and the seed) alone, not on the batch it came in."""
        if not self.imagines_texts:
            raise ValueError(f"encoder {self.name!r} was built without the image generator")
        _, mu, _ = self.conditioning.sample(self.text_low(list(texts)))
        noise = torch.randn(1, self.generator.noise_dim, generator=torch.Generator().manual_seed(seed))
        images = self.generator(mu, noise.to(mu.device).expand(len(mu), -1))
        return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()

    def describe_in_batches(self, pixels: torch.Tensor, beam_width: int | None = None,
                            batch_size: int = 256) -> list[str]:
        """`describe` over many uint8 images (e.g. a decoded split), in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return [c for start in range(0, len(pixels), batch_size)
                    for c in self.describe(pixels[start:start + batch_size], beam_width)]
        finally:
            self.train(was_training)

    def generation_metrics(self, split: DecodedSplit, beam_width: int = 1) -> dict[str, float]:
        """Corpus BLEU-4 and CIDEr-D of the generated captions against the split's own captions."""
        if not self.describes_images:
            return {}
        return caption_scores(self.describe_in_batches(split.pixels, beam_width), split)

    # --- the encoder interface ----------------------------------------------------------------
    def image_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        high, low, _ = self.image_tower(pixels)
        return join_levels(high, low, self.lam)

    def text_embedding(self, texts: list[str]) -> torch.Tensor:
        return join_levels(self.text_high(texts), self.text_low(texts), self.lam)

    def unknown_words(self, text: str) -> list[str]:
        return self.text_high.unknown_words(text)

    def readings(self, text: str) -> list:
        return self.text_high.readings(text)

    def vocabulary_words(self) -> list[str]:
        return self.vocab.words

    def extra_state_for_checkpoint(self) -> dict[str, Any]:
        return sentence_tower_files(self.text_high)

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        share_sentence_model(self.text_high, self.text_low)  # built from configs, both copies now hold one model
        return result

    # --- training -----------------------------------------------------------------------------
    def generative(self, epoch: int) -> bool:
        return epoch >= self.warmup_epochs

    def describe_epoch(self, epoch: int) -> dict[str, Any]:
        if not self.generative(epoch) or not (self.describes_images or self.imagines_texts):
            return {"stage": "ranking only"}
        terms = ["ranking"] + ["captioning"] * self.describes_images + ["imagining"] * self.imagines_texts
        if self._self_critical(epoch):
            terms.append("self-critical")
        return {"stage": " + ".join(terms)}

    def attach_training_records(self, train_records: Sequence[ImageRecord]) -> None:
        """Self-critical training rewards CIDEr-D against an image's own training captions."""
        self._references = [list(r.captions) for r in train_records]
        self._cider = None

    def frozen_backbone(self) -> Any:
        """Only EfficientNet towers hand their whole map over; a ResNet's layer3 regions stay inside."""
        return None if self.image_tower.on_resnet else super().frozen_backbone()

    @property
    def thumbnail_size(self) -> int | None:
        return self.imagined_size if self.imagines_texts else None

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters()) if self.imagines_texts else []

    def discriminator_optimizer(self) -> torch.optim.Optimizer | None:
        """Adam with beta1 = 0.5, as GAN discriminators are usually trained, at the constant rate
        `imagine.discriminator_lr`: the main schedule's warm-up and decay are for the embedding."""
        if not self.imagines_texts:
            return None
        lr = float(self.config.get("imagine", {}).get("discriminator_lr", 2e-4))
        return torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))

    def discriminator_losses(self, pixels: torch.Tensor, captions: list[str], epoch: int) -> dict | None:
        """The discriminator's step: real images with their text, generated ones, real with wrong text."""
        if not self.imagines_texts or not self.generative(epoch):
            return None
        with torch.no_grad():
            text = self.text_low(captions)
            fake = self.generator(self.conditioning(text)[0])
            real = self.gan_pixels(pixels)
        terms = discriminator_loss(self.discriminator, real, fake, l2_normalize(text), self.match_weight,
                                   self.match_temperature, self.translation)
        if self.pretrained_match_weight:
            with torch.no_grad():
                seen = self._pretrained_view(real)
            terms["real_pretrained_matching"] = self._pretrained_matching(seen, text)
            terms["loss"] = terms["loss"] + self.pretrained_match_weight * terms["real_pretrained_matching"]
        return terms

    def training_losses(self, pixels: torch.Tensor, captions: list[str], epoch: int,
                        image_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        image_high, image_low, regions = self.image_tower(pixels)
        text_low = self.text_low(captions)
        scores = joint_similarity(self.text_high(captions), text_low, image_high, image_low, self.lam)
        rank = ranking_loss(self.loss, scores.t(), epoch)  # the loss wants [image, text]
        terms, total = {"ranking": rank.detach()}, rank
        if not self.generative(epoch):
            return {"loss": total, **terms}
        if self.describes_images and _has_trainable_path([self.decoder], [image_low, regions]):
            caption = self.decoder.loss(image_low, regions, captions)
            terms["caption_xent"] = caption.detach()
            total = total + self.caption_weight * caption
            if self._self_critical(epoch):
                scst, reward = self._self_critical_loss(image_low, regions, image_ids)
                terms.update(scst=scst.detach(), cider_reward=reward)
                total = total + self.scst_weight * scst
        if self.imagines_texts and _has_trainable_path([self.conditioning, self.generator], [text_low]):
            imagining, imagining_terms = self._imagining_losses(pixels, text_low)
            terms.update(imagining_terms)
            total = total + self.imagine_weight * imagining
        return {"loss": total, **terms}

    def _imagining_losses(self, pixels: torch.Tensor | BackboneFeatures,
                          text_low: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The generator's side of the game, its KL term and the optional terms, weighted; and each
        term detached for the log. The text reaches the generator loss only through the generated
        image: as the discriminator's input it is a constant, or the text encoder could learn to
        fool the discriminator by moving the text instead of shaping the picture. The
        discriminator is frozen here (its own flags restored after): this step trains the
        generator, not it."""
        condition, kl = self.conditioning(text_low)
        imagined = self.generator(condition)
        text = text_low.detach()
        flags = [p.requires_grad for p in self.discriminator.parameters()]
        self.discriminator.requires_grad_(False)
        try:
            adversarial = generator_loss(self.discriminator, imagined, l2_normalize(text), self.match_weight,
                                         self.match_temperature, self.translation)
            total = adversarial["loss"] + self.kl_weight * kl
            terms = {"generator": adversarial["fooled"].detach(), "kl": kl.detach()}
            if "fake_matching" in adversarial:
                terms["imagined_matching"] = adversarial["fake_matching"].detach()
            if self.pretrained_match_weight:
                matching = self._pretrained_matching(self._pretrained_view(imagined), text)
                terms["imagined_pretrained_matching"] = matching.detach()
                total = total + self.pretrained_match_weight * matching
        finally:
            for parameter, flag in zip(self.discriminator.parameters(), flags, strict=True):
                parameter.requires_grad_(flag)
        if self.reconstruction_weight:
            reconstruction = F.l1_loss(imagined, self.gan_pixels(pixels))
            terms["reconstruction"] = reconstruction.detach()
            total = total + self.reconstruction_weight * reconstruction
        return total, terms

    def _self_critical(self, epoch: int) -> bool:
        return self.describes_images and self.scst_from_epoch is not None and epoch >= int(self.scst_from_epoch)

    def _self_critical_loss(self, features: torch.Tensor, regions: torch.Tensor,
                            image_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`self_critical_loss` against each image's own training captions, CIDEr-D as the reward."""
        if image_ids is None or not self._references:
            raise ValueError("self-critical training needs the training captions (attach_training_records)")
        if self._cider is None:
            self._cider = CiderD(self._references, mark_end=self.scst_mark_end)
        references = [self._references[i] for i in image_ids.tolist()]
        return self_critical_loss(self.decoder, self._cider, features, regions, references, self.scst_samples)

    def _pretrained_matching(self, seen: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The contrastive matching term between pictures as the frozen tower sees them and texts."""
        text = l2_normalize(text)
        return contrastive_matching(*self.discriminator.pretrained_matching(seen, text), self.match_temperature,
                                    same_text(text))

    def _pretrained_view(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] pictures -> the frozen tower's pooled feature at `pretrained_match_size` px, unit
        length (gradients reach the pictures; the tower's weights are frozen)."""
        size = (self.pretrained_match_size,) * 2
        x = F.interpolate((images + 1) / 2, size=size, mode="bilinear", align_corners=False)
        tower = self.image_tower
        x = (x - tower.mean.view(1, 3, 1, 1)) / tower.std.view(1, 3, 1, 1)
        features = tower.raw_features(x.contiguous(memory_format=torch.channels_last))
        return F.normalize(features.mean(dim=(2, 3)) if features.dim() == 4 else features, dim=1)

    def gan_pixels(self, images: torch.Tensor | BackboneFeatures) -> torch.Tensor:
        """uint8 training pixels (or the thumbnails beside cached features) -> [-1, 1] at the generator's size."""
        pixels = images.thumbnails if isinstance(images, BackboneFeatures) else images
        if pixels is None:
            raise ValueError("gxn: cached backbone features came without the thumbnails the discriminator needs")
        x = pixels.float() / 127.5 - 1
        if x.shape[-1] != self.imagined_size:
            x = F.interpolate(x, size=(self.imagined_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
        return x
