"""Can a GXN's discriminator tell the synthetic scenes' shapes apart? It is the judge the generator
learns from: a shape it cannot see, the generator is never taught.

Swap test: for every one-object scene of the split whose first caption names its shape (colour), that
caption and the same caption with the shape word replaced by each of the seven shapes (the colour word
by each of the ten colours). The discriminator's matching heads (cosine in their space) and its
matching-aware logit each pick one of the captions for the real picture; the accuracy is the share of
scenes where the true one wins (chance 1/7 and 1/10).

    python bench/discriminator_shapes.py --checkpoint runs/synthetic_gxn_lite0_matching_long/checkpoint_last.pt \\
        --data runs/synthetic_scenes_4000/dataset.json

With `--train-heads STEPS`, fresh discriminators of the checkpoint's size are trained instead on the
real training pairs alone (the contrastive matching term over batches of 128, the checkpoint's frozen
text features, no generator; Adam, lr 1e-3), once per `--translation` share, and the swap test runs
every 100 steps: how much shape the judge can learn from these few thousand pictures, with and
without random translation of its inputs. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from models import load_encoder  # noqa: E402
from models.data import decode_split, load_records  # noqa: E402
from models.data.synthetic import COLOURS, SHAPES  # noqa: E402
from models.encoders import CheckpointError  # noqa: E402
from models.encoders.base import l2_normalize  # noqa: E402
from models.imagine import MatchingDiscriminator, contrastive_matching, random_translation, same_text  # noqa: E402


def swap_probes(encoder, split, words: tuple[str, ...], attribute: str) -> list[tuple[int, torch.Tensor, int]]:
    """(scene index, text features of the caption with each word swapped in, index of the true word)."""
    probes = []
    for index, record in enumerate(split.records):
        objects = record.attributes.get("objects", [])
        caption = record.captions[0]
        if len(objects) != 1 or not re.search(rf"\b{objects[0][attribute]}\b", caption):
            continue
        truth = objects[0][attribute]
        swapped = [re.sub(rf"\b{truth}\b", word, caption) for word in words]
        with torch.no_grad():
            probes.append((index, l2_normalize(encoder.text_low(swapped)), words.index(truth)))
    return probes


@torch.no_grad()
def swap_accuracy(discriminator: MatchingDiscriminator, pictures: torch.Tensor, probes: list) -> dict[str, float]:
    """Share of probes whose true caption wins, by the matching heads and by the logit."""
    was_training = discriminator.training
    discriminator.eval()
    features = discriminator.features(pictures)
    heads = logit = 0
    for index, texts, truth in probes:
        tiled = features[index:index + 1].expand(len(texts), -1, -1, -1)
        images, captions = discriminator.matching(tiled, texts)
        heads += int((images[0] @ captions.t()).argmax()) == truth
        logit += int(discriminator.score(tiled, texts).argmax()) == truth
    discriminator.train(was_training)
    return {"matching_heads": heads / len(probes), "logit": logit / len(probes)}


def training_pairs(encoder, records) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the training split's pictures, each caption's picture index, each caption's text features)."""
    train = decode_split(records, "train", encoder.thumbnail_size, progress=False)
    pairs = [(i, c) for i, r in enumerate(train.records) for c in r.captions]
    with torch.no_grad():
        texts = torch.cat([l2_normalize(encoder.text_low([c for _, c in pairs[s:s + 512]]))
                           for s in range(0, len(pairs), 512)])
    return encoder.gan_pixels(train.pixels), torch.tensor([i for i, _ in pairs]), texts


def train_heads(encoder, train: tuple[torch.Tensor, torch.Tensor, torch.Tensor], probes, val_pictures,
                steps: int, translation: float) -> list[dict]:
    """A fresh discriminator trained on real pairs (`training_pairs`) by the contrastive term
    alone; the swap test every 100 steps."""
    torch.manual_seed(0)
    pictures, owners, texts = train
    source = encoder.discriminator
    discriminator = MatchingDiscriminator(source.match_text.in_features, source.compress_text[0].out_features,
                                          source.body[0][0].out_channels, encoder.thumbnail_size,
                                          match_dim=source.match_image.out_features)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-3, betas=(0.5, 0.999))
    curve = [{"step": 0, **swap_accuracy(discriminator, val_pictures, probes)}]
    for step in range(1, steps + 1):
        batch = torch.randint(len(texts), (128,))
        seen = discriminator.features(random_translation(pictures[owners[batch]], translation))
        text = texts[batch]
        loss = contrastive_matching(*discriminator.matching(seen, text), 0.1, same_text(text))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            curve.append({"step": step, "loss": float(loss), **swap_accuracy(discriminator, val_pictures, probes)})
            print(f"translation {translation:g} step {step}: loss {float(loss):.3f}, "
                  f"shape {curve[-1]['matching_heads']:.3f}", flush=True)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a GXN trained with imagine.match_weight")
    parser.add_argument("--data", type=Path, required=True, help="the synthetic scenes' dataset.json")
    parser.add_argument("--split", default="val")
    parser.add_argument("--train-heads", type=int, default=0, metavar="STEPS")
    parser.add_argument("--translation", type=float, nargs="+", default=[0.0, 0.0625])
    parser.add_argument("--out", type=Path, help="JSON (default bench/results/discriminator_shapes_RUN.json)")
    args = parser.parse_args()
    try:
        encoder = load_encoder(args.checkpoint).eval()
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    if not encoder.imagines_texts or encoder.discriminator.match_image is None:
        sys.exit(f"{args.checkpoint}: no discriminator with matching heads (imagine.match_weight)")
    records = load_records(args.data)
    split = decode_split(records, args.split, encoder.thumbnail_size, progress=False)
    pictures = encoder.gan_pixels(split.pixels)
    shapes = swap_probes(encoder, split, SHAPES, "shape")
    colours = swap_probes(encoder, split, tuple(COLOURS), "colour")
    if not shapes:
        sys.exit(f"{args.data}: no one-object scenes whose first caption names the shape in split {args.split!r}")
    run = args.checkpoint.parent.name + ("" if args.checkpoint.name == "model_best.pt" else f"_{args.checkpoint.stem}")
    result = {"checkpoint": str(args.checkpoint), "split": args.split, "probes": len(shapes),
              "chance": {"shape": 1 / len(SHAPES), "colour": 1 / len(COLOURS)},
              "shape": swap_accuracy(encoder.discriminator, pictures, shapes),
              "colour": swap_accuracy(encoder.discriminator, pictures, colours)}
    print(f"{run}: {len(shapes)} one-object {args.split} scenes")
    print(f"{'swap':<8}{'matching heads':>16}{'logit':>8}")
    for attribute in ("shape", "colour"):
        print(f"{attribute:<8}{result[attribute]['matching_heads']:>16.3f}{result[attribute]['logit']:>8.3f}")
    if args.train_heads:
        train = training_pairs(encoder, records)
        result["trained_heads"] = {str(share): train_heads(encoder, train, shapes, pictures, args.train_heads, share)
                                   for share in args.translation}
        first = result["trained_heads"][str(args.translation[0])]
        print(f"{'translation':<12}" + "".join(f"{p['step']:>7}" for p in first))
        for share, curve in result["trained_heads"].items():
            print(f"{share:<12}" + "".join(f"{p['matching_heads']:>7.3f}" for p in curve))
    out = args.out or ROOT / "bench" / "results" / f"discriminator_shapes_{run}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
