"""Does the demo's model get colours *and* shapes right? Top-1 accuracy on the demo gallery, through
the app's own search service, in the three ways a visitor uses the page:

- text -> image: the query "a {colour} {shape}" for every colour and shape; a hit when the top
  image shows an object of that colour (colour), that shape (shape), or both at once (both). Also
  the share of the top 10 that show both (P@10).
- image -> caption: every held-out (test split) single-object scene as the query; the top caption,
  the query image's own captions left out, is checked for the object's colour and shape words.
- image - word + word: the same queries, query - "A" + "B" for every other colour B (colour swap:
  the top image, query excluded, shows a B object of the query's shape) and likewise for shapes.

    python bench/demo_quality.py --demo demo             # the folder `imgsearch demo` made
    python bench/demo_quality.py --checkpoint run/model_best.pt --data scenes/dataset.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from app.services.search import QueryImage, SearchService, WeightedTerm  # noqa: E402
from app.services.served import ServedIndexes  # noqa: E402
from indexer.build import BuildOptions, build_index  # noqa: E402
from indexer.catalogue import ImageRow  # noqa: E402
from indexer.db import session_factory  # noqa: E402
from models.data import load_records  # noqa: E402
from models.data.synthetic import COLOURS, SHAPES  # noqa: E402
from models.vocab import tokenize  # noqa: E402


class Tally:
    """Hits per (row, aspect), as a percentage of the row's queries; aspects are colour, shape and
    both, or only both for a row of shares (P@10)."""

    def __init__(self) -> None:
        self.hits: dict[tuple[str, str], float] = defaultdict(float)
        self.queries: dict[str, int] = defaultdict(int)
        self.aspects: dict[str, tuple[str, ...]] = {}

    def add(self, row: str, colour: bool, shape: bool, both: bool) -> None:
        """`both`: one object has the colour and the shape (not a red square beside a blue circle)."""
        self._count(row, colour=colour, shape=shape, both=both)

    def add_share(self, row: str, both: float) -> None:
        """A query whose `both` is a share (0-1) of its results rather than a hit."""
        self._count(row, both=both)

    def _count(self, row: str, **aspects: float) -> None:
        self.queries[row] += 1
        self.aspects[row] = tuple(aspects)
        for aspect, hit in aspects.items():
            self.hits[row, aspect] += hit

    def rows(self) -> dict[str, dict[str, float]]:
        return {row: {"queries": n, **{aspect: round(100 * self.hits[row, aspect] / n, 1)
                                       for aspect in self.aspects[row]}}
                for row, n in self.queries.items()}


def objects_of(record) -> set[tuple[str, str]]:
    return {(o["colour"], o["shape"]) for o in record.attributes["objects"]}


def open_demo(folder: Path) -> tuple[SearchService, str, Path]:
    """The service over the index `imgsearch demo` built in `folder`, and the gallery's dataset."""
    sessions = session_factory(f"sqlite:///{(folder / 'catalogue.db').resolve()}")
    service = SearchService(ServedIndexes(folder / "indexes", "demo"), sessions)
    return service, "demo", folder / "scenes" / "dataset.json"


def build_fresh(checkpoint: Path, data: Path) -> tuple[SearchService, str, Path]:
    work = Path(tempfile.mkdtemp(prefix="demo-quality-"))
    sessions = session_factory(f"sqlite:///{work / 'catalogue.db'}")
    build_index(gallery=str(data.parent), encoder_spec=str(checkpoint), name="scenes", index_dir=work / "idx",
                sessions=sessions, options=BuildOptions(workers=2))
    return SearchService(ServedIndexes(work / "idx", "scenes"), sessions), "scenes", data


def measure(service: SearchService, index: str, data: Path) -> tuple[Tally, dict]:
    records = load_records(data)
    by_path = {r.image_id: r for r in records}
    with service.sessions() as session:
        record_of = {row: by_path[path] for row, path in session.execute(select(ImageRow.id, ImageRow.path))}
    row_of = {record.image_id: row for row, record in record_of.items()}
    tally = Tally()
    for colour in COLOURS:
        for shape in SHAPES:
            hits = service.text_to("image", f"a {colour} {shape}", 10, index=index).results
            top = record_of[hits[0].id]
            tally.add("text -> image", any(c == colour for c, _ in objects_of(top)),
                      any(s == shape for _, s in objects_of(top)), (colour, shape) in objects_of(top))
            shown_both = [(colour, shape) in objects_of(record_of[h.id]) for h in hits]
            tally.add_share("text -> image P@10", sum(shown_both) / len(hits))
    queries = [r for r in records if r.split == "test" and len(r.attributes["objects"]) == 1]
    for record in queries:
        ((colour, shape),) = objects_of(record)
        query = QueryImage(image_id=row_of[record.image_id])
        captions = service.image_to("caption", query, 20, index=index, collapse=False).results
        top = next(c for c in captions if c.image.id != query.image_id)
        words = set(tokenize(top.text))
        described = objects_of(record_of[top.image.id])  # the pairing, not just the two words
        tally.add("image -> caption", colour in words, shape in words,
                  colour in words and shape in words and (colour, shape) in described)
        for kind, old, choices in (("colour", colour, COLOURS), ("shape", shape, SHAPES)):
            for new in (c for c in choices if c != old):
                want = (new, shape) if kind == "colour" else (colour, new)
                terms = [WeightedTerm(1, image=query), WeightedTerm(-1, text=old), WeightedTerm(1, text=new)]
                hit = service.compose(terms, "image", 1, index=index, strict_words=True,
                                      exclude_ids={query.image_id}).results[0]
                shown = objects_of(record_of[hit.id])
                tally.add(f"image - word + word ({kind} swap)", any(c == want[0] for c, _ in shown),
                          any(s == want[1] for _, s in shown), want in shown)
    return tally, {"gallery": len(records), "single_object_queries": len(queries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, help="the folder `imgsearch demo` worked in (its index is used)")
    parser.add_argument("--checkpoint", type=Path, help="or: an encoder checkpoint ...")
    parser.add_argument("--data", type=Path, help="... and the synthetic gallery's dataset.json to index")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "demo_quality.json")
    args = parser.parse_args()
    if args.demo is None and (args.checkpoint is None or args.data is None):
        parser.error("give --demo FOLDER, or --checkpoint and --data")
    started = time.perf_counter()
    service, index, data = open_demo(args.demo) if args.demo else build_fresh(args.checkpoint, args.data)
    tally, sizes = measure(service, index, data)
    rows = tally.rows()
    encoder = service.served.get(index).encoder.name
    print(f"encoder {encoder}; gallery {sizes['gallery']} scenes; "
          f"{sizes['single_object_queries']} held-out single-object query scenes")
    print(f"{'top-1 correct (%)':<36}{'colour':>8}{'shape':>8}{'both':>8}{'queries':>9}")
    for name, row in rows.items():
        cells = "".join(f"{row[a]:>8.1f}" if a in row else f"{'':>8}" for a in ("colour", "shape", "both"))
        print(f"{name:<36}{cells}{row['queries']:>9}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    source = {"demo": str(args.demo)} if args.demo else {"checkpoint": str(args.checkpoint), "data": str(args.data)}
    args.out.write_text(json.dumps({**source, "encoder": encoder, **sizes, "rows": rows,
                                    "seconds": round(time.perf_counter() - started, 1)}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
