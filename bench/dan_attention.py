"""Where a trained m-DAN looks: Flickr8k val photos with each attention step's 7 x 7 weights over
them, and a caption of each with its words shaded by their weights (as the paper's figures).

    python bench/dan_attention.py --checkpoint runs/flickr8k_dan_lite0_minilm/model_best.pt

Also reports how concentrated the attention is (mean entropy against a uniform spread's, per
step and modality) and which words take the most weight over the val captions. Writes a PNG
(default bench/results/dan_attention.png) and JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import load_encoder  # noqa: E402
from models.data import decode_split, load_records  # noqa: E402


def entropy_ratio(weights: torch.Tensor) -> float:
    """Mean entropy of the rows of `weights` (each a distribution over the last axis), divided by
    that of a uniform distribution: 1 is no preference, 0 is all weight on one item."""
    flat = weights.reshape(-1, weights.shape[-1]).clamp_min(1e-12)
    return float((-(flat * flat.log()).sum(dim=1)).mean() / math.log(flat.shape[1]))


def word_entropy_ratio(entries: list[dict]) -> list[float]:
    per_step: dict[int, list[float]] = defaultdict(list)
    for entry in entries:
        if len(entry["words"]) < 2:
            continue
        for step, weights in enumerate(entry["weights"]):
            per_step[step].append(entropy_ratio(torch.tensor([weights])))
    return [sum(v) / len(v) for _, v in sorted(per_step.items())]


def draw(images: torch.Tensor, grids: torch.Tensor, entries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count, steps = len(images), grids.shape[1]
    fig, axes = plt.subplots(count, steps + 1, figsize=(2.6 * (steps + 1), 2.9 * count), squeeze=False)
    for row in range(count):
        picture = images[row].permute(1, 2, 0).numpy()
        axes[row, 0].imshow(picture)
        axes[row, 0].set_title("photo", fontsize=8)
        for step in range(steps):
            axis = axes[row, step + 1]
            axis.imshow(picture)
            axis.imshow(grids[row, step].numpy(), cmap="inferno", alpha=0.55, interpolation="nearest",
                        extent=(0, picture.shape[1], picture.shape[0], 0))
            axis.set_title(f"step {step + 1}", fontsize=8)
        words = entries[row]["words"]
        mean = torch.tensor(entries[row]["weights"]).mean(dim=0)
        ranked = mean.argsort(descending=True)[:3].tolist()
        text = " ".join(w.upper() if i in ranked else w for i, w in enumerate(words))
        axes[row, 0].set_xlabel(text, fontsize=7, loc="left", wrap=True)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    fig.suptitle("m-DAN on Flickr8k val: region weights per step;\nCAPITALS: the caption's 3 heaviest words",
                 fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "flickr8k")
    parser.add_argument("--count", type=int, default=6, help="photos in the figure")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dan_attention.png")
    args = parser.parse_args()
    encoder = load_encoder(args.checkpoint)
    if not encoder.attends:
        sys.exit(f"{args.checkpoint}: encoder {encoder.name!r} has no attention steps")
    val = decode_split(load_records(args.data), "val", encoder.image_size, progress=True)
    grids = torch.cat([encoder.image_attention(val.pixels[s:s + 64]) for s in range(0, len(val), 64)])
    captions = val.pairs.captions
    entries = [e for s in range(0, len(captions), 256) for e in encoder.text_attention(captions[s:s + 256])]
    weight_by_word: dict[str, list[float]] = defaultdict(list)
    for entry in entries:
        for i, word in enumerate(entry["words"]):
            weight_by_word[word].append(sum(step[i] for step in entry["weights"]) / len(entry["weights"]))
    common = {w: sum(v) / len(v) for w, v in weight_by_word.items() if len(v) >= 50}
    report = {"checkpoint": str(args.checkpoint), "steps": encoder.steps, "val_images": len(val),
              "region_entropy_ratio": [entropy_ratio(grids[:, k].flatten(1)) for k in range(encoder.steps)],
              "word_entropy_ratio": word_entropy_ratio(entries),
              "heaviest_words": sorted(common.items(), key=lambda kv: -kv[1])[:15],
              "lightest_words": sorted(common.items(), key=lambda kv: kv[1])[:15]}
    chosen = torch.linspace(0, len(val) - 1, args.count).round().long().tolist()
    first_caption = {owner: i for i, owner in reversed(list(enumerate(val.pairs.caption_to_image)))}
    draw(val.pixels[chosen], grids[chosen], [entries[first_caption[i]] for i in chosen], args.out)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "checkpoint"}, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
