"""Generated captions at index time on real photos: a folder of Flickr8k val photos with no
captions, indexed with a trained GXN (which describes images), then indexed again. Reports the
describe stage's images/s, that the second run regenerates nothing, and example captions beside
the photos' own (human) captions, which the index never saw. Prints a table and writes JSON.

    python bench/describe_bench.py --checkpoint runs/flickr8k_gxn_lite0_minilm_caption_stage_more/model_best.pt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from indexer.build import BuildOptions, build_index  # noqa: E402
from indexer.catalogue import CaptionRow, ImageRow  # noqa: E402
from indexer.db import session_factory  # noqa: E402
from models.data import load_records  # noqa: E402

FLICKR8K = ROOT.parent / "shared" / "data" / "flickr8k"


def draw_examples(examples: list[dict], files: dict[str, Path], out: Path) -> None:
    """Each photo with its generated caption (bold) and the first of its human ones."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    figure, axes = plt.subplots(2, (len(examples) + 1) // 2, figsize=(3.2 * ((len(examples) + 1) // 2), 8.4))
    for axis, example in zip(axes.flat, examples, strict=False):
        axis.imshow(Image.open(files[Path(example["image"]).name]).convert("RGB"))
        axis.set_title("\n".join(textwrap.wrap(example["generated"], 30)), fontsize=9, fontweight="bold")
        axis.set_xlabel("\n".join(textwrap.wrap("a person: " + example["human"], 36)), fontsize=7.5)
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in list(axes.flat)[len(examples):]:
        axis.axis("off")
    figure.suptitle("generated at index time (bold) and a person's caption, which the index never saw")
    figure.tight_layout()
    figure.subplots_adjust(top=0.88, bottom=0.07, hspace=0.5)  # room for the captions above and below
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path,
                        default=ROOT / "runs" / "flickr8k_gxn_lite0_minilm_caption_stage_more" / "model_best.pt")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--examples", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "describe_bench.json")
    args = parser.parse_args()
    if not FLICKR8K.is_dir() or not args.checkpoint.is_file():
        sys.exit(f"needs {FLICKR8K} and a trained GXN checkpoint ({args.checkpoint})")
    val = [r for r in load_records(FLICKR8K) if r.split == "val"][:args.images]
    human = {Path(r.path).name: r.captions for r in val}
    with tempfile.TemporaryDirectory(prefix="describe-bench-") as temporary:
        folder = Path(temporary) / "photos"
        folder.mkdir()
        for record in val:
            (folder / Path(record.path).name).symlink_to(record.path)
        sessions = session_factory(f"sqlite:///{temporary}/catalogue.db")
        options = BuildOptions(progress=False)

        def build():
            started = time.perf_counter()
            report = build_index(gallery=str(folder), encoder_spec=str(args.checkpoint), name="photos",
                                 index_dir=Path(temporary) / "idx", sessions=sessions, options=options)
            return report, time.perf_counter() - started

        first, first_s = build()
        second, second_s = build()
        with sessions() as session:
            rows = session.execute(select(ImageRow.path, CaptionRow.text).join(CaptionRow).where(
                CaptionRow.source == "generated").order_by(ImageRow.path)).all()
    examples = [{"image": path, "generated": text, "human": human[Path(path).name][0]}
                for path, text in rows[:args.examples]]
    grid = args.out.with_name(args.out.stem + "_examples.png")
    draw_examples(examples, {Path(r.path).name: r.path for r in val}, grid)
    result = {"checkpoint": str(args.checkpoint), "images": len(val), "cpu_count": os.cpu_count(),
              "described": first.described_images, "describe_images_per_second": round(
                  first.describe_images_per_second, 1), "first_build_s": round(first_s, 1),
              "encode_images_per_second": round(first.images_per_second, 1),
              "second_build": second.status, "second_build_s": round(second_s, 1),
              "distinct_captions": len({text for _, text in rows}), "examples": examples}
    print(f"{'images':>7}{'described':>11}{'describe img/s':>16}{'1st build s':>13}{'2nd build':>12}{'2nd s':>7}"
          f"{'distinct':>10}")
    print(f"{result['images']:>7}{result['described']:>11}{result['describe_images_per_second']:>16.1f}"
          f"{result['first_build_s']:>13.1f}{result['second_build']:>12}{result['second_build_s']:>7.1f}"
          f"{result['distinct_captions']:>10}")
    for example in examples:
        print(f"  {example['image']}: {example['generated']!r}   (a person: {example['human']!r})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} and {grid}")


if __name__ == "__main__":
    main()
