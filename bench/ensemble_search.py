"""Which trained encoders to join into an ensemble: every subset scored on the validation split.

Each member's val embeddings are computed once; a subset's ensemble vector is the concatenation of
its members' unit vectors (divided by sqrt(k), which does not change rankings), exactly what
`imgsearch ensemble` serves, so each subset costs only a Recall@K evaluation.

    python bench/ensemble_search.py runs/flickr8k_vsepp_lite0_minilm/model_best.pt \\
        runs/flickr8k_vse_infonce_lite2_minilm/model_best.pt ... --data ../shared/data/flickr8k
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.data import decode_split, load_records  # noqa: E402
from models.encoders import load_encoder  # noqa: E402
from models.evaluation import encode_pairs, recall_metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "flickr8k"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ensemble_search.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    records = load_records(args.data)
    embeddings = {}
    for path in args.checkpoints:
        encoder = load_encoder(path)
        encoder.use_backbone_runtime("openvino")
        split = decode_split(records, args.split, encoder.image_size, ROOT / ".cache" / "imgsearch", progress=False)
        images, texts = encode_pairs(encoder, split.pixels, split.pairs.captions)
        embeddings[str(path)] = (images, texts, split.pairs.caption_to_image)
        print(f"{path}: rsum {recall_metrics(images, texts, split.pairs.caption_to_image).rsum:.1f}", flush=True)
    rows = []
    for k in range(1, len(embeddings) + 1):
        for subset in itertools.combinations(embeddings, k):
            images = torch.cat([embeddings[m][0] for m in subset], dim=1)
            texts = torch.cat([embeddings[m][1] for m in subset], dim=1)
            rows.append({"members": list(subset), "rsum": recall_metrics(images, texts, embeddings[subset[0]][2]).rsum})
    rows.sort(key=lambda row: -row["rsum"])
    for row in rows[:12]:
        print(f"{row['rsum']:7.1f}  " + " + ".join(Path(m).parent.name for m in row["members"]))
    args.out.write_text(json.dumps({"data": args.data, "split": args.split, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
