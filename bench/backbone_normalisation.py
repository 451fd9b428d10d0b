"""Which input normalisation the EfficientNet-Lite ImageNet weights expect, measured on real photos.

There is no ImageNet here, but Flickr8k's captions say what is in each photo. Images whose
captions mostly mention a dog should get an ImageNet dog class (indices 151-268) as top-1, and
images whose captions never mention one should not. Each candidate normalisation is scored by
that agreement and by the mean top-1 probability:

    python bench/backbone_normalisation.py --data ../shared/data/flickr8k --backbone efficientnet_lite0
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.data import decode_split, load_records  # noqa: E402
from models.encoders.base import normalize_pixels  # noqa: E402
from models.encoders.efficientnet_lite import (  # noqa: E402
    EFFICIENTNET_LITES,
    create_timm_lite,
    map_reference_state,
    resolve_weights,  # noqa: E402
)

CANDIDATES = {
    "[-1, 1] (mean 0.5, std 0.5)": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "ImageNet mean/std": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "[0, 1] (none)": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
DOG_CLASSES = range(151, 269)
DOG = re.compile(r"\b(dog|dogs|puppy|puppies)\b")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "flickr8k"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=list(EFFICIENTNET_LITES))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "backbone_normalisation.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)

    variant = EFFICIENTNET_LITES[args.backbone]
    network = create_timm_lite(args.backbone, num_classes=1000)
    path = resolve_weights(args.backbone, "imagenet")
    network.load_state_dict(map_reference_state(torch.load(path, map_location="cpu", weights_only=True), network))
    network = network.eval().to(memory_format=torch.channels_last)
    split = decode_split(load_records(args.data), args.split, variant.native_size, Path(".cache/imgsearch"))
    mentions = [sum(bool(DOG.search(c.lower())) for c in r.captions) for r in split.records]
    dogs = torch.tensor([m >= 3 for m in mentions])
    no_dogs = torch.tensor([m == 0 for m in mentions])
    rows = []
    for label, (mean, std) in CANDIDATES.items():
        started = time.perf_counter()
        probabilities = []
        with torch.no_grad():
            for start in range(0, len(split), 64):
                x = normalize_pixels(split.pixels[start:start + 64], torch.tensor(mean), torch.tensor(std))
                probabilities.append(network(x).softmax(dim=1))
        p = torch.cat(probabilities)
        top1 = p.argmax(1)
        dog_top1 = torch.tensor([int(c) in DOG_CLASSES for c in top1])
        rows.append({"normalisation": label, "mean": mean, "std": std,
                     "dog_photos_top1_dog": float(dog_top1[dogs].float().mean() * 100),
                     "other_photos_top1_dog": float(dog_top1[no_dogs].float().mean() * 100),
                     "mean_top1_probability": float(p.max(1).values.mean()),
                     "seconds": time.perf_counter() - started})
    print(f"{args.backbone} on {args.data} [{args.split}]: {int(dogs.sum())} photos with a dog in >= 3 captions, "
          f"{int(no_dogs.sum())} with none")
    print(f"{'normalisation':<30}{'dog photos -> dog %':>22}{'others -> dog %':>18}{'mean top-1 p':>14}")
    for row in rows:
        print(f"{row['normalisation']:<30}{row['dog_photos_top1_dog']:>22.1f}{row['other_photos_top1_dog']:>18.1f}"
              f"{row['mean_top1_probability']:>14.3f}")
    Path(args.out).write_text(json.dumps({"backbone": args.backbone, "data": args.data, "split": args.split,
                                          "dog_photos": int(dogs.sum()), "other_photos": int(no_dogs.sum()),
                                          "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
