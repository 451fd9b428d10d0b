"""The interface every encoder family implements, and the single-file checkpoint format."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from models.data.features import BackboneFeatures
from models.data.images import image_to_uint8
from models.io import atomic_torch_save

CHECKPOINT_FORMAT = "imgsearch-encoder/1"


ImageBatch = torch.Tensor | Sequence[Image.Image] | BackboneFeatures


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """The one L2 normalisation of the project: rows of `x` scaled to unit length."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, unreadable or not an imgsearch encoder."""


class PretrainedUnavailableError(RuntimeError):
    """Requested pretrained weights could not be found locally nor downloaded."""


class Encoder(nn.Module):
    """Maps images and texts into one space; both `encode_*` return L2-normalised (N, D) rows.

    Subclasses set `family`, build their towers from a JSON-able `config` in `__init__`, and
    implement `image_embedding`, `text_embedding` (unnormalised) and `training_losses`.
    Images may be given as PIL images or as a uint8 (N, 3, H, W) tensor; they are resized to
    the encoder's `image_size` and normalised with its own mean and std.
    """

    family: ClassVar[str] = ""

    def __init__(self, name: str, config: dict[str, Any]):
        super().__init__()
        self.name = name
        self.config = config
        self.embed_dim = int(config["embed_dim"])
        self.image_size = int(config.get("image_size", 64))

    # --- what callers use -------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, images: ImageBatch) -> torch.Tensor:
        return l2_normalize(self.image_embedding(self.prepare_images(images)))

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of texts, not a single string")
        return l2_normalize(self.text_embedding(list(texts)))

    # Families with generators (GXN) override these: a caption generated for a query image, an
    # image imagined for a query text. The app shows them only where they are True.
    @property
    def describes_images(self) -> bool:
        return False

    @property
    def imagines_texts(self) -> bool:
        return False

    def describe(self, images: ImageBatch, beam_width: int | None = None) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} does not generate captions")

    def imagine(self, texts: Sequence[str], seed: int = 0) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not generate images")

    # Families that attend (DAN) override these: where a query image or text looked.
    @property
    def attends(self) -> bool:
        return False

    def image_attention(self, images: ImageBatch) -> torch.Tensor:
        """(N, K, H, W): each attention step's weights over each image's region grid."""
        raise NotImplementedError(f"{type(self).__name__} has no attention over image regions")

    def text_attention(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Per text {"words": [...], "weights": K lists, one weight per word, each summing to one}."""
        raise NotImplementedError(f"{type(self).__name__} has no attention over words")

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` the text tower cannot represent (mapped to <unk>); [] if it knows all."""
        return []

    def readings(self, text: str) -> list:
        """The normalisations (plural, spelling, hyphen: `models.vocab.Reading`) a word-level text
        tower applies to `text`; [] for towers that read text as it is."""
        return []

    def knows_word(self, word: str) -> bool:
        return not self.unknown_words(word)

    # --- what families implement --------------------------------------------------------------
    def image_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings from uint8 pixels already at `image_size`."""
        raise NotImplementedError

    def text_embedding(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def training_losses(self, pixels: torch.Tensor, captions: list[str], epoch: int,
                        image_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Named loss terms for one batch of matching (image, caption) pairs; 'loss' is the total.
        `image_ids` are the images' indices in the training split (for losses that use them)."""
        raise NotImplementedError

    # --- optional training hooks ------------------------------------------------------------
    @classmethod
    def config_for_training_set(cls, config: dict[str, Any], train_records: Sequence[Any]) -> dict[str, Any]:
        """The config to build a new encoder with, given the training split (e.g. its size)."""
        return config

    def prepare_for_training(self, train_records: Sequence[Any]) -> None:
        """Data-dependent initialisation of a new encoder (e.g. word vectors from the captions)."""

    def describe_epoch(self, epoch: int) -> dict[str, Any]:
        """What the training log should record about this epoch (e.g. a training stage)."""
        return {}

    def attach_training_records(self, train_records: Sequence[Any]) -> None:
        """Called at every start of training (new or resumed) with the training split, for losses
        that need more than the batch (e.g. GXN's CIDEr-D reward against all of an image's captions)."""

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """Parameters trained adversarially, by their own optimizer in their own step (see
        `discriminator_losses`); the main optimizer leaves them alone. None for most families."""
        return []

    def discriminator_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer of `discriminator_parameters` (None when there are none)."""
        return None

    def discriminator_losses(self, pixels: torch.Tensor, captions: list[str], epoch: int
                             ) -> dict[str, torch.Tensor] | None:
        """The discriminator's loss terms for this batch ('loss' is the total), or None when there
        is no discriminator step this epoch. The trainer runs it before `training_losses`."""
        return None

    def generation_metrics(self, split: Any) -> dict[str, float]:
        """Validation figures of a family's generators (e.g. caption BLEU-4/CIDEr-D); {} if none."""
        return {}

    def vocabulary_words(self) -> list[str] | None:
        """The word list to store in the checkpoint (None when the text tower needs none)."""
        return None

    def extra_state_for_checkpoint(self) -> dict[str, Any]:
        """JSON-able extras a family needs to rebuild itself (e.g. tokenizer files)."""
        return {}

    # --- the image backbone ---------------------------------------------------------------------
    def frozen_backbone(self) -> Any:
        """The image tower (a `BackboneTower`) when its backbone is frozen, so training may compute
        its features once and train only what lies above; None when the backbone trains."""
        from models.encoders.image_towers import BackboneTower

        tower = getattr(self, "image_tower", None)
        return tower if isinstance(tower, BackboneTower) and tower.frozen else None

    @property
    def thumbnail_size(self) -> int | None:
        """The pixel size a family needs beside cached backbone features (GXN's discriminator
        looks at real pictures), or None."""
        return None

    def use_backbone_runtime(self, runtime: str) -> None:
        """Run the image backbone with a compiled engine for inference (`backbone_runtime`)."""
        from models.encoders.image_towers import BackboneTower

        tower = getattr(self, "image_tower", None)
        if isinstance(tower, BackboneTower):
            tower.use_runtime(runtime, self.image_size)

    # --- shared plumbing ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prepare_images(self, images: ImageBatch) -> torch.Tensor | BackboneFeatures:
        """PIL images or a uint8/float tensor -> uint8 (N, 3, S, S) on this encoder's device
        (precomputed `BackboneFeatures` pass through: the image tower reads them)."""
        if isinstance(images, BackboneFeatures):
            return images
        if not isinstance(images, torch.Tensor):
            arrays = [image_to_uint8(image.convert("RGB"), self.image_size) for image in images]
            images = torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, 3, self.image_size,
                                                                                      self.image_size)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images shaped (N, 3, H, W), got {tuple(images.shape)}")
        if images.dtype.is_floating_point:
            images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images.float(), size=(self.image_size, self.image_size), mode="bilinear",
                                   antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)
        return images.to(self.device)

    def checkpoint_payload(self, slim: bool = False, half: bool = False) -> dict[str, Any]:
        """Everything to rebuild this encoder. `slim` leaves out the frozen towers whose weights
        come from an installed package (`package_weights`): the loader takes them from there.
        `half` stores float weights in fp16 (loading casts them back to the model's precision)."""
        state, extra, external = self.state_dict(), self.extra_state_for_checkpoint(), []
        if slim:
            external = self.package_weights()
            state = {k: v for k, v in state.items() if not under_prefixes(k, external)}
        if half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        return {"format": CHECKPOINT_FORMAT, "family": self.family, "name": self.name,
                "config": self.config, "vocab": self.vocabulary_words(), "extra": extra, "state_dict": state,
                "package_weights": external}

    def save(self, path: str | Path, slim: bool = False, half: bool = False) -> Path:
        """Write weights, config and vocabulary into one file (atomically); see `checkpoint_payload`."""
        return atomic_torch_save(self.checkpoint_payload(slim, half), path)

    def package_weights(self) -> list[str]:
        """Submodules (state-dict prefixes) that are frozen and loaded from a pip package, so a slim
        checkpoint need not carry them: the image backbone and a sentence-transformer text model."""
        from models.encoders.text_towers import SentenceTransformerTower

        image, text = self.config.get("image", {}), self.config.get("text", {})
        prefixes = []
        if self.frozen_backbone() is not None and str(image.get("pretrained") or "").startswith("package:"):
            prefixes.append("image_tower.backbone")  # wholly frozen: fine-tuned blocks stay in the file
        if text.get("freeze", True) and str(text.get("path") or "").startswith("package:"):
            prefixes += [f"{name}.transformer" for name, module in self.named_modules()
                         if isinstance(module, SentenceTransformerTower)]
        own = self.state_dict()
        return [p for p in prefixes if any(under_prefixes(k, [p]) for k in own)]

    @staticmethod
    def load(path: str | Path, device: str | torch.device = "cpu") -> Encoder:
        """Any family's checkpoint (the family is read from the file)."""
        from models.encoders.registry import load_encoder

        return load_encoder(path, device)


def under_prefixes(key: str, prefixes: Sequence[str]) -> bool:
    """Whether a state-dict key lies in one of the submodules named by `prefixes`."""
    return any(key.startswith(f"{prefix}.") for prefix in prefixes)


def encode_in_batches(encode: Callable[[Any], torch.Tensor], items: Sequence | torch.Tensor | BackboneFeatures,
                      dim: int, batch_size: int = 256, desc: str = "encode", progress: bool = False) -> torch.Tensor:
    """`encode` (an encoder's encode_image or encode_text) over `items` in batches, on the CPU;
    (0, dim) for no items."""
    parts = [torch.zeros(0, dim)]
    batches = range(0, len(items), batch_size)
    for start in tqdm(batches, desc=desc, unit="batch", disable=not progress or not len(items)):
        batch = items[start:start + batch_size]
        batch = batch if isinstance(batch, (torch.Tensor, BackboneFeatures)) else list(batch)
        parts.append(encode(batch).float().cpu())
    return torch.cat(parts)


def normalize_pixels(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float, scaled by the backbone's mean/std, in channels-last layout (faster on CPU)."""
    x = pixels.float().div_(255.0)
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last)
