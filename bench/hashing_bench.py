"""Cross-modal hashing (DCMH) on Flickr8k val: bits per vector -> MAP, precision within Hamming
radius 2, Recall@K, against the float model on the same towers.

    python bench/hashing_bench.py --float-checkpoint runs/flickr8k_vsepp_lite0_minilm_2views/model_best.pt

The towers are the ones the float rows of the training table use: the frozen ImageNet
EfficientNet-Lite0 (pooled 1280-d features, 2 cached views per training image: the centre crop
and its mirror) and the frozen all-MiniLM-L6-v2 (384-d sentence features), each standardised
over the training rows. DCMH trains one hashing head (two layers) per tower on the training
split: every caption is an item paired with a view of its photo (`--one-caption`: one caption per
photo), items of one photo are similar, and the likelihood weighs the similar and the dissimilar
pairs equally (`--unweighted`: DCMH's plain sum; `models/hashing.py`). At each code length the
bench reports, both ways over the 1,000 val images and their 5,000 captions:

- MAP of Hamming ranking (DCMH's measure; relevant = the photo's own captions, or its photo;
  equal distances keep database order, as do the re-ranking's top 100),
- precision within Hamming radius 2 (hash lookup; 0 for a query whose ball is empty),
- R@1/5/10 and rsum by Hamming distance (ties count against the query, as the float evaluation's
  do), and with the top 100 by Hamming re-ranked by the float model's cosine (the float row's MAP
  and rsum rank by that cosine),
- bytes per vector beside the float model's.

`--float-checkpoint`: the trained float encoder on the same towers, for its own row and for the
re-ranking. Writes a table and JSON (default bench/results/hashing.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import create_encoder, load_encoder  # noqa: E402
from models.data import load_records  # noqa: E402
from models.evaluation import (  # noqa: E402
    encode_pairs,
    mean_average_precision,
    metrics_from_similarity,
    precision_within_radius,
    recall_metrics,
)
from models.hashing import DCMHConfig, hamming_distances, train_dcmh  # noqa: E402
from models.training import TrainConfig  # noqa: E402
from models.training.trainer import decode_splits, precompute_frozen_text, with_cached_features  # noqa: E402

TOWERS = "vsepp_lite0_minilm"  # the registry config whose frozen towers the heads sit on


def tower_features(data: Path, progress: bool = True) -> dict:
    """Frozen Lite0 pooled features and MiniLM sentence features of both splits (cached on disk)."""
    config = TrainConfig(data=str(data), model=TOWERS, feature_views=2, min_word_count=2)
    encoder = create_encoder(TOWERS).eval()
    records = load_records(data)
    train, val = decode_splits(config, records, encoder.image_size, progress)
    train, val = with_cached_features(encoder, train, val, config, progress)
    precompute_frozen_text(encoder, [train, val], config, progress)
    text = encoder.text_tower
    return {"train_images": train.pixels.features.float(), "val_images": val.pixels.features.float(),
            "train_texts": text.frozen_features(train.pairs.captions), "train_captions": train.pairs.captions,
            "val_texts": text.frozen_features(val.pairs.captions),
            "train_owners": torch.as_tensor(train.pairs.caption_to_image),
            "val_owners": np.asarray(val.pairs.caption_to_image), "val_split": val}


def standardise(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each feature to zero mean and unit variance over the training rows (raw Lite0 features are
    on a scale that saturates the heads' likelihood at once)."""
    return (features - reference.mean(dim=0)) / (reference.std(dim=0) + 1e-6)


def reranked_similarity(hamming: np.ndarray, cosine: np.ndarray, top: int) -> np.ndarray:
    """Images x captions scores: each query's `top` nearest by Hamming ordered by the float cosine,
    ahead of everything else (which keeps the Hamming order). Scored per direction by the caller."""
    order = np.argsort(hamming, axis=1, kind="stable")[:, :top]
    scores = -hamming.astype(np.float32) - 1000.0
    rows = np.arange(len(hamming))[:, None]
    scores[rows, order] = cosine[rows, order]
    return scores


