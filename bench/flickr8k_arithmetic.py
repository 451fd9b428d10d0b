"""Image - word + word on real photos, through the app's own search service: a PNG grid.

Indexes the Flickr8k train + val photos (7,000) with a trained encoder, then for each row of
QUERIES takes the query photo (the top hit of its description), composes photo - word + word
and shows the top results; a first row shows text -> image for a plain search. Each result is
labelled with its first caption, so a reader can check the grid without the photos' files.

    python bench/flickr8k_arithmetic.py --encoder photos --data ../shared/data/flickr8k
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.services.search import QueryImage, SearchService, WeightedTerm  # noqa: E402
from app.services.served import ServedIndexes  # noqa: E402
from indexer.build import BuildOptions, build_index  # noqa: E402
from indexer.db import session_factory  # noqa: E402
from models.data import load_records, select_split  # noqa: E402

# (description that finds the query photo, word to remove, word to add)
QUERIES = [
    ("a dog running on the grass", "grass", "snow"),
    ("a man standing on a street", "man", "woman"),
    ("a black dog jumping", "black", "white"),
    ("a child swimming in a pool", "pool", "ocean"),
    ("a man riding a bicycle", "bicycle", "horse"),
]
TEXT_QUERY = "a dog running on the beach"
THUMB = 160
SHOWN = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="photos", help="checkpoint or shipped encoder name")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "flickr8k")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "flickr8k_arithmetic.png")
    args = parser.parse_args()
    all_records = load_records(args.data)
    records = select_split(all_records, "train") + select_split(all_records, "val")
    work = Path(tempfile.mkdtemp(prefix="arith8k-"))
    sessions = session_factory(f"sqlite:///{work / 'c.db'}")
    build_index(gallery=str(args.data), encoder_spec=args.encoder, name="photos", index_dir=work / "idx",
                sessions=sessions, options=BuildOptions(workers=2))
    service = SearchService(ServedIndexes(work / "idx", "photos"), sessions)

    rows, report = [], []
    plain = service.text_to("image", TEXT_QUERY, SHOWN, index="photos")
    rows.append((f'text: "{TEXT_QUERY}"', None, plain.results))
    report.append({"query": TEXT_QUERY, "results": [_describe(r) for r in plain.results]})
    for description, minus, plus in QUERIES:
        found = service.text_to("image", description, 1, index="photos").results[0]
        query = QueryImage(image_id=found.id)
        terms = [WeightedTerm(1, image=query), WeightedTerm(-1, text=minus), WeightedTerm(1, text=plus)]
        composed = service.compose(terms, "image", SHOWN, exclude_ids={found.id}, index="photos")
        label = f'photo - "{minus}" + "{plus}"'
        rows.append((label, found, composed.results))
        report.append({"query_photo": _describe(found), "minus": minus, "plus": plus,
                       "results": [_describe(r) for r in composed.results]})
    files = {r.image_id: r.path for r in records}
    draw_grid(rows, files, args.out)
    args.out.with_suffix(".json").write_text(json.dumps({"encoder": args.encoder, "gallery_images": len(records),
                                                         "rows": report}, indent=1))
    for entry in report:
        head = entry.get("query") or f"{entry['query_photo']['caption']} - {entry['minus']} + {entry['plus']}"
        print(head)
        for result in entry["results"]:
            print(f"    {result['score']:.3f}  {result['caption']}")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


def _describe(result) -> dict:
    caption = result.captions[0] if result.captions else ""
    return {"id": result.id, "path": result.path, "score": round(float(result.score), 4), "caption": caption}


def draw_grid(rows, files: dict[str, Path], out: Path) -> None:
    label_width, pad, text_height = 220, 6, 34
    columns = 1 + SHOWN
    width = label_width + columns * (THUMB + pad)
    height = len(rows) * (THUMB + text_height + pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, (label, query, results) in enumerate(rows):
        top = r * (THUMB + text_height + pad)
        draw.multiline_text((4, top + THUMB // 2 - 10), _wrap(label, 30), fill="black", font=font)
        cells = [(query, "query")] if query is not None else [(None, "")]
        cells += [(result, f"{result.score:.2f}") for result in results]
        for c, (item, tag) in enumerate(cells):
            left = label_width + c * (THUMB + pad)
            if item is None:
                continue
            with Image.open(files[item.path]) as photo:
                canvas.paste(photo.convert("RGB").resize((THUMB, THUMB)), (left, top))
            caption = item.captions[0] if item.captions else ""
            draw.multiline_text((left, top + THUMB + 2), _wrap(f"{tag} {caption}", 28)[:60], fill="black",
                                font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])


if __name__ == "__main__":
    main()
