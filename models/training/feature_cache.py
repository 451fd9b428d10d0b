"""A frozen image backbone's features, computed once per view and cached on disk.

With the backbone frozen (the fixed-feature setting of Kiros et al. and VSE++), every epoch would
push the same pixels through the same network. Instead each training image is encoded once per
view (the centre crop, its mirror image and corner crops, as VSE++'s "RC" setting) into a file
keyed by the images, the view list and the backbone's weights; the epochs then train only the
heads on a randomly chosen view of each image, in seconds on 2 cores.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from tqdm import tqdm

from models.data import BackboneFeatures, DecodedSplit
from models.data.images import files_fingerprint
from models.encoders.image_towers import BackboneTower
from models.io import atomic_torch_save, digest_weights

CACHE_FORMAT = 1
# (crop anchor, mirrored): the centre first, then the four corners, each also mirrored.
VIEWS = (("centre", False), ("centre", True), ("top-left", False), ("top-right", False), ("bottom-left", False),
         ("bottom-right", False), ("top-left", True), ("top-right", True), ("bottom-left", True),
         ("bottom-right", True))


def choose_views(count: int, mirror: bool) -> list[tuple[str, bool]]:
    """The first `count` views (mirrored views left out when `mirror` is off)."""
    allowed = [view for view in VIEWS if mirror or not view[1]]
    if not 1 <= count <= len(allowed):
        raise ValueError(f"feature_views must be between 1 and {len(allowed)}, got {count}")
    return allowed[:count]


def crop_view(pixels: torch.Tensor, size: int, view: tuple[str, bool]) -> torch.Tensor:
    """One view of uint8 (N, 3, L, L) images: a size x size crop at the anchor, mirrored or not."""
    anchor, mirrored = view
    slack = pixels.shape[-1] - size
    if slack < 0:
        raise ValueError(f"images of {pixels.shape[-1]} px are smaller than the crop size {size}")
    top, left = {"centre": (slack // 2, slack // 2), "top-left": (0, 0), "top-right": (0, slack),
                 "bottom-left": (slack, 0), "bottom-right": (slack, slack)}[anchor]
    crop = pixels[..., top:top + size, left:left + size]
    return crop.flip(-1) if mirrored else crop


def thumbnails(pixels: torch.Tensor, image_size: int, size: int, batch_size: int = 256) -> torch.Tensor:
    """Centre crops scaled down to `size` px, uint8 (for families that also look at the pixels);
    in batches, so no float copy of the whole split is made."""
    parts = []
    for start in range(0, len(pixels), batch_size):
        centre = crop_view(pixels[start:start + batch_size], image_size, VIEWS[0]).float()
        small = torch.nn.functional.interpolate(centre, size=(size, size), mode="bilinear", antialias=True,
                                                align_corners=False)
        parts.append(small.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(parts) if parts else torch.zeros(0, 3, size, size, dtype=torch.uint8)


def cached_features(tower: BackboneTower, split: DecodedSplit, image_size: int, views: list[tuple[str, bool]],
                    cache_dir: Path | None, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """fp16 features of every image of `split` under every view: (N, V, ...) for V views."""
    pixels = split.pixels
    cache_file = None
    if cache_dir is not None:
        key = _cache_key(tower, split, image_size, views)
        cache_file = Path(cache_dir) / f"features-{key}.pt"
        if cache_file.is_file():
            return torch.load(cache_file, weights_only=True)
    was_training = tower.training
    tower.eval()
    per_view = []
    total = len(views) * len(pixels)
    bar = tqdm(total=total, desc=f"backbone features ({len(views)} view(s))", unit="img", disable=not progress)
    with torch.no_grad():
        for view in views:
            parts = []
            for start in range(0, len(pixels), batch_size):
                batch = crop_view(pixels[start:start + batch_size], image_size, view)
                parts.append(tower.features(batch.to(tower.mean.device)).half().cpu())
                bar.update(len(batch))
            per_view.append(torch.cat(parts))
    bar.close()
    tower.train(was_training)
    features = torch.stack(per_view, dim=1)
    if cache_file is not None:
        atomic_torch_save(features, cache_file)
    return features


def feature_split(split: DecodedSplit, features: torch.Tensor, thumbnail_size: int | None,
                  image_size: int) -> DecodedSplit:
    """`split` with its pixels replaced by the backbone features (and thumbnails where needed)."""
    small = thumbnails(split.pixels, image_size, thumbnail_size) if thumbnail_size else None
    return DecodedSplit(split.pairs, BackboneFeatures(features, small), split.report)


def pick_views(features: BackboneFeatures) -> BackboneFeatures:
    """One random view per image from (B, V, ...) features -> (B, ...)."""
    count = features.features.shape[1]
    chosen = torch.randint(count, (len(features),))
    return BackboneFeatures(features.features[torch.arange(len(features)), chosen], features.thumbnails)


def _cache_key(tower: BackboneTower, split: DecodedSplit, image_size: int, views: list[tuple[str, bool]]) -> str:
    # fp32 runtimes agree with eager PyTorch to 1e-5; reduced precision gives other features.
    precision = getattr(tower.runtime, "precision", "f32")
    digest = hashlib.sha256(f"{CACHE_FORMAT}:{tower.backbone_name}:{tower.output}:{image_size}:{views}:"
                            f"{tuple(split.pixels.shape)}:{tower.mean.tolist()}:{tower.std.tolist()}:"
                            f"{precision}".encode())
    digest.update(files_fingerprint([r.path for r in split.records], split.pixels.shape[-1]).encode())
    return digest_weights(digest, tower.backbone).hexdigest()[:20]
