"""faiss indexes over L2-normalised vectors with inner product: build, tuning, search, I/O. Which
index a set of vectors gets is decided in `index_choice` (shared with the other stores)."""
from __future__ import annotations

import faiss
import numpy as np

from indexer.index_choice import (  # noqa: F401 (re-exported: the faiss store's whole vocabulary in one place)
    FLAT_MAX_FLOATS,
    IndexChoice,
    choose_index,
    estimated_bytes,
    parse_memory,
)
from indexer.recall_tuning import exact_search, query_sample, recall_at_k, tune_parameter


def build_index(vectors: np.ndarray, choice: IndexChoice, gpu: bool = False, train_sample: int = 200_000,
                seed: int = 0) -> faiss.Index:
    """Build the chosen index on float32 L2-normalised `vectors` (inner product)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    index = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    if choice.kind == "hnsw":
        index.hnsw.efConstruction = choice.params.get("efConstruction", 40)
    if choice.refine:
        index = faiss.IndexRefineFlat(index)
        index.k_factor = choice.params.get("k_factor", 10)
    if gpu:
        index = to_gpu(index)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = vectors if n <= train_sample else vectors[rng.choice(n, train_sample, replace=False)]
        index.train(sample)
    if n:
        index.add(vectors)
    set_search_param(index, choice)
    return index


def _unrefined(index: faiss.Index) -> faiss.Index:
    """The candidate-generating index inside an exact re-ranking wrapper (or the index itself)."""
    return faiss.downcast_index(index.base_index) if isinstance(index, faiss.IndexRefine) else index


def search_param_name(index: faiss.Index) -> str | None:
    base = _unrefined(index)
    if isinstance(base, faiss.IndexHNSW):
        return "efSearch"
    if not _is_cpu(base):  # GpuIndexIVFPQ, GpuIndexIVFFlat... are not IndexIVF subclasses
        return "nprobe" if "IVF" in type(base).__name__ else None
    return "nprobe" if isinstance(faiss.try_extract_index_ivf(base), faiss.IndexIVF) else None


def _is_cpu(index: faiss.Index) -> bool:
    return not type(index).__name__.startswith("Gpu")


def set_search_param(index: faiss.Index, choice_or_value: IndexChoice | int) -> None:
    """Apply efSearch or nprobe (from a choice's params, or a value) to an index."""
    name = search_param_name(index)
    if name is None:
        return
    value = (choice_or_value if isinstance(choice_or_value, int)
             else choice_or_value.params.get(name))
    if value is None:
        return
    faiss.ParameterSpace().set_index_parameter(index, name, int(value))


def tune_search_param(index: faiss.Index, vectors: np.ndarray, recall_target: float = 0.95, k: int = 10,
                      queries: int | np.ndarray = 500, seed: int = 0) -> tuple[int | None, float]:
    """The smallest efSearch/nprobe whose recall@k against exact search reaches `recall_target`
    (see `recall_tuning.tune_parameter`), applied to the index; returns (value, recall). Exact
    indexes return (None, 1.0). `queries`: a query set, or a count of indexed vectors to sample."""
    name = search_param_name(index)
    if name is None or len(vectors) == 0:
        return None, 1.0
    sample = query_sample(vectors, queries, seed)
    _, truth = exact_search(vectors, sample, k)

    def recall_with(value: int) -> float:
        set_search_param(index, value)
        return recall_at_k(index.search(sample, k)[1], truth)

    limit = 4096 if name == "efSearch" else max(1, _nlist(index))
    value, recall = tune_parameter(recall_with, limit, recall_target)
    set_search_param(index, value)
    return value, recall


def _nlist(index: faiss.Index) -> int:
    base = _unrefined(index)
    return int(base.nlist) if not _is_cpu(base) else int(faiss.extract_index_ivf(base).nlist)


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def to_gpu(index: faiss.Index) -> faiss.Index:
    """Move an index to all GPUs when faiss-gpu and a GPU are present (HNSW stays on the CPU)."""
    if not gpu_available() or isinstance(index, faiss.IndexHNSW | faiss.IndexRefine):
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = "PQ" in type(index).__name__  # GPU IVF-PQ needs float16 look-up tables past 48 bytes a code
    return faiss.index_cpu_to_all_gpus(index, co=options)


def to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if gpu_available() and not _is_cpu(index) else index


def write_index(index: faiss.Index, path: str) -> None:
    faiss.write_index(to_cpu(index), path)


def read_index(path: str, gpu: bool = False, mmap: bool = False) -> faiss.Index:
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    index = faiss.read_index(path, flags)
    return to_gpu(index) if gpu else index


# --- compact codes (indexer.codes): what a version holds instead of float vectors ---------------
PQ_MIN_TRAIN = 256  # 8-bit sub-quantisers need at least this many training vectors
def build_code_index(codes: np.ndarray, kind: str, seed: int = 0) -> tuple[faiss.Index | faiss.IndexBinary, str]:
    """An exhaustive index over codes, and its description: packed bits (uint8, N x bits/8) in an
    `IndexBinaryFlat` (Hamming), or catalysed vectors (float32) in a product quantiser of one byte
    per two dimensions; fewer than PQ_MIN_TRAIN catalysed vectors, too few to train its 256
    centroids a sub-quantiser, stay float in a flat index (a tiny gallery saves nothing anyway)."""
    if kind == "binary":
        index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        index.add(np.ascontiguousarray(codes, dtype=np.uint8))
        return index, f"BFlat{index.d}"
    vectors = np.ascontiguousarray(codes, dtype=np.float32)
    n, dim = vectors.shape
    if n < PQ_MIN_TRAIN:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index, f"Flat{dim}"
    factory = f"PQ{dim // 2}x8"
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    index.pq.cp.seed = seed
    index.train(vectors)
    index.add(vectors)
    return index, factory


def search_codes(index: faiss.Index | faiss.IndexBinary, query_codes: np.ndarray, k: int, *, binary_bits: int = 0,
                 rerank: int = 0, vectors: np.ndarray | None = None, queries: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the k nearest by code, best first, -1 rows padding. Hamming distances d
    become 1 - 2 d / bits, the cosine of the two +-1 codes. With `rerank` and the float `vectors`
    (and the float `queries`), the max(k, rerank) nearest by code are ordered by their exact
    inner product."""
    k = min(k, index.ntotal)
    wanted = min(max(k, rerank), index.ntotal) if vectors is not None and rerank else k
    distances, rows = index.search(query_codes, wanted)
    scores = 1.0 - 2.0 * distances.astype(np.float32) / binary_bits if binary_bits else distances
    if wanted == k and not (vectors is not None and rerank):
        return scores.astype(np.float32), rows.astype(np.int64)
    gathered = np.asarray(vectors[np.clip(rows, 0, None).ravel()], np.float32).reshape(*rows.shape, -1)
    exact = np.einsum("qcd,qd->qc", gathered, queries).astype(np.float32)
    exact[rows < 0] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(exact, order, axis=1)
    found = np.take_along_axis(rows, order, axis=1).astype(np.int64)
    found[~np.isfinite(best)] = -1
    return np.where(np.isfinite(best), best, 0.0).astype(np.float32), found


def code_bytes(index: faiss.Index | faiss.IndexBinary) -> int:
    """Bytes a vector takes in a code index."""
    return int(index.code_size) if isinstance(index, faiss.IndexBinary) else int(index.sa_code_size())


def write_code_index(index: faiss.Index | faiss.IndexBinary, path: str) -> None:
    if isinstance(index, faiss.IndexBinary):
        faiss.write_index_binary(index, path)
    else:
        faiss.write_index(index, path)


def read_code_index(path: str, binary: bool) -> faiss.Index | faiss.IndexBinary:
    return faiss.read_index_binary(path) if binary else faiss.read_index(path)
