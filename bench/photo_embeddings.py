"""Real photo embeddings for the index benches: a trained encoder's image vectors of many views of
every Flickr8k photo (train and val), 100k+ vectors whose neighbourhoods are those of real photos.

    python bench/photo_embeddings.py --checkpoint runs/flickr8k_vsepp_lite0_minilm_2views/model_best.pt

Views of each photo: the ten crops the trainer caches (centre and corners, each also mirrored) and
`--zoom-views` zoomed crops (70 % of the side at the centre and the corners, scaled up to the
crop size). The frozen backbone's features are cached per view set (the trainer's cache), so a
second run only re-applies the heads. Writes `photo_embeddings.npy` (float32, unit rows, grouped
view by view: row v * photos + p is view v of photo p) and a JSON description beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import load_encoder  # noqa: E402
from models.data import BackboneFeatures, decode_split, load_records  # noqa: E402
from models.encoders.base import encode_in_batches  # noqa: E402
from models.training.feature_cache import VIEWS, cached_features, crop_view  # noqa: E402

ZOOM = 0.7
ZOOM_ANCHORS = ("centre", "top-left", "top-right", "bottom-left", "bottom-right")


def zoomed(pixels: torch.Tensor, size: int, anchor: str) -> torch.Tensor:
    """A ZOOM x side crop of uint8 (N, 3, L, L) images at the anchor, scaled to size x size."""
    side = round(pixels.shape[-1] * ZOOM)
    crop = crop_view(pixels, side, (anchor, False)).float()
    scaled = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                                             align_corners=False)
    return scaled.round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def zoomed_features(tower, pixels: torch.Tensor, size: int, anchors: tuple[str, ...], cache: Path,
                    key: str, batch_size: int = 64) -> torch.Tensor:
    """(N, len(anchors), D) fp16 backbone features of the zoomed views (cached under `key`)."""
    path = cache / f"zoomed-{key}-{len(anchors)}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    tower.eval()
    per_view = []
    with tqdm(total=len(anchors) * len(pixels), desc="zoomed views", unit="img") as bar:
        for anchor in anchors:
            parts = []
            for start in range(0, len(pixels), batch_size):
                parts.append(tower.features(zoomed(pixels[start:start + batch_size], size, anchor)).half())
                bar.update(min(batch_size, len(pixels) - start))
            per_view.append(torch.cat(parts))
    features = torch.stack(per_view, dim=1)
    torch.save(features, path)
    return features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "flickr8k")
    parser.add_argument("--zoom-views", type=int, default=5, choices=range(len(ZOOM_ANCHORS) + 1))
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "imgsearch" / "photo_embeddings.npy")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"dataset {args.data} not found")
    started = time.perf_counter()
    encoder = load_encoder(args.checkpoint).eval()
    tower = encoder.frozen_backbone()
    if tower is None:
        sys.exit(f"{args.checkpoint}: this bench needs an encoder on a frozen image backbone")
    encoder.use_backbone_runtime("openvino")
    cache = ROOT / ".cache" / "imgsearch"
    records = load_records(args.data)
    blocks = []
    for split in ("train", "val"):
        decoded = decode_split(records, split, encoder.image_size, cache)
        features = cached_features(tower, decoded, encoder.image_size, list(VIEWS), cache)
        if args.zoom_views:
            key = f"{split}-{len(decoded.pixels)}-{decoded.pixels.shape[-1]}"
            zoom = zoomed_features(tower, decoded.pixels, encoder.image_size, ZOOM_ANCHORS[:args.zoom_views],
                                   cache, key)
            features = torch.cat([features, zoom], dim=1)
        blocks.append(features)
    features = torch.cat(blocks)  # (photos, views, D)
    photos, views = features.shape[:2]
    vectors = [encode_in_batches(encoder.encode_image, BackboneFeatures(features[:, v].contiguous(), None),
                                 encoder.embed_dim, 512, f"heads, view {v + 1}/{views}", True) for v in range(views)]
    embeddings = torch.cat(vectors).numpy().astype(np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, embeddings)
    description = {"checkpoint": str(args.checkpoint), "photos": photos, "views": views,
                   "zoom_views": args.zoom_views, "vectors": len(embeddings), "dim": int(embeddings.shape[1]),
                   "layout": "row v * photos + p is view v of photo p (train photos first, then val)",
                   "seconds": round(time.perf_counter() - started, 1)}
    args.out.with_suffix(".json").write_text(json.dumps(description, indent=1))
    print(json.dumps(description, indent=1))


if __name__ == "__main__":
    main()