def evaluate_codes(image_codes: np.ndarray, text_codes: np.ndarray, owners: np.ndarray,
                   cosine: np.ndarray | None, top: int = 100) -> dict:
    distances = hamming_distances(image_codes, text_codes)  # images x captions
    relevant = owners[None, :] == np.arange(len(image_codes))[:, None]
    row = {"map_i2t": mean_average_precision(distances, relevant),
           "map_t2i": mean_average_precision(distances.T, relevant.T),
           "precision_r2_i2t": precision_within_radius(distances, relevant),
           "precision_r2_t2i": precision_within_radius(distances.T, relevant.T),
           "hamming": metrics_from_similarity(-distances.astype(np.float32), owners).as_dict()}
    if cosine is not None:
        i2t = metrics_from_similarity(reranked_similarity(distances, cosine, top), owners)
        t2i = metrics_from_similarity(reranked_similarity(distances.T, cosine.T, top).T, owners)
        # each direction from the matrix whose rows were re-ranked as its queries
        reranked = {f"i2t_{k}": getattr(i2t, f"i2t_{k}") for k in ("r1", "r5", "r10", "medr")}
        reranked |= {f"t2i_{k}": getattr(t2i, f"t2i_{k}") for k in ("r1", "r5", "r10", "medr")}
        reranked["rsum"] = sum(v for k, v in reranked.items() if "_r" in k and not k.endswith("medr"))
        row["reranked"] = reranked
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "flickr8k")
    parser.add_argument("--bits", default="16,32,64,128")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--alpha", type=float,
                        help="Theta = alpha / bits * F.G (HashNet's scaling) instead of DCMH's F.G / 2")
    parser.add_argument("--unweighted", action="store_true", help="DCMH's plain likelihood (no pair weighting)")
    parser.add_argument("--one-caption", action="store_true",
                        help="one random caption per training photo (6,000 items, 5x faster) instead of all")
    parser.add_argument("--float-checkpoint", type=Path)
    parser.add_argument("--rerank-top", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hashing.json")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"dataset {args.data} not found")
    features = tower_features(args.data)
    owners = features["val_owners"]
    torch.manual_seed(0)
    train_owners, text_rows = features["train_owners"], features["train_texts"]
    if args.one_caption:  # the last caption row of each photo, after a shuffle
        order = torch.randperm(len(train_owners))
        last = {int(owner): int(row) for owner, row in zip(train_owners[order], order, strict=True)}
        keep = torch.tensor(sorted(last.values()))
        train_owners, text_rows = train_owners[keep], text_rows[keep]
    views = features["train_images"]
    image_rows = views[train_owners, torch.randint(views.shape[1], (len(train_owners),))]
    results = {"data": str(args.data), "towers": TOWERS, "train_items": len(train_owners),
               "val_images": len(features["val_images"]), "val_captions": len(owners), "epochs": args.epochs,
               "gamma": args.gamma, "eta": args.eta, "weighted": not args.unweighted, "alpha": args.alpha,
               "one_caption": args.one_caption, "rows": []}
    cosine = None
    if args.float_checkpoint:
        model = load_encoder(args.float_checkpoint)
        images, texts = encode_pairs(model, features["val_split"].pixels, features["val_split"].pairs.captions)
        cosine = (images @ texts.t()).numpy()
        metrics = recall_metrics(images, texts, owners)
        relevant = owners[None, :] == np.arange(len(images))[:, None]
        results["rows"].append({"codes": f"float ({model.embed_dim} x fp32)", "bytes": 4 * model.embed_dim,
                                "map_i2t": mean_average_precision(-cosine, relevant),
                                "map_t2i": mean_average_precision(-cosine.T, relevant.T),
                                "hamming": metrics.as_dict()})
    for bits in [int(b) for b in args.bits.split(",")]:
        started = time.perf_counter()
        config = DCMHConfig(bits=bits, epochs=args.epochs, gamma=args.gamma, eta=args.eta,
                            weighted=not args.unweighted,
                            theta_scale=0.5 if args.alpha is None else args.alpha / bits)
        heads = train_dcmh(standardise(image_rows, image_rows), standardise(text_rows, text_rows), train_owners,
                           config)
        row = {"codes": f"DCMH {bits} bits", "bits": bits, "bytes": bits // 8,
               "train_seconds": time.perf_counter() - started, "history": heads.history,
               **evaluate_codes(heads.image_codes(standardise(features["val_images"], image_rows)),
                                heads.text_codes(standardise(features["val_texts"], text_rows)), owners, cosine,
                                args.rerank_top)}
        results["rows"].append(row)
        print_table(results["rows"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


def print_table(rows: list[dict]) -> None:
    print(f"\n{'codes':<26}{'bytes':>6}{'MAP i2t':>9}{'MAP t2i':>9}{'P@r2 i2t':>10}{'P@r2 t2i':>10}"
          f"{'rsum':>8}{'reranked':>10}")
    def cell(row: dict, key: str) -> str:
        return f"{row[key]:.3f}" if key in row else "-"

    for row in rows:
        reranked = f"{row['reranked']['rsum']:.1f}" if "reranked" in row else "-"
        print(f"{row['codes']:<26}{row['bytes']:>6}{cell(row, 'map_i2t'):>9}{cell(row, 'map_t2i'):>9}"
              f"{cell(row, 'precision_r2_i2t'):>10}{cell(row, 'precision_r2_t2i'):>10}"
              f"{row['hamming']['rsum']:>8.1f}{reranked:>10}")


if __name__ == "__main__":
    main()
