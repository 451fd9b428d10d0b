"""The caption decoders side by side on Flickr8k val: BLEU-1..4 and CIDEr-D, greedy and beam,
after cross-entropy and after self-critical training.

    python bench/caption_decoders.py --data ../shared/data/flickr8k
    python bench/caption_decoders.py --data ../shared/data/flickr8k --decoders attention,stack_cap:2 --epochs 2

Every decoder reads what GXN's caption branch reads: the frozen ImageNet EfficientNet-Lite0's 7 x 7
map at 224 px (cached, two views of each training image: the centre crop and its mirror) as its
regions, and a learned projection of the pooled map as its starting feature. Only the decoder and
that projection are trained (the ranking and imagine terms of a full GXN run are left out, so that
the decoders, not the rest of GXN, are what differs). Each decoder: `--epochs` epochs of
cross-entropy over every training caption (Adam, lr 4e-4 halved every `--halve-every` epochs, dropout 0.3, batch
128), then `--scst-steps` self-critical steps on CIDEr-D (`--scst-lr`, `--scst-images` images a step;
Stack-Cap with its multi-stage reward; `--scst-samples` and `--scst-mark-end` for the leave-one-out
baseline and the end-of-caption token). `--save-dir` keeps each model after cross-entropy (with the
options it was trained with) and after SCST; `--from-xent DIR` starts from those cross-entropy models,
so decoding and self-critical variants are compared on one of them. Beam search scores a caption
log p / length^`--length-alpha`. Scores are corpus BLEU and CIDEr-D against the val images' five
captions (`models.caption_metrics`). Writes a table, JSON (default bench/results/caption_decoders.json)
and, for the decoder with the best beam CIDEr-D at the end, ten val images with their beam captions (PNG).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import textwrap
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import create_encoder  # noqa: E402
from models.caption_decoder import CaptionDecoder, build_caption_decoder, self_critical_loss  # noqa: E402
from models.caption_metrics import CiderD, bleu, cider_d  # noqa: E402
from models.data import decode_split, load_records  # noqa: E402
from models.training.feature_cache import cached_features, choose_views  # noqa: E402
from models.vocab import Vocabulary  # noqa: E402

SIZES = {"word_dim": 256, "hidden_dim": 512, "attention_dim": 256, "max_length": 20, "dropout": 0.3}


class Captioner(nn.Module):
    """A projection of the pooled map (GXN's concrete image feature) and a decoder over the map's cells."""

    def __init__(self, decoder: CaptionDecoder, map_channels: int, feature_dim: int):
        super().__init__()
        self.project, self.decoder = nn.Linear(map_channels, feature_dim), decoder

    def inputs(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = maps.float()
        return self.project(maps.mean(dim=(2, 3))), maps.flatten(2).transpose(1, 2)


def parse_decoder(spec: str) -> tuple[str, dict]:
    """'attention' | 'cnn_l' | 'stack_cap:N' -> (kind, options)."""
    kind, _, stages = spec.partition(":")
    return kind, ({"fine_stages": int(stages or 1)} if kind == "stack_cap" else {})


def describe(model: Captioner, maps: torch.Tensor, beam: int, batch_size: int = 100,
             length_alpha: float = 1.0) -> list[str]:
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(maps), batch_size):
            features, regions = model.inputs(maps[start:start + batch_size])
            ids = (model.decoder.greedy(features, regions) if beam <= 1
                   else model.decoder.beam(features, regions, beam, length_alpha))
            out += [model.decoder.decode(i) for i in ids]
    return out


def scores(captions: list[str], references: list[list[str]]) -> dict[str, float]:
    return {**{f"bleu{n}": bleu(captions, references, max_n=n) for n in range(1, 5)},
            "cider_d": cider_d(captions, references)}


def evaluate(model: Captioner, maps: torch.Tensor, references: list[list[str]], beam: int,
             length_alpha: float = 1.0) -> dict:
    out = {}
    for label, width in (("greedy", 1), (f"beam{beam}", beam)):
        started = time.perf_counter()
        captions = describe(model, maps, width, length_alpha=length_alpha)
        milliseconds = 1000 * (time.perf_counter() - started) / len(maps)
        out[label] = {**scores(captions, references), "ms_per_image": milliseconds,
                      "distinct_captions": len(set(captions)), "captions": captions}
    return out


def train_cross_entropy(model: Captioner, maps: torch.Tensor, captions: list[list[str]], epochs: int,
                        label: str, halve_every: int = 1) -> list[float]:
    pairs = [(image, caption) for image, texts in enumerate(captions) for caption in texts]
    optimizer = torch.optim.Adam(model.parameters(), lr=4e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=halve_every, gamma=0.5)
    losses = []
    for epoch in range(epochs):
        model.train()
        random.shuffle(pairs)
        total, bar = 0.0, tqdm(range(0, len(pairs), 128), desc=f"{label} xent {epoch + 1}/{epochs}", unit="batch")
        for start in bar:
            batch = pairs[start:start + 128]
            images = torch.tensor([i for i, _ in batch])
            views = torch.randint(maps.shape[1], (len(batch),))
            features, regions = model.inputs(maps[images, views])
            loss = model.decoder.loss(features, regions, [c for _, c in batch])
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            total += float(loss) * len(batch)
            bar.set_postfix(loss=f"{float(loss):.3f}")
        scheduler.step()
        losses.append(total / len(pairs))
    return losses


def train_self_critical(model: Captioner, maps: torch.Tensor, captions: list[list[str]], steps: int,
                        label: str, lr: float = 2e-5, samples: int = 1, mark_end: bool = False,
                        images_per_step: int = 64) -> list[float]:
    cider = CiderD(captions, mark_end=mark_end)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rewards = []
    for _ in tqdm(range(steps), desc=f"{label} scst", unit="step"):
        model.train()
        images = torch.randint(len(maps), (images_per_step,))
        references = [captions[i] for i in images.tolist()]
        features, regions = model.inputs(maps[images, torch.randint(maps.shape[1], (images_per_step,))])
        loss, reward = self_critical_loss(model.decoder, cider, features, regions, references, samples)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        rewards.append(float(reward))
    return rewards


def example_grid(split, captions: list[str], title: str, path: Path, count: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = torch.linspace(0, len(captions) - 1, count).round().long().tolist()
    fig, axes = plt.subplots(2, count // 2, figsize=(3.2 * count // 2, 8.6))
    for axis, i in zip(axes.flat, chosen, strict=True):
        axis.imshow(split.pixels[i].permute(1, 2, 0).numpy())
        axis.set_title(textwrap.fill(f"generated: {captions[i]}", 36) + "\n" +
                       textwrap.fill(f"human: {split.records[i].captions[0]}", 36), fontsize=7, loc="left")
        axis.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--decoders", default="attention,cnn_l,stack_cap:1,stack_cap:2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--scst-steps", type=int, default=150)
    parser.add_argument("--halve-every", type=int, default=1, help="halve the cross-entropy rate every N epochs")
    parser.add_argument("--scst-lr", type=float, default=2e-5)
    parser.add_argument("--scst-samples", type=int, default=1, help="captions sampled per image; with 2 or "
                        "more the baseline is the other samples' mean reward instead of the greedy caption's")
    parser.add_argument("--scst-mark-end", action="store_true",
                        help="count an end-of-caption token in the CIDEr-D reward (punishes dangling endings)")
    parser.add_argument("--scst-images", type=int, default=64, help="images per self-critical step")
    parser.add_argument("--save-dir", type=Path, help="keep each trained captioner's state dict here")
    parser.add_argument("--from-xent", type=Path, help="skip cross-entropy: load each decoder's "
                        "captioner_<decoder>_xent.pt from this --save-dir of an earlier run")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--length-alpha", type=float, default=1.0, help="beam score: log-probability / "
                        "length^alpha (1: mean per word, 0: sum)")
    parser.add_argument("--min-word-count", type=int, default=5)
    parser.add_argument("--val-images", type=int, help="score on the first N val images only (a quick check)")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "imgsearch")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "caption_decoders.json")
    parser.add_argument("--examples", type=Path, default=ROOT / "bench" / "results" / "caption_decoders_examples.png")
    args = parser.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    records = load_records(args.data)
    train, val = (decode_split(records, s, 256 if s == "train" else 224, progress=True) for s in ("train", "val"))
    vocab = Vocabulary.build([c for r in train.records for c in r.captions], min_count=args.min_word_count)
    tower = create_encoder("gxn_lite0_gru", vocab=vocab, overrides={
        "caption": {"weight": 0.0}, "imagine": {"weight": 0.0}}).image_tower
    train_maps = cached_features(tower, train, 224, choose_views(2, mirror=True), args.cache_dir)
    val_maps = cached_features(tower, val, 224, choose_views(1, mirror=False), args.cache_dir)[:, 0]
    if args.val_images:
        val_maps = val_maps[: args.val_images]
    train_captions = [list(r.captions) for r in train.records]
    references = [list(r.captions) for r in val.records][: len(val_maps)]
    results = {"data": str(args.data), "train_images": len(train), "val_images": len(val_maps),
               "vocabulary": len(vocab),
               # with --from-xent the cross-entropy options are the saved model's (each entry's xent_options)
               "epochs": None if args.from_xent else args.epochs,
               "halve_every": None if args.from_xent else args.halve_every,
               "scst_steps": args.scst_steps, "scst_lr": args.scst_lr, "scst_samples": args.scst_samples,
               "scst_mark_end": args.scst_mark_end, "length_alpha": args.length_alpha,
               "scst_images": args.scst_images, "sizes": SIZES,
               "decoders": {}}
    for spec in args.decoders.split(","):
        torch.manual_seed(0)
        kind, options = parse_decoder(spec)
        decoder = build_caption_decoder(kind, vocab, SIZES["hidden_dim"], train_maps.shape[2], {**SIZES, **options})
        model = Captioner(decoder, train_maps.shape[2], SIZES["hidden_dim"])
        entry = {"parameters": sum(p.numel() for p in model.parameters())}
        name = spec.replace(":", "_")
        if args.from_xent:
            # self-critical variants compared from one cross-entropy model
            model.load_state_dict(torch.load(args.from_xent / f"captioner_{name}_xent.pt", weights_only=True))
            entry["xent_from"] = str(args.from_xent)
            trained_with = args.from_xent / f"captioner_{name}_xent.json"
            entry["xent_options"] = json.loads(trained_with.read_text()) if trained_with.is_file() else None
        else:
            started = time.perf_counter()
            entry["xent_losses"] = train_cross_entropy(model, train_maps, train_captions, args.epochs, spec,
                                                       args.halve_every)
            entry["xent_minutes"] = (time.perf_counter() - started) / 60
            if args.save_dir:
                args.save_dir.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), args.save_dir / f"captioner_{name}_xent.pt")
                (args.save_dir / f"captioner_{name}_xent.json").write_text(json.dumps(
                    {"epochs": args.epochs, "halve_every": args.halve_every, "min_word_count": args.min_word_count}))
        entry["xent"] = evaluate(model, val_maps, references, args.beam, args.length_alpha)
        started = time.perf_counter()
        entry["scst_rewards"] = train_self_critical(model, train_maps, train_captions, args.scst_steps, spec,
                                                    args.scst_lr, args.scst_samples, args.scst_mark_end,
                                                    args.scst_images)
        entry["scst_minutes"] = (time.perf_counter() - started) / 60
        # without self-critical steps the model is the cross-entropy one: not scored twice
        entry["scst"] = (evaluate(model, val_maps, references, args.beam, args.length_alpha) if args.scst_steps
                         else entry["xent"])
        results["decoders"][spec] = entry
        if args.save_dir:
            args.save_dir.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), args.save_dir / f"captioner_{name}.pt")
        print_table(results, args.beam)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    best = max(results["decoders"], key=lambda s: results["decoders"][s]["scst"][f"beam{args.beam}"]["cider_d"])
    captions = results["decoders"][best]["scst"][f"beam{args.beam}"]["captions"]
    training = "after self-critical training" if args.scst_steps else "after cross-entropy"
    alpha = f" (length alpha {args.length_alpha})" if args.length_alpha != 1.0 else ""
    example_grid(val, captions, f"{best} {training}, beam {args.beam}{alpha}: ten Flickr8k val images",
                 args.examples)
    results["best"] = best
    args.out.write_text(json.dumps(results, indent=1))
    print(f"best (CIDEr-D, beam {args.beam}, after SCST): {best}; wrote {args.out} and {args.examples}")


def print_table(results: dict, beam: int) -> None:
    print(f"\n{'decoder':<13}{'training':<9}{'decoding':<9}{'B-1':>7}{'B-2':>7}{'B-3':>7}{'B-4':>7}{'CIDEr-D':>9}"
          f"{'distinct':>9}{'ms/img':>8}")
    for spec, entry in results["decoders"].items():
        for stage in ("xent", "scst"):
            for label in ("greedy", f"beam{beam}"):
                s = entry[stage][label]
                print(f"{spec:<13}{stage:<9}{label:<9}{s['bleu1']:>7.3f}{s['bleu2']:>7.3f}{s['bleu3']:>7.3f}"
                      f"{s['bleu4']:>7.3f}{s['cider_d']:>9.3f}{s['distinct_captions']:>9}{s['ms_per_image']:>8.1f}")


if __name__ == "__main__":
    main()
