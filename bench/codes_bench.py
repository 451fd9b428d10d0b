"""Compact codes at a byte budget: recall, memory and speed of every way imgsearch can hold a
vector in B bytes (8/16/32/64), against float32 and plain product quantisation.

    python bench/codes_bench.py --photos .cache/imgsearch/photo_embeddings.npy \\
        --checkpoint runs/flickr8k_vsepp_lite0_minilm_2views/model_best.pt     # real photo embeddings
    python bench/codes_bench.py --synthetic 1000000                             # the harder synthetic set

Codes (all exhaustive scans over the codes; the float vectors only for the optional re-ranking):
- `PQ{B}x8` (plain product quantisation), `OPQ{B},PQ{B}x8` (rotated first; its rotation trained
  with 20 iterations on 25,000 vectors instead of faiss's 50 on 65,536), `PCA{B},SQ8` (B
  principal components, 8 bits each), `LSH {8B} bits` (random rotation + signs, Hamming);
- catalysed (Sablayrolles et al. 2019, `models/spreading.py`): a catalyser trained on a sample of
  the base to 2B dimensions + `PQ{B}x8`, or to B dimensions + `SQ8`; its KoLeo weight lambda is
  swept at 16 bytes and chosen on separate tuning queries;
- `DCMH {8B} bits` (real photos only: the hashing heads need image-caption pairs; they train on
  the Flickr8k train captions and their photos' centre views, `models/hashing.py`).

Collections:
- real photo embeddings (`bench/photo_embeddings.py`: 15 views of each of the 7,000 Flickr8k
  photos through the trained encoder, 105k vectors); queries are val caption embeddings (text ->
  image, the product's main search), and the Flickr8k val table scores each code as a retrieval
  model (MAP, R@K both ways over the 1,000 val photos and their 5,000 captions);
- synthetic, harder than index_bench's: overlapping clusters (centres share a low-rank subspace)
  of Zipf-distributed sizes, heavy-tailed (Student-t, 3 degrees of freedom) within each cluster.

recall@10 is the share of the exact float top 10 found in the code's top 10 (and, "+rerank", in
the top 10 after re-ranking the code's top 100 with the float vectors). Memory counts the codes
and what the code needs beside them (codebooks, rotation, catalyser weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from indexer.faiss_index import search_codes  # noqa: E402
from indexer.recall_tuning import exact_search, recall_at_k  # noqa: E402
from models.evaluation import mean_average_precision, metrics_from_similarity  # noqa: E402
from models.hashing import DCMHConfig, train_dcmh  # noqa: E402
from models.spreading import CatalyserConfig, train_catalyser  # noqa: E402

K = 10
RERANK = 100
TRAIN_SAMPLE = 50_000  # vectors the quantisers and catalysers train on


# --- collections ----------------------------------------------------------------------------------
def heavy_tailed_vectors(n: int, dim: int, clusters: int, intrinsic: int, seed: int) -> np.ndarray:
    """Unit vectors from overlapping, heavy-tailed clusters of very unequal sizes."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(32, dim)).astype(np.float32) / np.sqrt(32)
    centres = rng.normal(size=(clusters, 32)).astype(np.float32) @ topics
    centres += 0.5 * rng.normal(size=(clusters, dim)).astype(np.float32) / np.sqrt(dim)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1) ** 1.1
    weights /= weights.sum()
    bases = rng.normal(size=(clusters, intrinsic, dim)).astype(np.float32) / np.sqrt(intrinsic)
    spreads = rng.uniform(0.3, 0.9, size=clusters).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 20_000):
        m = min(20_000, n - start)
        labels = rng.choice(clusters, m, p=weights)
        tails = rng.standard_t(3, size=(m, intrinsic)).astype(np.float32) / np.sqrt(3)
        chunk = centres[labels] + spreads[labels, None] * np.einsum("nk,nkd->nd", tails, bases[labels])
        chunk += 0.2 * rng.normal(size=chunk.shape).astype(np.float32) / np.sqrt(dim)
        out[start:start + m] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


@dataclass
class Collection:
    label: str
    base: np.ndarray
    queries: np.ndarray          # measured
    tune_queries: np.ndarray     # for choosing lambda
    train_extra: np.ndarray | None = None  # also in the catalysers' training sample (the gallery's captions)
    query_modality: str = "image"  # which DCMH head codes the queries


