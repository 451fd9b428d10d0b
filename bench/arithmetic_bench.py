"""Image - word + word accuracy on the synthetic scenes, through the app's own search service.

For every held-out (test split) scene with a single object of colour A and shape S, and every
other colour B: query = image - "A" + "B" (normalised). A hit when the top-1 image (the query
image excluded) shows a B S. The same for shapes (- "S" + "T"). Baselines: the image alone, and
the text "B S" alone.

    python bench/arithmetic_bench.py --checkpoint runs/synthetic_vsepp/model_best.pt \
        --data runs/synthetic_scenes_4000/dataset.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.services.search import QueryImage, SearchService, WeightedTerm  # noqa: E402
from app.services.served import ServedIndexes  # noqa: E402
from indexer.build import BuildOptions, build_index  # noqa: E402
from indexer.db import session_factory  # noqa: E402
from models.data import load_records  # noqa: E402
from models.data.synthetic import COLOURS, SHAPES  # noqa: E402


def shows(record, colour: str, shape: str) -> bool:
    return any(o["colour"] == colour and o["shape"] == shape for o in record.attributes["objects"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="synthetic scenes dataset.json")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "arithmetic.json")
    args = parser.parse_args()
    records = load_records(args.data)
    work = Path(tempfile.mkdtemp(prefix="arith-"))
    sessions = session_factory(f"sqlite:///{work / 'c.db'}")
    build_index(gallery=str(args.data.parent), encoder_spec=str(args.checkpoint), name="scenes",
                index_dir=work / "idx", sessions=sessions, options=BuildOptions(workers=2))
    service = SearchService(ServedIndexes(work / "idx", "scenes"), sessions)
    served = service.served.get("scenes")
    row_of = dict(zip((r.image_id for r in records), range(len(records)), strict=True))
    with sessions() as session:
        from sqlalchemy import select

        from indexer.catalogue import ImageRow
        path_by_row = dict(session.execute(select(ImageRow.id, ImageRow.path)).all())
    record_by_row = {row: records[row_of[path]] for row, path in path_by_row.items()}
    image_id_by_path = {path: row for row, path in path_by_row.items()}
    queries = [r for r in records if r.split == "test" and len(r.attributes["objects"]) == 1]
    tallies = {name: [0, 0] for name in ("colour swap", "shape swap", "image alone (colour)", "text alone (colour)",
                                         "image alone (shape)", "text alone (shape)")}

    def top1(terms, exclude) -> int:
        response = service.compose(terms, "image", 1, exclude_ids={exclude}, index="scenes", strict_words=True)
        return response.results[0].id

    for record in queries:
        obj = record.attributes["objects"][0]
        colour, shape = obj["colour"], obj["shape"]
        query = QueryImage(image_id=image_id_by_path[record.image_id])
        for kind, old, choices in (("colour", colour, COLOURS), ("shape", shape, SHAPES)):
            for new in (c for c in choices if c != old):
                want = (new, shape) if kind == "colour" else (colour, new)
                swapped = top1([WeightedTerm(1, image=query), WeightedTerm(-1, text=old), WeightedTerm(1, text=new)],
                               query.image_id)
                alone = top1([WeightedTerm(1, image=query)], query.image_id)
                text = top1([WeightedTerm(1, text=f"{want[0]} {want[1]}")], query.image_id)
                for name, hit in ((f"{kind} swap", swapped), (f"image alone ({kind})", alone),
                                  (f"text alone ({kind})", text)):
                    tallies[name][0] += shows(record_by_row[hit], *want)
                    tallies[name][1] += 1
    rows = {name: {"hits": hits, "queries": total, "accuracy": round(hits / total, 4) if total else None}
            for name, (hits, total) in tallies.items()}
    print(f"{len(queries)} held-out single-object scenes; gallery {len(records)} scenes; encoder {served.encoder.name}")
    print(f"{'query':<24}{'top-1 correct':>15}{'queries':>9}")
    for name, row in rows.items():
        print(f"{name:<24}{100 * row['accuracy']:>14.1f}%{row['queries']:>9}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "data": str(args.data),
                                    "held_out_queries": len(queries), "gallery": len(records), "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
