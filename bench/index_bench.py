"""ANN index benchmark: Flat, HNSW and IVF-PQ (with and without exact re-ranking) against exact
NumPy search, on structured synthetic vectors and on real Flickr8k embeddings, plus end-to-end
indexing throughput. Prints tables and writes JSON.

    python bench/index_bench.py --sizes 100000,1000000           # synthetic, 512-d
    python bench/index_bench.py --sizes 20000 --quick            # a smoke run
    python bench/index_bench.py --sizes 100000 --flickr8k runs/flickr8k_vse_minilm/model_best.pt
    python bench/index_bench.py --sizes 100000 --hard --photos .cache/imgsearch/photo_embeddings.npy

Uniformly random vectors have no neighbours worth finding, so the synthetic set is a mixture of
anisotropic Gaussian clusters of low intrinsic dimension. The search parameter (efSearch/nprobe)
is the smallest power of two whose recall@10 against exact search reaches the target, tuned on
a separate set of queries from the ones measured (as autofaiss does). `--hard` uses the codes
bench's harder set instead (overlapping heavy-tailed clusters of Zipf sizes, whose count has
nothing to do with nlist); `--photos` adds real photo embeddings (`bench/photo_embeddings.py`:
views of every Flickr8k photo) with held-out views as queries.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from indexer import faiss_index as fi  # noqa: E402

K = 10


def structured_vectors(n: int, dim: int, clusters: int, intrinsic: int, seed: int) -> np.ndarray:
    """Unit vectors from `clusters` anisotropic Gaussians, each spread along `intrinsic` directions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    bases = rng.normal(size=(clusters, intrinsic, dim)).astype(np.float32) / np.sqrt(intrinsic)
    scales = np.sort(rng.uniform(0.2, 1.0, size=(clusters, intrinsic)).astype(np.float32), axis=1)[:, ::-1]
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        labels = rng.integers(0, clusters, m)
        coefficients = rng.normal(size=(m, intrinsic)).astype(np.float32) * scales[labels]
        chunk = centres[labels] + np.einsum("nk,nkd->nd", coefficients, bases[labels])
        chunk += rng.normal(scale=0.05, size=chunk.shape).astype(np.float32)
        out[start:start + m] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def latency_ms(search, queries: np.ndarray, repeats: int = 200) -> float:
    """Median wall time of one single-vector query."""
    times = []
    for query in queries[:repeats]:
        started = time.perf_counter()
        search(query[None, :])
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def measure(name: str, search, queries: np.ndarray, truth: np.ndarray, build_s: float, memory: int,
            param: str = "", single_repeats: int = 200) -> dict:
    (_, found), batch_s = timed(search, queries)
    return {"index": name, "param": param, "build_s": round(build_s, 2), "memory_mb": round(memory / 2**20, 1),
            "recall@10": round(fi.recall_at_k(found, truth), 4), "single_query_ms": round(
                latency_ms(search, queries, single_repeats), 3), "batched_qps": round(len(queries) / batch_s, 1)}


def index_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def bench_collection(label: str, base: np.ndarray, queries: np.ndarray, tune_queries: np.ndarray,
                     target: float, kinds: list[str]) -> list[dict]:
    n, dim = base.shape
    print(f"\n== {label}: {n:,} x {dim}, {len(queries)} queries, recall@{K} target {target}", flush=True)
    (_, truth), _ = timed(fi.exact_search, base, queries, K)
    rows = [measure("numpy exact", lambda q: fi.exact_search(base, q, K), queries, truth, 0.0, base.nbytes,
                    single_repeats=50)]
    print(format_row(rows[0]), flush=True)
    for kind in kinds:
        variants = [(kind, False)] if kind != "ivfpq" else [("ivfpq", False), ("ivfpq", True)]
        for kind_, refine in variants:
            choice = fi.choose_index(n, dim, kind=kind_)
            choice.refine = refine
            index, build_s = timed(fi.build_index, base, choice)
            value, tuned_recall = fi.tune_search_param(index, base, target, K, queries=tune_queries)
            name = choice.factory + (",RFlat(k_factor 10)" if refine else "")
            param = f"{fi.search_param_name(index)}={value}" if value else ""
            rows.append(measure(name, lambda q, ix=index: ix.search(q, K), queries, truth, build_s,
                                index_bytes(index), param))
            rows[-1]["tuned_recall"] = round(tuned_recall, 4)
            print(format_row(rows[-1]), flush=True)
            del index
    for row in rows:
        row["speedup_vs_exact_single"] = round(rows[0]["single_query_ms"] / row["single_query_ms"], 1)
    return rows


def format_row(row: dict) -> str:
    return (f"{row['index']:<34}{row['param']:<14}{row['build_s']:>9.1f}{row['memory_mb']:>10.0f}"
            f"{row['recall@10']:>10.3f}{row['single_query_ms']:>11.2f}{row['batched_qps']:>11.0f}")


def print_table(label: str, rows: list[dict]) -> None:
    print(f"\n{label}")
    print(f"{'index':<34}{'param':<14}{'build s':>9}{'mem MB':>10}{'recall@10':>10}{'1 query ms':>11}"
          f"{'batch QPS':>11}{'x exact':>9}")
    for row in rows:
        print(format_row(row) + f"{row['speedup_vs_exact_single']:>9.1f}")


