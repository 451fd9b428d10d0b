"""What the frozen EfficientNet-Lite0 sees in the synthetic scenes at the sizes GXN's generator is
judged at: for the one-object scenes of a split, shrunk to the imagined size (32 px) and enlarged
again for the network, how often a scene's nearest neighbour (cosine, pooled features of the last
map) has the same shape and the same colour (chance: 1/7 and 1/10). This is the signal a matching
head on these features can pass to the generator.

It also gives the floor of the image-to-image contrastive term (a picture nearest the real picture
of its own caption among the batch's real pictures): an oracle generator that draws another real
scene with the right colour and shape reaches only this, because it cannot know the real picture's
position, size and background. Prints a table and writes JSON.

    python bench/pretrained_scene_features.py --data runs/synthetic_scenes_4000/dataset.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from models.data import load_records, select_split  # noqa: E402
from models.encoders.efficientnet_lite import LITE_MEAN, LITE_STD, build_efficientnet_lite  # noqa: E402


def one_object_scenes(data: Path, split: str, limit: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """([0, 1] pixels, shapes, colours) of up to `limit` one-object scenes."""
    records = [r for r in select_split(load_records(data), split) if len(r.attributes.get("objects", [])) == 1]
    if not records:
        raise SystemExit(f"{data}: no one-object synthetic scenes in split {split!r}")
    records = records[:limit]
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(r.path).convert("RGB"))).permute(2, 0, 1)
                          for r in records]).float() / 255
    objects = [r.attributes["objects"][0] for r in records]
    return pixels, [o["shape"] for o in objects], [o["colour"] for o in objects]


def pooled_features(network: torch.nn.Module, pixels: torch.Tensor, size: int) -> torch.Tensor:
    x = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1)  # as GXN feeds it
    with torch.no_grad():
        return F.normalize(network.feature_map(x).mean(dim=(2, 3)), dim=1)


def neighbour_agreement(features: torch.Tensor, labels: list[str]) -> float:
    similarity = features @ features.t()
    similarity.fill_diagonal_(-2.0)
    nearest = similarity.argmax(dim=1).tolist()
    return sum(labels[j] == labels[i] for i, j in enumerate(nearest)) / len(labels)


def oracle_contrastive(features: torch.Tensor, keys: list[str], batch: int, temperature: float,
                       seed: int = 0) -> float:
    """The term for a batch whose 'imagined' pictures are other real scenes of the same colour and
    shape (InfoNCE, picture to real pictures, as the generator would be scored)."""
    rng = random.Random(seed)
    rows = list(range(min(batch, len(keys))))
    partners = [rng.choice([j for j in range(len(keys)) if keys[j] == keys[i] and j != i] or [i]) for i in rows]
    logits = features[partners] @ features[rows].t() / temperature
    return float(F.cross_entropy(logits, torch.arange(len(rows))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "runs" / "synthetic_scenes_4000" / "dataset.json")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--imagined-size", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pretrained_scene_features.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    pixels, shapes, colours = one_object_scenes(args.data, args.split, args.images)
    small = F.interpolate(pixels, size=(args.imagined_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
    network = build_efficientnet_lite("efficientnet_lite0", "imagenet").eval()
    keys = [f"{c} {s}" for c, s in zip(colours, shapes, strict=True)]
    rows = []
    for size in args.sizes:
        features = pooled_features(network, small, size)
        rows.append({"seen_at_px": size, "same_shape": neighbour_agreement(features, shapes),
                     "same_colour": neighbour_agreement(features, colours),
                     "oracle_contrastive": oracle_contrastive(features, keys, args.batch, args.temperature)})
    result = {"data": str(args.data), "split": args.split, "scenes": len(shapes), "imagined_size": args.imagined_size,
              "chance_shape": 1 / len(set(shapes)), "chance_colour": 1 / len(set(colours)),
              "uniform_contrastive": math.log(min(args.batch, len(shapes))), "temperature": args.temperature,
              "rows": rows}
    print(f"{len(shapes)} one-object {args.split} scenes at {args.imagined_size} px, seen by Lite0 at:")
    print("| px | nearest has the same shape | ... the same colour | oracle contrastive term (uniform "
          f"{result['uniform_contrastive']:.2f}) |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['seen_at_px']} | {row['same_shape']:.3f} | {row['same_colour']:.3f} | "
              f"{row['oracle_contrastive']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