# --- codes --------------------------------------------------------------------------------------
@dataclass
class Coded:
    """One way of coding: the index over the base's codes and how queries are coded."""

    name: str
    bytes_per_vector: int
    index: faiss.Index | faiss.IndexBinary
    code_queries: object          # float queries -> what index.search takes
    extra_bytes: int              # codebooks, rotations, networks
    train_seconds: float
    binary_bits: int = 0


def sample_rows(vectors: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    if len(vectors) <= count:
        return vectors
    return vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), count, replace=False))]


OPQ_SAMPLE, OPQ_ITERATIONS = 25_000, 20  # faiss's defaults (65k, 50) cost 5-10 min a code length here


def factory_codes(name: str, factory: str, base: np.ndarray, budget: int) -> Coded:
    started = time.perf_counter()
    index = faiss.index_factory(base.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    sample = TRAIN_SAMPLE
    if factory.startswith("OPQ"):
        faiss.downcast_VectorTransform(index.chain.at(0)).niter = OPQ_ITERATIONS
        sample = OPQ_SAMPLE
    index.train(sample_rows(base, sample))
    index.add(base)
    extra = len(faiss.serialize_index(index)) - index.ntotal * index.sa_code_size()
    return Coded(name, budget, index, lambda q: q, max(0, extra), time.perf_counter() - started)


def lsh_codes(base: np.ndarray, bits: int) -> Coded:
    started = time.perf_counter()
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(base.shape[1], base.shape[1])))[0][:, :bits]
    rotation = rotation.astype(np.float32)

    def code(vectors: np.ndarray) -> np.ndarray:
        return np.packbits((vectors @ rotation >= 0).astype(np.uint8), axis=1)

    index = faiss.IndexBinaryFlat(bits)
    for start in range(0, len(base), 100_000):
        index.add(code(base[start:start + 100_000]))
    return Coded(f"LSH {bits} bits", bits // 8, index, code, rotation.nbytes, time.perf_counter() - started, bits)


def catalysed_codes(base: np.ndarray, budget: int, quantiser: str, koleo: float,
                    extra: np.ndarray | None = None) -> Coded:
    """Catalyser to 2B dims + PQ{B}x8 ("pq") or to B dims + SQ8 ("sq"), trained on 20,000 vectors
    of the base (and `extra`: vectors of the other modality, as an index build has its captions)."""
    started = time.perf_counter()
    out_dim = 2 * budget if quantiser == "pq" else budget
    sets = [sample_rows(base, 20_000)] + ([] if extra is None else [extra])
    config = CatalyserConfig(out_dim=out_dim, koleo_weight=koleo, sample=sum(len(s) for s in sets))
    model = train_catalyser(sets, config, progress=False).model
    factory = f"PQ{budget}x8" if quantiser == "pq" else "SQ8"
    index = faiss.index_factory(out_dim, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(model.transform(sample_rows(base, TRAIN_SAMPLE)))
    for start in range(0, len(base), 100_000):
        index.add(model.transform(base[start:start + 100_000]))
    weights = sum(p.numel() * 4 for p in model.state_dict().values())
    extra = weights + max(0, len(faiss.serialize_index(index)) - index.ntotal * index.sa_code_size())
    name = f"catalyser {out_dim}-d, {factory} (lambda {koleo:g})"
    return Coded(name, budget, index, model.transform, extra, time.perf_counter() - started)


_TRAINED_HEADS: dict[int, tuple] = {}


def dcmh_codes(base: np.ndarray, bits: int, pairs: dict, query_modality: str = "caption") -> Coded:
    """Hashing heads trained on (photo view, caption) pairs (once per code length); the image head
    codes the base, the text head the (caption) queries."""
    started = time.perf_counter()
    if bits not in _TRAINED_HEADS:
        images, texts, groups = pairs["images"], pairs["texts"], pairs["groups"]
        scale = {side: (x.mean(dim=0), x.std(dim=0) + 1e-6) for side, x in (("image", images), ("text", texts))}
        config = DCMHConfig(bits=bits, epochs=20, weighted=True, theta_scale=1.0 / bits)
        heads = train_dcmh((images - scale["image"][0]) / scale["image"][1],
                           (texts - scale["text"][0]) / scale["text"][1], groups, config, progress=False)
        _TRAINED_HEADS[bits] = (heads, scale, time.perf_counter() - started)
    heads, scale, train_seconds = _TRAINED_HEADS[bits]

    def coder(side: str):
        def code(vectors: np.ndarray) -> np.ndarray:
            x = (torch.from_numpy(np.ascontiguousarray(vectors, np.float32)) - scale[side][0]) / scale[side][1]
            return heads.image_codes(x) if side == "image" else heads.text_codes(x)
        return code

    index = faiss.IndexBinaryFlat(bits)
    for start in range(0, len(base), 100_000):
        index.add(coder("image")(base[start:start + 100_000]))
    weights = sum(p.numel() * 4 for head in (heads.image, heads.text) for p in head.parameters())
    query_coder = coder("text" if query_modality == "caption" else "image")
    coded = Coded(f"DCMH {bits} bits", bits // 8, index, query_coder, weights, train_seconds, bits)
    coded.image_coder = coder("image")  # for the val table's image queries
    return coded


# --- measuring ----------------------------------------------------------------------------------
_BUILT: dict[str, Coded] = {}  # by name: the val table reuses what the photo collection trained


def built(coded: Coded) -> Coded:
    _BUILT[coded.name] = coded
    return coded


def measure(coded: Coded, collection: Collection, truth: np.ndarray) -> dict:
    base, queries = collection.base, collection.queries
    started = time.perf_counter()
    codes = coded.code_queries(queries)
    _, found = search_codes(coded.index, codes, K, binary_bits=coded.binary_bits)
    seconds = time.perf_counter() - started
    _, reranked = search_codes(coded.index, codes, K, binary_bits=coded.binary_bits, rerank=RERANK, vectors=base,
                               queries=queries)
    memory = coded.index.ntotal * coded.bytes_per_vector + coded.extra_bytes
    row = {"codes": coded.name, "bytes": coded.bytes_per_vector, "recall@10": round(recall_at_k(found, truth), 4),
           "recall@10_rerank100": round(recall_at_k(reranked, truth), 4), "memory_mb": round(memory / 2**20, 1),
           "batched_qps": round(len(queries) / seconds, 1), "train_s": round(coded.train_seconds, 1)}
    print(format_row(row), flush=True)
    return row


def float_row(collection: Collection, truth: np.ndarray) -> dict:
    started = time.perf_counter()
    exact_search(collection.base, collection.queries, K)
    seconds = time.perf_counter() - started
    row = {"codes": f"float32 ({collection.base.shape[1]}-d)", "bytes": 4 * collection.base.shape[1],
           "recall@10": 1.0, "recall@10_rerank100": 1.0, "memory_mb": round(collection.base.nbytes / 2**20, 1),
           "batched_qps": round(len(collection.queries) / seconds, 1), "train_s": 0.0}
    print(format_row(row), flush=True)
    return row


def format_row(row: dict) -> str:
    return (f"{row['codes']:<44}{row['bytes']:>6}{row['recall@10']:>10.3f}{row['recall@10_rerank100']:>10.3f}"
            f"{row['memory_mb']:>10.1f}{row['batched_qps']:>10.0f}{row['train_s']:>9.1f}")


def header() -> str:
    return f"{'codes':<44}{'bytes':>6}{'R@10':>10}{'+rerank':>10}{'mem MB':>10}{'QPS':>10}{'train s':>9}"


def choose_koleo(collection: Collection, budget: int, weights: list[float]) -> tuple[float, list[dict]]:
    """The KoLeo weight whose catalysed PQ has the best recall@10 on the tuning queries."""
    _, truth = exact_search(collection.base, collection.tune_queries, K)
    sweep = []
    for weight in weights:
        coded = catalysed_codes(collection.base, budget, "pq", weight, collection.train_extra)
        _, found = search_codes(coded.index, coded.code_queries(collection.tune_queries), K)
        sweep.append({"lambda": weight, "bytes": budget, "tune_recall@10": round(recall_at_k(found, truth), 4),
                      "train_s": round(coded.train_seconds, 1)})
        print(f"  lambda {weight:g}: tuning recall@10 {sweep[-1]['tune_recall@10']:.3f}", flush=True)
    return max(sweep, key=lambda s: s["tune_recall@10"])["lambda"], sweep


METHODS = ("pq", "opq", "pcasq", "lsh", "catpq", "catsq", "dcmh")


def bench_collection(collection: Collection, budgets: list[int], koleo_weights: list[float],
                     pairs: dict | None, methods: tuple[str, ...] = METHODS, on_row=None) -> dict:
    """Every method at every budget; `on_row(result so far)` after each row (the JSON is written
    as the rows come: a long run stopped early keeps what it measured)."""
    base = collection.base
    print(f"\n== {collection.label}: {len(base):,} x {base.shape[1]}, {len(collection.queries)} queries", flush=True)
    _, truth = exact_search(base, collection.queries, K)
    koleo, sweep = choose_koleo(collection, 16, koleo_weights)
    print(f"KoLeo weight chosen: {koleo:g}\n{header()}", flush=True)
    rows = [float_row(collection, truth)]
    dim = base.shape[1]
    result = {"vectors": len(base), "dim": dim, "queries": len(collection.queries), "koleo_sweep": sweep,
              "koleo_chosen": koleo, "rows": rows}
    for budget in budgets:
        makers = {"pq": lambda b=budget: factory_codes(f"PQ{b}x8", f"PQ{b}x8", base, b),
                  "opq": lambda b=budget: factory_codes(f"OPQ{b},PQ{b}x8", f"OPQ{b},PQ{b}x8", base, b),
                  "pcasq": lambda b=budget: factory_codes(f"PCA{b},SQ8", f"PCA{b},SQ8", base, b),
                  "lsh": lambda b=budget: lsh_codes(base, 8 * b),
                  "catpq": lambda b=budget: catalysed_codes(base, b, "pq", koleo, collection.train_extra),
                  "catsq": lambda b=budget: catalysed_codes(base, b, "sq", koleo, collection.train_extra),
                  "dcmh": lambda b=budget: dcmh_codes(base, 8 * b, pairs, collection.query_modality)}
        for method in methods:
            if method == "dcmh" and pairs is None:
                continue  # the hashing heads need image-caption pairs
            rows.append(measure(built(makers[method]()), collection, truth))
            if on_row:
                on_row(result)
    return result


# --- hash lookup -------------------------------------------------------------------------------
def hash_lookup(coded: Coded, collection: Collection, relevant_rows: list[set[int]], radius: int = 2) -> list[dict]:
    """DCMH's "hash lookup": every item within Hamming `radius` of each query, from an exhaustive
    scan (IndexBinaryFlat) and from a multi-index hash (IndexBinaryMultiHash: radius + 1 tables of
    disjoint bit ranges, so by the pigeonhole principle an item within the radius matches one
    table exactly); the same balls, and their precision (relevant: views of the caption's photo)."""
    codes = coded.code_queries(collection.queries)
    bits = coded.binary_bits
    flat = coded.index
    multi = faiss.IndexBinaryMultiHash(bits, radius + 1, min(bits // (radius + 1), 32))
    multi.nflip = 0
    for start in range(0, flat.ntotal, 100_000):
        multi.add(np.stack([flat.reconstruct(i) for i in range(start, min(start + 100_000, flat.ntotal))]))
    rows, balls = [], {}
    for name, index in (("IndexBinaryFlat (scan)", flat), (f"IndexBinaryMultiHash ({radius + 1} x {multi.b} bits)",
                                                           multi)):
        started = time.perf_counter()
        limits, _, found = index.range_search(codes, radius + 1)  # strictly below radius + 1
        seconds = time.perf_counter() - started
        ball = [set(found[limits[q]:limits[q + 1]].tolist()) for q in range(len(codes))]
        balls[name] = ball
        precision = [len(b & relevant_rows[q]) / len(b) if b else 0.0 for q, b in enumerate(ball)]
        rows.append({"lookup": name, "codes": coded.name, "radius": radius, "qps": round(len(codes) / seconds, 1),
                     "mean_ball": round(float(np.mean([len(b) for b in ball])), 2),
                     "empty_balls": round(float(np.mean([not b for b in ball])), 4),
                     "precision_r2": round(float(np.mean(precision)), 4)})
        print(rows[-1], flush=True)
    first, second = balls.values()
    rows[-1]["same_balls_as_scan"] = all(a == b for a, b in zip(first, second, strict=True))
    return rows


# --- the Flickr8k val table ---------------------------------------------------------------------
def val_table(photos: np.ndarray, val_images: np.ndarray, val_captions: np.ndarray, owners: np.ndarray,
              budgets: list[int], koleo: float, pairs: dict, extra: np.ndarray | None) -> list[dict]:
    """Each code as a retrieval model on Flickr8k val: MAP and R@K both ways (codes learned on
    the photo set; the val photos' centre views and captions are what is indexed and asked)."""
    rows = []
    relevant = owners[None, :] == np.arange(len(val_images))[:, None]

    def scored(name: str, budget: int, i2t: np.ndarray, t2i: np.ndarray) -> None:
        """Images x captions scores as image queries see them (`i2t`) and as caption queries do."""
        metrics = {k: v for k, v in metrics_from_similarity(i2t, owners).as_dict().items() if k.startswith("i2t")}
        metrics |= {k: v for k, v in metrics_from_similarity(t2i, owners).as_dict().items() if k.startswith("t2i")}
        metrics["rsum"] = sum(v for k, v in metrics.items() if "_r" in k and not k.endswith("medr"))
        rows.append({"codes": name, "bytes": budget, "map_i2t": round(mean_average_precision(-i2t, relevant), 4),
                     "map_t2i": round(mean_average_precision(-t2i.T, relevant.T), 4), **metrics})
        print(f"{name:<44}{budget:>6}{rows[-1]['map_i2t']:>9.3f}{rows[-1]['map_t2i']:>9.3f}{metrics['rsum']:>8.1f}",
              flush=True)

    print(f"\n== Flickr8k val as retrieval (1,000 photos, 5,000 captions)\n{'codes':<44}{'bytes':>6}{'MAP i2t':>9}"
          f"{'MAP t2i':>9}{'rsum':>8}", flush=True)
    exact = val_images @ val_captions.T
    scored(f"float32 ({val_images.shape[1]}-d)", 4 * val_images.shape[1], exact, exact)
    for budget in budgets:
        catalysed = f"catalyser {2 * budget}-d, PQ{budget}x8 (lambda {koleo:g})"
        for coded in (_BUILT.get(f"PQ{budget}x8") or factory_codes(f"PQ{budget}x8", f"PQ{budget}x8", photos, budget),
                      _BUILT.get(catalysed) or catalysed_codes(photos, budget, "pq", koleo, extra)):
            # asymmetric, as the index searches: the query as is (catalysed), the items decoded
            images, captions = (coded.code_queries(x) for x in (val_images, val_captions))
            decoded_images, decoded_captions = (decoded(coded.index, x) for x in (images, captions))
            scored(coded.name, budget, images @ decoded_captions.T, decoded_images @ captions.T)
        coded = dcmh_codes(photos[:1], 8 * budget, pairs)
        image_bits = np.unpackbits(coded.image_coder(val_images), axis=1).astype(np.float32) * 2 - 1
        text_bits = np.unpackbits(coded.code_queries(val_captions), axis=1).astype(np.float32) * 2 - 1
        hamming = image_bits @ text_bits.T / image_bits.shape[1]
        scored(coded.name, budget, hamming, hamming)
    return rows


def decoded(index: faiss.Index, vectors: np.ndarray) -> np.ndarray:
    """`vectors` as the index's codes reconstruct them."""
    return index.sa_decode(index.sa_encode(np.ascontiguousarray(vectors, np.float32)))


def photo_collection(path: Path, checkpoint: Path, queries: int, query_kind: str = "captions"
                     ) -> tuple[Collection, dict, dict]:
    """The photo embeddings, the queries (val captions' embeddings, or photo views taken out of the
    base), and the DCMH training pairs."""
    from bench.hashing_bench import tower_features
    from models import load_encoder
    from models.encoders.base import encode_in_batches

    photos = np.load(path)
    described = json.loads(path.with_suffix(".json").read_text())
    count, views = described["photos"], described["views"]
    encoder = load_encoder(checkpoint).eval()
    features = tower_features(ROOT.parent / "shared" / "data" / "flickr8k", progress=True)
    text = features["val_split"].pairs.captions
    val_captions = encode_in_batches(encoder.encode_text, text, encoder.embed_dim, 512, "val captions", True).numpy()
    # one caption per train photo (6,000 pairs, as the hashing bench's --one-caption)
    train_owners = np.asarray(features["train_owners"])
    first = np.unique(train_owners, return_index=True)[1]
    captions = [features["train_captions"][i] for i in first]
    train_captions = encode_in_batches(encoder.encode_text, captions, encoder.embed_dim, 512, "train captions", True)
    train_photos = len(features["train_images"])
    centre = torch.from_numpy(photos[:train_photos])  # view 0 (the centre crop) of the train photos
    owners = torch.as_tensor(train_owners[first])
    pairs = {"images": centre[owners], "texts": train_captions, "groups": owners}
    rng = np.random.default_rng(1)
    order = rng.permutation(len(val_captions))
    label = f"Flickr8k photo embeddings ({count:,} photos x {views} views)"
    if query_kind == "images":  # views taken out of the base: image -> image search
        held_out = np.random.default_rng(2).permutation(len(photos))
        base = np.delete(photos, held_out[:2 * queries], axis=0)
        collection = Collection(f"{label}, photo-view queries", base, photos[held_out[:queries]],
                                photos[held_out[queries:2 * queries]], train_captions.numpy(), "image")
        return collection, pairs, {}
    collection = Collection(f"{label}, caption queries", photos, val_captions[order[:queries]],
                            val_captions[order[queries:2 * queries]], train_captions.numpy(), "caption")
    owners = features["val_owners"][order[:queries]]  # each query's photo: its views are the relevant rows
    relevant = [{v * count + train_photos + int(owner) for v in range(views)} for owner in owners]
    val = {"images": photos[train_photos:count], "captions": val_captions, "owners": features["val_owners"],
           "relevant": relevant}
    return collection, pairs, val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, help="photo embeddings from bench/photo_embeddings.py")
    parser.add_argument("--checkpoint", type=Path, help="the encoder that made them (for the caption queries)")
    parser.add_argument("--synthetic", type=int, default=0, help="also the heavy-tailed synthetic set of this size")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=3000)
    parser.add_argument("--intrinsic", type=int, default=24)
    parser.add_argument("--budgets", default="8,16,32,64")
    parser.add_argument("--koleo", default="0,0.03,0.1", help="KoLeo weights swept at 16 bytes")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--methods", default=",".join(METHODS), help="which codes to measure")
    parser.add_argument("--photo-queries", choices=("captions", "images"), default="captions",
                        help="val captions (text -> image) or held-out photo views (image -> image)")
    parser.add_argument("--hash-lookup", default="", help="only the hash-lookup rows, at these DCMH code lengths")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "codes_bench.json")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    koleo_weights = [float(w) for w in args.koleo.split(",")]
    methods = tuple(m for m in args.methods.split(",") if m)
    if unknown := set(methods) - set(METHODS):
        sys.exit(f"unknown method(s) {sorted(unknown)}: choose from {', '.join(METHODS)}")
    results = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
               "faiss": faiss.__version__, "k": K, "rerank": RERANK, "collections": {}}
    if args.photos:
        if not args.checkpoint:
            sys.exit("--photos needs --checkpoint (the encoder whose caption embeddings are the queries)")
        collection, pairs, val = photo_collection(args.photos, args.checkpoint, args.queries, args.photo_queries)
        if args.hash_lookup:
            rows = [row for bits in args.hash_lookup.split(",")
                    for row in hash_lookup(dcmh_codes(collection.base, int(bits), pairs), collection, val["relevant"])]
            results["collections"][collection.label] = {"hash_lookup": rows}
            save(args.out, results)
            return
        def partial(result: dict) -> None:
            results["collections"][collection.label] = result
            save(args.out, results)

        result = bench_collection(collection, budgets, koleo_weights, pairs, methods, partial)
        if val:
            result["flickr8k_val"] = val_table(collection.base, val["images"], val["captions"], val["owners"],
                                               budgets, result["koleo_chosen"], pairs, collection.train_extra)
        results["collections"][collection.label] = result
        save(args.out, results)
    if args.synthetic:
        n, q = args.synthetic, args.queries
        data = heavy_tailed_vectors(n + 2 * q, args.dim, args.clusters, args.intrinsic, seed=n)
        label = (f"synthetic heavy-tailed {n:,} x {args.dim} ({args.clusters} overlapping clusters, Zipf sizes, "
                 f"Student-t)")
        collection = Collection(label, data[:n], data[n:n + q], data[n + q:])
        def partial_synthetic(result: dict) -> None:
            results["collections"][label] = result
            save(args.out, results)

        results["collections"][label] = bench_collection(collection, budgets, koleo_weights, None, methods,
                                                         partial_synthetic)
        save(args.out, results)


def save(path: Path, results: dict) -> None:
    """Write this run's collections into the file, keeping what other runs wrote there (one file
    for every collection; a collection's keys merge)."""
    merged = json.loads(path.read_text()).get("collections", {}) if path.exists() else {}
    for label, result in results["collections"].items():
        merged[label] = {**merged.get(label, {}), **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**results, "collections": merged}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
