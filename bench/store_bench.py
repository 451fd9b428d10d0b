"""Vector store benchmark: the faiss file store against Milvus (milvus-lite, or a server given by
--milvus), each through imgsearch's own `VectorStore` (stage -> switch -> open -> search), on the
index bench's structured vectors, same run, same queries. Prints a table and writes JSON.

    python bench/store_bench.py --sizes 100000,1000000            # both stores, 512-d
    python bench/store_bench.py --sizes 20000 --dim 64            # a smoke run
    python bench/store_bench.py --milvus http://localhost:19530   # a Milvus standalone server

Each store sizes its index by the same rule (index_choice: exact below 8M floats, else IVF-PQ, or
IVF_SQ8 on milvus-lite, which has no IVF-PQ) and tunes nprobe to the recall target on vectors of
the collection; recall@10 is then measured on held-out queries against exact NumPy search.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.index_bench import add_vector_options, structured_vectors  # noqa: E402
from indexer.recall_tuning import exact_search, recall_at_k  # noqa: E402
from indexer.vector_store import IndexSettings, VectorStore, open_vector_store  # noqa: E402

K = 10


def bench_store(label: str, store: VectorStore, base: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                target: float) -> dict:
    n, dim = base.shape
    ids = np.arange(1, n + 1, dtype=np.int64)
    few = np.arange(1, 11, dtype=np.int64)  # a version needs captions too: ten, so images dominate
    arrays = {"image_ids": ids, "image_vectors": base, "caption_ids": few, "caption_image_ids": few,
              "caption_vectors": base[:10]}
    manifest = {"name": "bench", "version": 1, "embed_dim": dim, "checkpoint_hash": "bench"}
    started = time.perf_counter()
    manifest = store.stage("bench", 1, arrays, manifest, IndexSettings(recall_target=target))
    stage_s = time.perf_counter() - started
    store.switch("bench", 1)
    started = time.perf_counter()
    served = store.open(store.current("bench"))
    open_s = time.perf_counter() - started
    found = np.concatenate([served.search("image", queries[i:i + 100], K)[1] for i in range(0, len(queries), 100)])
    times = []
    for query in queries:
        started = time.perf_counter()
        served.search("image", query[None, :], K)
        times.append(1000 * (time.perf_counter() - started))
    started = time.perf_counter()
    served.search("image", queries, K)
    batch_s = time.perf_counter() - started
    described = manifest["image_index"]
    row = {"store": label, "n": n, "dim": dim, "index": described["factory"],
           "param": f"{described['search_param']}={described['search_value']}" if described["search_param"] else "",
           "tuned_recall": round(described["recall"], 4), "stage_s": round(stage_s, 1), "open_s": round(open_s, 2),
           "recall@10": round(recall_at_k(found, ids[truth]), 4),
           "single_query_ms_p50": round(statistics.median(times), 3),
           "single_query_ms_p95": round(float(np.percentile(times, 95)), 3),
           "batched_qps": round(len(queries) / batch_s, 1)}
    print(format_row(row), flush=True)
    return row


def format_row(row: dict) -> str:
    return (f"{row['store']:<13}{row['n']:>10,}  {row['index']:<26}{row['param']:<13}{row['stage_s']:>9.1f}"
            f"{row['recall@10']:>10.3f}{row['single_query_ms_p50']:>9.2f}{row['single_query_ms_p95']:>9.2f}"
            f"{row['batched_qps']:>10.0f}")


def header() -> str:
    return (f"{'store':<13}{'vectors':>10}  {'index':<26}{'param':<13}{'stage s':>9}{'recall@10':>10}"
            f"{'p50 ms':>9}{'p95 ms':>9}{'batch QPS':>10}")


def remove_from_server(store) -> None:
    """A Milvus server outlives the run: take the bench's aliases and collections away again."""
    from indexer.milvus_store import MANIFESTS, alias, version_collection

    for modality in ("caption", "image"):
        store.client.drop_alias(alias("bench", modality))
        store.client.drop_collection(version_collection("bench", 1, modality))
    store.client.delete(MANIFESTS, ids=["bench/1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_vector_options(parser, queries=500)
    parser.add_argument("--stores", default="faiss,milvus-lite")
    parser.add_argument("--milvus", help="a Milvus server URL (http://HOST:19530) used instead of milvus-lite")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "store_bench.json")
    args = parser.parse_args()
    import pymilvus

    results: dict = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                     "pymilvus": pymilvus.__version__, "k": K, "target": args.target, "rows": []}
    print(header())
    for n in [int(s) for s in args.sizes.split(",") if s]:
        data = structured_vectors(n + args.queries, args.dim, args.clusters, args.intrinsic, seed=n)
        base, queries = data[:n], data[n:]
        _, truth = exact_search(base, queries, K)
        for kind in args.stores.split(","):
            with tempfile.TemporaryDirectory(prefix="store-bench-") as workdir:
                url = None if kind == "faiss" else (args.milvus or f"milvus-lite:{workdir}/vectors.db")
                store = open_vector_store(url, Path(workdir))
                label = kind if not args.milvus or kind == "faiss" else "milvus"
                results["rows"].append(bench_store(label, store, base, queries, truth, args.target))
                if args.milvus and kind != "faiss":
                    remove_from_server(store)
                del store
        del data, base
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
