"""What a trained GXN generates: caption quality (BLEU-4, CIDEr-D) and a grid of imagined images.

    python bench/gxn_generation.py --checkpoint runs/flickr8k_gxn/model_best.pt --data ../shared/data/flickr8k
    python bench/gxn_generation.py --checkpoint runs/synthetic_gxn/model_best.pt \
        --data runs/synthetic_scenes_4000/dataset.json

Captions are decoded greedily and with a beam for every image of the split and scored against the
split's own captions (`models.caption_metrics`). The grid shows, for ten captions of the split
(its first caption of ten evenly spaced images), the imagined image above the real one.

On the synthetic scenes, where the truth is known, two more checks:
- captions: of the "colour shape" pairs the generated captions name, the share that are in the
  scene (precision; also for the colour and the shape alone), and the share of the scene's objects
  they name (recall);
- imagined images: for val scenes with one object, the picture imagined from its first caption is
  judged by a nearest-palette colour rule (each pixel to the closest scene colour; the object colour
  with most pixels wins) and by a small CNN trained here on the real one-object training scenes
  (colour and shape heads); the same judges on the real val scenes give the ceiling. Chance is 1/10
  for colour, 1/7 for shape.
R-precision (AttnGAN's, under the GXN's own embedding, among 100 captions) of the imagined images,
of the real images, and of a generator that ignores its text (`r_precision`).
Writes a table to stdout, JSON (default bench/results/gxn_generation_RUN.json) and the grid PNG.
A GXN trained without its generator (imagine weight 0) gets the caption part alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import load_encoder  # noqa: E402
from models.caption_metrics import words  # noqa: E402
from models.data import decode_split, load_records  # noqa: E402
from models.data.synthetic import BACKGROUNDS, COLOURS, SHAPES  # noqa: E402
from models.encoders import CheckpointError  # noqa: E402
from models.encoders.base import encode_in_batches  # noqa: E402
from models.encoders.gxn import caption_scores  # noqa: E402


def caption_quality(encoder, split, beam_width: int) -> tuple[dict, list[str]]:
    """The scores per decoding, and the beam captions (the synthetic check reads them too)."""
    out, generated = {}, []
    for label, width in (("greedy", 1), (f"beam {beam_width}", beam_width)):
        started = time.perf_counter()
        generated = encoder.describe_in_batches(split.pixels, width, batch_size=128)
        out[label] = {**caption_scores(generated, split),
                      "ms_per_image": 1000 * (time.perf_counter() - started) / len(generated),
                      "examples": [{"generated": g, "reference": r.captions[0]}
                                   for g, r in zip(generated[:5], split.records, strict=False)]}
    return out, generated


def serving_latency(encoder, split, count: int = 50) -> dict:
    """What the app pays per query: one image described, one text imagined (median ms, one at a
    time, as the search service calls them)."""
    def median_ms(call, items) -> float:
        times = []
        for item in items:
            started = time.perf_counter()
            call(item)
            times.append(1000 * (time.perf_counter() - started))
        return float(np.median(times))

    images = [split.pixels[i:i + 1] for i in range(min(count, len(split)))]
    texts = [[r.captions[0]] for r in split.records[:count]]
    out = {"describe_greedy_ms": median_ms(lambda x: encoder.describe(x, beam_width=1), images),
           f"describe_beam{encoder.beam_width}_ms": median_ms(encoder.describe, images)}
    if encoder.imagines_texts:
        out["imagine_ms"] = median_ms(encoder.imagine, texts)
    return out


def mentioned_objects(caption: str) -> set[tuple[str, str]]:
    """("colour", "shape") pairs a caption names: a colour word directly before a shape word."""
    tokens = [w.rstrip("s") if w.rstrip("s") in SHAPES else w for w in words(caption)]
    return {(a, b) for a, b in zip(tokens, tokens[1:], strict=False) if a in COLOURS and b in SHAPES}


def synthetic_caption_check(generated: list[str], split) -> dict:
    named = correct = objects = found = colour_right = shape_right = 0
    for caption, record in zip(generated, split.records, strict=True):
        truth = {(o["colour"], o["shape"]) for o in record.attributes["objects"]}
        mentions = mentioned_objects(caption)
        named, correct = named + len(mentions), correct + len(mentions & truth)
        objects, found = objects + len(truth), found + len(truth & mentions)
        colour_right += sum(colour in {c for c, _ in truth} for colour, _ in mentions)
        shape_right += sum(shape in {s for _, s in truth} for _, shape in mentions)
    return {"object_precision": correct / max(1, named), "object_recall": found / max(1, objects),
            "colour_precision": colour_right / max(1, named), "shape_precision": shape_right / max(1, named),
            "objects_named": named, "objects_in_scenes": objects}


PALETTE = np.array([*COLOURS.values(), *BACKGROUNDS.values()], dtype=np.float32)


def classify_colour(image: np.ndarray) -> str:
    """image: (3, H, W) uint8. The object colour with the most pixels nearest to it."""
    pixels = image.reshape(3, -1).T.astype(np.float32)
    nearest = ((pixels[:, None, :] - PALETTE[None]) ** 2).sum(-1).argmin(1)
    counts = np.bincount(nearest, minlength=len(PALETTE))[: len(COLOURS)]
    return list(COLOURS)[int(counts.argmax())]


class SceneClassifier(torch.nn.Module):
    """A small CNN with two heads, colour and shape, for single-object scenes at the imagined size."""

    def __init__(self):
        super().__init__()
        def block(i: int, o: int) -> torch.nn.Sequential:
            return torch.nn.Sequential(torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.BatchNorm2d(o),
                                       torch.nn.ReLU(), torch.nn.MaxPool2d(2))
        self.body = torch.nn.Sequential(block(3, 32), block(32, 64), block(64, 128),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.colour, self.shape = torch.nn.Linear(128, len(COLOURS)), torch.nn.Linear(128, len(SHAPES))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(pixels.float() / 127.5 - 1)
        return self.colour(features), self.shape(features)


def single_object_labels(split) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """(indices of the split's one-object scenes, their colour labels, their shape labels)."""
    chosen = [i for i, r in enumerate(split.records) if len(r.attributes.get("objects", [])) == 1]
    objects = [split.records[i].attributes["objects"][0] for i in chosen]
    return (chosen, torch.tensor([list(COLOURS).index(o["colour"]) for o in objects]),
            torch.tensor([SHAPES.index(o["shape"]) for o in objects]))


def train_scene_classifier(train, epochs: int = 40) -> SceneClassifier:
    """Trained on the real one-object training scenes (at the imagined size), seeded."""
    torch.manual_seed(0)
    chosen, colours, shapes = single_object_labels(train)
    pixels = train.pixels[chosen]
    model = SceneClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(chosen)).split(64):
            colour, shape = model(pixels[batch])
            loss = torch.nn.functional.cross_entropy(colour, colours[batch]) + \
                torch.nn.functional.cross_entropy(shape, shapes[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def classifier_accuracy(model: SceneClassifier, pixels: torch.Tensor, colours: torch.Tensor,
                        shapes: torch.Tensor) -> dict:
    colour, shape = model(pixels)
    return {"colour": float((colour.argmax(1) == colours).float().mean()),
            "shape": float((shape.argmax(1) == shapes).float().mean())}


def synthetic_imagine_check(encoder, small_val, train) -> dict:
    """Imagined one-object scenes (one per val scene, from its first caption), judged by two
    classifiers: the nearest-palette colour rule, and a CNN trained on the real training scenes
    (colour and shape). The same judges on the real val scenes give the ceiling."""
    chosen, colours, shapes = single_object_labels(small_val)
    if not chosen:
        return {"single_object_scenes": 0}
    captions = [small_val.records[i].captions[0] for i in chosen]
    imagined = imagine_all(encoder, captions)
    real = small_val.pixels[chosen]
    names = [list(COLOURS)[c] for c in colours.tolist()]
    palette = {label: sum(classify_colour(x) == c for x, c in zip(images.numpy(), names, strict=True)) / len(chosen)
               for label, images in (("imagined", imagined), ("real", real))}
    classifier = train_scene_classifier(train)
    return {"single_object_scenes": len(chosen), "chance_colour": 1 / len(COLOURS), "chance_shape": 1 / len(SHAPES),
            "palette_colour": palette,
            "trained_classifier": {"imagined": classifier_accuracy(classifier, imagined, colours, shapes),
                                   "real": classifier_accuracy(classifier, real, colours, shapes)},
            "distinct_pictures": distinct_pictures(imagined, captions)}


def distinct_pictures(images: torch.Tensor, captions: list[str], count: int = 200) -> float:
    """Mean absolute pixel difference (0-255) between imagined pictures of differently worded
    captions: near 0 means one picture for every text."""
    flat = images[:count].flatten(1).float()
    texts = captions[:count]
    different = torch.tensor([[a != b for b in texts] for a in texts])
    if not different.any():
        return 0.0
    return float(torch.cdist(flat, flat, p=1)[different].mean() / flat.shape[1])


def imagine_all(encoder, captions: list[str], batch_size: int = 256) -> torch.Tensor:
    """What the encoder imagines for every caption: uint8 (N, 3, S, S)."""
    return torch.cat([encoder.imagine(captions[s:s + batch_size]) for s in range(0, len(captions), batch_size)])


def other_caption_sets(captions: list[str], candidates: int, generator: torch.Generator) -> torch.Tensor:
    """(N, candidates) caption indices: column 0 is image i's own caption, the rest are captions of
    other images whose text differs from it (a synthetic scene's caption often recurs word for
    word, and a copy of the right caption is not a wrong one)."""
    rows = []
    for i, caption in enumerate(captions):
        pool = torch.tensor([j for j, other in enumerate(captions) if other != caption])
        picked = pool[torch.randperm(len(pool), generator=generator)[:candidates - 1]]
        rows.append(torch.cat([torch.tensor([i]), picked]))
    width = min(map(len, rows))
    return torch.stack([row[:width] for row in rows])


def differently_worded(captions: list[str], generator: torch.Generator) -> torch.Tensor:
    """For each caption, the index of a random caption with different text."""
    order = torch.randperm(len(captions), generator=generator).tolist()
    for i in range(len(order)):
        tries = 0
        while captions[order[i]] == captions[i] and tries < len(order):
            j = int(torch.randint(len(order), (1,), generator=generator))
            order[i], order[j] = order[j], order[i]
            tries += 1
    return torch.tensor(order)


def r_precision(encoder, split, small_real: torch.Tensor, candidates: int = 100, seed: int = 0) -> dict:
    """AttnGAN's R-precision under the retrieval model itself: for each image, its caption (the
    first) and candidates - 1 differently worded captions of other images are ranked by the
    encoder's similarity to the image; the share of images whose own caption scores strictly
    highest. Measured on the images imagined from each caption, on the real images at full size and
    at the imagined size, and on images imagined from another image's caption: a generator that
    ignores its text (it should score chance)."""
    captions = [r.captions[0] for r in split.records]
    texts = encode_in_batches(encoder.encode_text, captions, encoder.embed_dim)
    imagined = imagine_all(encoder, captions)
    generator = torch.Generator().manual_seed(seed)
    sets = other_caption_sets(captions, candidates, generator)

    def first_share(images: torch.Tensor) -> float:
        scores = (encode_in_batches(encoder.encode_image, images, encoder.embed_dim, 128)[:, None, :]
                  * texts[sets]).sum(-1)
        return float((scores[:, 0] > scores[:, 1:].amax(dim=1)).float().mean())

    size = imagined.shape[-1]
    return {"candidates": sets.shape[1], "imagined": first_share(imagined), "real_full_size": first_share(split.pixels),
            f"real_at_{size}px": first_share(small_real),
            "text_ignored": first_share(imagined[differently_worded(captions, generator)]),
            "chance": 1 / sets.shape[1]}


@torch.no_grad()
def condition_spread(encoder, split) -> dict:
    """How much the generator's condition (the mean of the conditioning augmentation) varies from
    caption to caption: near 0 means the KL term has pulled every text to the same point, and the
    pictures cannot depend on the text."""
    captions = [r.captions[0] for r in split.records]
    _, mu, _ = encoder.conditioning.sample(torch.cat([encoder.text_low(captions[s:s + 256])
                                                      for s in range(0, len(captions), 256)]))
    return {"std_across_captions": float(mu.std(0).mean()), "mean_abs": float(mu.abs().mean())}


def imagined_grid(encoder, split, path: Path, count: int = 10) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = np.linspace(0, len(split) - 1, count).round().astype(int)
    captions = [split.records[i].captions[0] for i in chosen]
    imagined = encoder.imagine(captions)
    fig, axes = plt.subplots(2, count, figsize=(2.1 * count, 5.2))
    for column, (i, caption) in enumerate(zip(chosen, captions, strict=True)):
        axes[0, column].imshow(imagined[column].permute(1, 2, 0).numpy(), interpolation="nearest")
        axes[0, column].set_title(textwrap.fill(caption, 28), fontsize=7)
        axes[1, column].imshow(split.pixels[i].permute(1, 2, 0).numpy())
        for row in (0, 1):
            axes[row, column].axis("off")
    axes[0, 0].text(-0.1, 0.5, "imagined", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "real", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    fig.suptitle(f"{encoder.name}: what the model imagined for ten {split.records[0].split} captions (top), "
                 "and the image each caption was written for (bottom)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained GXN model_best.pt")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--length-alpha", type=float, help="beam score log p / length^alpha (default: the model's)")
    parser.add_argument("--out", type=Path, help="JSON (default bench/results/gxn_generation_RUN.json)")
    parser.add_argument("--grid", type=Path, help="PNG (default bench/results/gxn_imagined_RUN.png)")
    args = parser.parse_args()
    torch.manual_seed(0)
    try:
        encoder = load_encoder(args.checkpoint)
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    if not encoder.describes_images:
        sys.exit(f"{args.checkpoint}: encoder {encoder.name!r} has no caption decoder")
    if args.length_alpha is not None:
        encoder.length_alpha = args.length_alpha
    run = args.checkpoint.parent.name + ("" if args.checkpoint.name == "model_best.pt" else f"_{args.checkpoint.stem}")
    records = load_records(args.data)
    split = decode_split(records, args.split, encoder.image_size, progress=False)
    result = {"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split, "images": len(split),
              "length_alpha": encoder.length_alpha}
    result["captions"], beam_captions = caption_quality(encoder, split, args.beam)
    result["serving_ms"] = serving_latency(encoder, split)
    synthetic = bool(split.records[0].attributes.get("objects"))
    if synthetic:
        result["synthetic_captions"] = synthetic_caption_check(beam_captions, split)
    if encoder.imagines_texts:  # a GXN trained without its generator only describes
        result.update(imagine_checks(encoder, records, split, args.split, synthetic))
        grid = args.grid or ROOT / "bench" / "results" / f"gxn_imagined_{run}.png"
        result["grid"], result["grid_captions"] = str(grid), imagined_grid(encoder, split, grid)
    print(f"{run} on {args.split} ({len(split)} images)")
    print(f"{'decoding':<10}{'BLEU-4':>8}{'CIDEr-D':>9}{'ms/img':>8}")
    for label, q in result["captions"].items():
        print(f"{label:<10}{q['bleu4']:>8.3f}{q['cider_d']:>9.3f}{q['ms_per_image']:>8.1f}")
    for key in ("serving_ms", "condition", "r_precision", "synthetic_captions", "synthetic_imagined"):
        if key in result:
            print(key, {k: round(v, 3) if isinstance(v, float) else v for k, v in result[key].items()})
    out = args.out or ROOT / "bench" / "results" / f"gxn_generation_{run}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}" + (f" and {result['grid']}" if "grid" in result else ""))


def imagine_checks(encoder, records, split, split_name: str, synthetic: bool) -> dict:
    """The condition's spread, R-precision of imagined images and, on the synthetic scenes, the
    colour and shape judges."""
    small_val = decode_split(records, split_name, encoder.thumbnail_size, progress=False)
    out = {"condition": condition_spread(encoder, split), "r_precision": r_precision(encoder, split, small_val.pixels)}
    if synthetic:
        train = decode_split(records, "train", encoder.thumbnail_size, progress=False)
        out["synthetic_imagined"] = synthetic_imagine_check(encoder, small_val, train)
    return out


if __name__ == "__main__":
    main()