def flickr8k_embeddings(checkpoint: Path) -> dict[str, np.ndarray]:
    from models import load_encoder
    from models.data import decode_split, load_records
    from models.evaluation import encode_pairs

    encoder = load_encoder(checkpoint)
    records = load_records(ROOT.parent / "shared" / "data" / "flickr8k")
    images, captions = [], []
    for split in ("train", "val"):
        decoded = decode_split(records, split, encoder.image_size, ROOT / ".cache" / "imgsearch")
        image_emb, text_emb = encode_pairs(encoder, decoded.pixels, decoded.pairs.captions, progress=True)
        images.append(image_emb.numpy())
        captions.append(text_emb.numpy())
    return {"images": np.concatenate(images), "captions": np.concatenate(captions)}


def indexing_throughput(checkpoint: Path, workdir: Path) -> dict:
    """imgsearch's own build on the Flickr8k gallery: decode + encode + add, images/s."""
    from indexer.build import BuildOptions, build_index
    from indexer.db import session_factory

    sessions = session_factory(f"sqlite:///{workdir / 'catalogue.db'}")
    report = build_index(gallery=str(ROOT.parent / "shared" / "data" / "flickr8k"), encoder_spec=str(checkpoint),
                         name="flickr8k", index_dir=workdir / "indexes", sessions=sessions, full=True,
                         options=BuildOptions(workers=2, batch_size=128))
    print(report.summary())
    return {"images": report.image_count, "captions": report.caption_count, "encoded": report.encoded_images,
            "encode_images_per_second": round(report.images_per_second, 1),
            "end_to_end_images_per_second": round(report.image_count / report.seconds, 1),
            "total_seconds": round(report.seconds, 1), "skipped": len(report.skipped)}


def add_vector_options(parser: argparse.ArgumentParser, queries: int) -> None:
    """The synthetic collections' options, shared with the store bench."""
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=4000)
    parser.add_argument("--intrinsic", type=int, default=12)
    parser.add_argument("--queries", type=int, default=queries)
    parser.add_argument("--target", type=float, default=0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_vector_options(parser, queries=1000)
    parser.add_argument("--kinds", default="flat,hnsw,ivfpq")
    parser.add_argument("--flickr8k", type=Path, help="a trained checkpoint: also bench its Flickr8k embeddings")
    parser.add_argument("--hard", action="store_true", help="the harder synthetic set (see bench/codes_bench.py)")
    parser.add_argument("--photos", type=Path, help="photo embeddings from bench/photo_embeddings.py")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "index_bench.json")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    results: dict = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                     "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(), "k": K,
                     "target": args.target, "collections": {}}
    for n in [int(s) for s in args.sizes.split(",") if s]:
        if args.hard:
            from bench.codes_bench import heavy_tailed_vectors

            data = heavy_tailed_vectors(n + 2 * args.queries, args.dim, 3000, 24, seed=n)
            label = f"synthetic heavy-tailed {n:,} x {args.dim} (3000 overlapping clusters, Zipf sizes, Student-t)"
        else:
            data = structured_vectors(n + 2 * args.queries, args.dim, args.clusters, args.intrinsic, seed=n)
            label = f"synthetic {n:,} x {args.dim} ({args.clusters} clusters, intrinsic dim {args.intrinsic})"
        base, queries, tune = data[:n], data[n:n + args.queries], data[n + args.queries:]
        rows = bench_collection(label, base, queries, tune, args.target, kinds)
        print_table(label, rows)
        results["collections"][label] = rows
        del data, base
    if args.photos:
        photos = np.load(args.photos)
        held_out = np.random.default_rng(2).permutation(len(photos))[:2 * args.queries]
        base = np.delete(photos, held_out, axis=0)
        label = f"Flickr8k photo embeddings ({len(photos):,} views of 7,000 photos), held-out views as queries"
        rows = bench_collection(label, base, photos[held_out[:args.queries]], photos[held_out[args.queries:]],
                                args.target, kinds)
        print_table(label, rows)
        results["collections"][label] = rows
    if args.flickr8k:
        embeddings = flickr8k_embeddings(args.flickr8k)
        for modality, vectors in embeddings.items():
            rng = np.random.default_rng(0)
            order = rng.permutation(len(vectors))
            n_queries = min(args.queries, len(vectors) // 10)
            queries, tune = vectors[order[:n_queries]], vectors[order[n_queries:2 * n_queries]]
            base = vectors[order[2 * n_queries:]]
            label = f"Flickr8k {modality} embeddings ({args.flickr8k.parent.name})"
            rows = bench_collection(label, base, queries, tune, args.target, kinds)
            print_table(label, rows)
            results["collections"][label] = rows
        workdir = ROOT / "runs" / "index_bench_flickr8k"
        workdir.mkdir(parents=True, exist_ok=True)
        results["indexing_throughput_flickr8k"] = indexing_throughput(args.flickr8k, workdir)
        print("\nend-to-end indexing on Flickr8k:", results["indexing_throughput_flickr8k"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
