"""Precomputed image-backbone features: what training feeds a frozen backbone's heads instead of pixels."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BackboneFeatures:
    """A frozen image backbone's outputs, computed once (the trainer's feature cache), standing in
    for uint8 pixels wherever an encoder takes images. `features` is (N, C) pooled or (N, C, H, W);
    `thumbnails` keeps small uint8 pixels for families that also look at the picture itself (GXN's
    discriminator), or is None."""

    features: torch.Tensor
    thumbnails: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: slice | torch.Tensor) -> BackboneFeatures:
        thumbnails = None if self.thumbnails is None else self.thumbnails[index]
        return BackboneFeatures(self.features[index], thumbnails)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> BackboneFeatures:
        thumbnails = None if self.thumbnails is None else self.thumbnails.to(device, non_blocking=non_blocking)
        return BackboneFeatures(self.features.to(device, non_blocking=non_blocking), thumbnails)
